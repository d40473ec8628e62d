"""Logical axis names -> mesh axes: the one table that decides DP / FSDP / TP.

Every parameter names its axes in logical terms ('embed', 'heads', 'mlp', 'vocab', ...; see
gptjax/model/) and activations are constrained with the same names. This table maps each name to
zero, one or several mesh axes. A mesh axis of size 1 shards nothing, so the same table gives
data parallelism (data=N), FSDP (fsdp=N), tensor parallelism (tensor=N) and their products: the
strategy is the mesh's shape, a config change.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Sequence

import jax
from jax.sharding import AxisType, PartitionSpec

from gptjax.config import ConfigError

MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]

DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),  # activations: batch split over every data-parallel axis
    ("seq", None),
    ("embed", "fsdp"),  # params: FSDP shards the model dimension of every matrix
    ("heads", "tensor"),  # Megatron TP: q/k/v column-split by head, out row-split by head
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),  # Megatron TP: fc column-split, proj row-split
    ("vocab", "tensor"),  # embedding / LM head split over the vocabulary
    ("norm", None),  # LayerNorm scale/bias: small, replicated
    ("lora_rank", None),  # LoRA adapters' rank axis: a few columns, never split
)


def _axes(value: MeshAxes) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def mesh_axes(name: str | None, rules: Rules = DEFAULT_RULES) -> tuple[str, ...]:
    """The mesh axes logical axis `name` maps to (empty: replicated)."""
    if name is None:
        return ()
    table = dict(rules)
    if name not in table:
        raise ConfigError(f"logical axis {name!r} has no sharding rule; known: {sorted(table)}. "
                          "Add (name, mesh_axes) to the rules table in gptjax/parallel/rules.py")
    return _axes(table[name])


def logical_to_mesh(spec: Sequence[str | None] | PartitionSpec | None, rules: Rules = DEFAULT_RULES,
                    mesh=None, shape: Sequence[int] | None = None) -> PartitionSpec:
    """Logical names (e.g. ('embed', 'heads')) -> a mesh PartitionSpec (e.g. P('fsdp', 'tensor')).

    A mesh axis already used by an earlier dimension is dropped (an array can be split over an
    axis once): ('batch', 'seq', 'embed') -> P(('data', 'fsdp'), None, None). With `mesh`, axes
    it lacks or of size 1 are dropped too; with `shape`, so are axes whose size does not divide
    the dimension (for activation hints, which must never fail).
    """
    if spec is None:
        return PartitionSpec()
    used: set[str] = set()
    out = []
    for i, name in enumerate(tuple(spec)):
        axes = []
        for axis in mesh_axes(name, rules):
            if axis in used:
                continue
            if mesh is not None and mesh.shape.get(axis, 1) == 1:
                continue
            if shape is not None and mesh is not None:
                split = mesh.shape[axis]
                for a in axes:
                    split *= mesh.shape[a]
                if shape[i] % split:
                    continue
            axes.append(axis)
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    return PartitionSpec(*out)


# The rules in force while tracing the model; set by `activate`, read by with_logical_constraint.
_ACTIVE_RULES: contextvars.ContextVar[Rules | None] = contextvars.ContextVar(
    "gptjax_sharding_rules", default=None)


@contextlib.contextmanager
def activate(mesh, rules: Rules = DEFAULT_RULES) -> Iterator[None]:
    """Within this block the model's activation constraints apply over `mesh` with `rules`."""
    token = _ACTIVE_RULES.set(tuple(rules))
    try:
        with jax.set_mesh(mesh):
            yield
    finally:
        _ACTIVE_RULES.reset(token)


def active_rules() -> Rules | None:
    return _ACTIVE_RULES.get()


def with_logical_constraint(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Constrain activation `x` to the sharding its logical axis `names` map to.

    A no-op unless `activate(mesh, rules)` is in force (single device, pmap, plain calls), so
    the model's math never depends on it; it only tells XLA where to keep activations.
    """
    rules = _ACTIVE_RULES.get()
    if rules is None:
        return x
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or any(t == AxisType.Manual for t in mesh.axis_types):
        return x  # inside shard_map / pmap: per-device code, nothing to constrain
    spec = logical_to_mesh(names, rules, mesh=mesh, shape=x.shape)
    return jax.lax.with_sharding_constraint(x, spec)
