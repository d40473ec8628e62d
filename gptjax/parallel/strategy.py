"""One object that lays a run out over devices: `plan = make_plan(config)`.

The loop asks the plan, never the strategy, so `mesh.strategy` and the mesh's shape are a config
change only:

    plan = make_plan(config)                      # mesh + checks, before anything compiles
    state = plan.init(init_state, model_cfg, tx, seed)   # born sharded / replicated
    step_fn = train_step_fn(config, graphdef, tx, schedule, axis_name=plan.axis_name)
    train_step = plan.compile_train(step_fn, state)
    state, metrics = train_step(state, plan.put_batch(host_batch))

- strategy='jit': jax.jit with NamedSharding in/out shardings over the ('data','fsdp','tensor')
  mesh; parameters and optimizer state are sharded as the rules table says, activations are
  constrained inside the model (gptjax.parallel.rules.with_logical_constraint).
- strategy='pmap': jax.pmap over every device with the state replicated and the batch split;
  the same pure step body runs per device and gradients are `lax.pmean`'d.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gptjax.config import ConfigError
from gptjax.parallel import pmap
from gptjax.parallel import sharding as sh
from gptjax.parallel.mesh import describe, make_mesh
from gptjax.parallel.pmap import AXIS as PMAP_AXIS, pmap_step, split_batch
from gptjax.parallel.rules import DEFAULT_RULES, Rules, activate


@dataclasses.dataclass
class Plan:
    """How state and batches are laid out for one run (see the module docstring)."""

    strategy: str  # 'jit' | 'pmap'
    mesh: Mesh  # pmap: data=N, fsdp=1, tensor=1 over the same devices
    rules: Rules = DEFAULT_RULES
    logical: dict = dataclasses.field(default_factory=dict)  # {param path: logical names}

    def __str__(self) -> str:
        return f"{self.strategy}: {describe(self.mesh)}"

    @property
    def axis_name(self) -> str | None:
        """The pmap axis a step averages gradients over (train_step_fn's axis_name); jit: None."""
        return PMAP_AXIS if self.strategy == "pmap" else None

    @property
    def batch_shards(self) -> int:
        """How many pieces a batch is split into (pmap: devices; jit: the batch axes' product)."""
        if self.strategy == "pmap":
            return self.mesh.devices.size
        return sh.batch_shard_count(self.mesh, self.rules)

    # --- state -------------------------------------------------------------------------------
    def shardings(self, tree):
        """NamedShardings for a pytree of (abstract) arrays: the state, params, a restore target."""
        if self.strategy == "pmap":
            return jax.tree.map(lambda _: sh.replicated(self.mesh), tree)
        return sh.tree_shardings(tree, self.mesh, self.rules, self.logical)

    def init(self, init_fn: Callable[..., Any], *args):
        """init_fn(*args) run under jit with out_shardings: each array is born on its devices.

        The args are closed over (static: configs, optimizers, seeds), not traced.
        """
        init_fn = functools.partial(init_fn, *args)
        abstract = jax.eval_shape(init_fn)
        self.logical.update(sh.logical_axes(abstract))
        shardings = self.shardings(abstract)
        sh.check_divisible(abstract, shardings)
        return jax.jit(init_fn, out_shardings=shardings)()

    def abstract(self, tree):
        """Abstract arrays with this plan's shardings, e.g. orbax's target to restore (reshard)
        a checkpoint saved under any other mesh into this one."""
        tree = jax.eval_shape(lambda t: t, tree)
        return sh.abstract_like(tree, self.shardings(tree))

    # --- steps -------------------------------------------------------------------------------
    def compile_train(self, step_fn, state, *, donate: bool = True):
        """step_fn(state, batch) -> (state, metrics), compiled for this layout."""
        if self.strategy == "pmap":
            return pmap_step(step_fn, donate=donate, devices=self._pmap_devices())
        state_sh = self.shardings(jax.eval_shape(lambda s: s, state))
        fn = jax.jit(step_fn, in_shardings=(state_sh, self.batch_sharding()),
                     out_shardings=(state_sh, sh.replicated(self.mesh)),
                     donate_argnums=(0,) if donate else ())
        return self._in_mesh(fn)

    def compile_eval(self, eval_fn, params):
        """eval_fn(params, batch) -> metrics, compiled for this layout."""
        if self.strategy == "pmap":
            return pmap_step(eval_fn, returns_state=False, devices=self._pmap_devices())
        params_sh = self.shardings(jax.eval_shape(lambda p: p, params))
        fn = jax.jit(eval_fn, in_shardings=(params_sh, self.batch_sharding()),
                     out_shardings=sh.replicated(self.mesh))
        return self._in_mesh(fn)

    def jit(self, fn, **kwargs):
        """jax.jit(fn, **kwargs) traced with this plan's mesh and rules in force (so activation
        constraints apply): for generation, scoring or anything else sharded."""
        return self._in_mesh(jax.jit(fn, **kwargs))

    def _pmap_devices(self):
        devices = list(self.mesh.devices.flat)
        return None if len(devices) == jax.device_count() else devices

    def _in_mesh(self, fn):
        def run(*args, **kwargs):
            with activate(self.mesh, self.rules):
                return fn(*args, **kwargs)

        run.lower = lambda *a, **k: _lower_in(self, fn, *a, **k)
        return run

    # --- data --------------------------------------------------------------------------------
    def batch_sharding(self) -> NamedSharding:
        return sh.batch_sharding(self.mesh, self.rules)

    def put_batch(self, batch):
        """This process's rows of the global batch (numpy, [local_batch, ...]) -> device arrays.

        jit: global jax.Arrays split over the batch axes (multi-host: every process passes its
        own rows, in process order). pmap: [local_devices, local_batch / local_devices, ...].
        """
        if self.strategy == "pmap":
            local = sum(d.process_index == jax.process_index() for d in self.mesh.devices.flat)
            return split_batch(batch, local)
        return _put_local(jax.tree.map(np.asarray, batch), self.batch_sharding())

    def stacked_batch_sharding(self) -> NamedSharding:
        """[steps, batch, seq] arrays, a batch per step of a call: put_batches' layout."""
        return NamedSharding(self.mesh, PartitionSpec(None, *self.batch_sharding().spec))

    def put_batches(self, batches: list):
        """Consecutive batches (numpy, this process's rows each) stacked [steps, ...] on the
        devices, for one call of several train steps (train.steps_per_call; jit only)."""
        stacked = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *batches)
        return _put_local(stacked, self.stacked_batch_sharding())

    def check_batch(self, global_batch_size: int, what: str = "data.batch_size") -> None:
        if self.strategy == "pmap":
            pmap.check_batch(global_batch_size, self.mesh.devices.size, what)
        else:
            sh.check_batch(global_batch_size, self.mesh, self.rules, what)


def _put_local(tree, sharding: NamedSharding):
    """This process's rows (numpy arrays) -> global jax.Arrays laid out by `sharding`."""
    if jax.process_count() == 1:  # the local rows are the global batch: one transfer call
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), tree)


def _lower_in(plan, fn, *args, **kwargs):
    with activate(plan.mesh, plan.rules):
        return fn.lower(*args, **kwargs)


def make_plan(config, devices=None, rules: Rules = DEFAULT_RULES, *,
              check_batch: bool = True) -> Plan:
    """The plan config.mesh asks for, with every check that can fail done now, before compiling:
    mesh vs device count, model dims vs tensor/fsdp axes, batch vs batch axes (unless the
    caller checks the batch itself, from plan.batch_shards)."""
    mesh_cfg = config.mesh
    if mesh_cfg.strategy == "pmap":
        if (mesh_cfg.fsdp, mesh_cfg.tensor) != (1, 1):
            raise ConfigError(
                f"mesh.strategy='pmap' is data parallel only, but mesh.fsdp={mesh_cfg.fsdp} and "
                f"mesh.tensor={mesh_cfg.tensor}; use mesh.strategy='jit' for FSDP/tensor "
                "parallelism, or set both to 1")
    mesh = make_mesh(mesh_cfg, devices)  # pmap: mesh.data devices (-1: all)
    plan = Plan(config.mesh.strategy, mesh, rules)
    if plan.strategy == "jit":
        sh.check_model(config.model, mesh, rules)
    b, k = config.data.batch_size, config.optim.grad_accum
    if check_batch and b % k == 0:  # else the training loop names the grad_accum mismatch
        plan.check_batch(b // k, "data.batch_size" if k == 1 else
                         f"data.batch_size / optim.grad_accum = {b}/{k}")
    return plan
