"""Train a few steps under any plan, without data files or checkpoints: the common core of the
equivalence tests (every strategy vs one device), the multi-process test and
experiments/bench_scaling.py."""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from gptjax.parallel.sharding import device_bytes
from gptjax.parallel.strategy import Plan, make_plan


def synthetic_batches(config, num: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """`num` global batches {'inputs', 'targets': int32 [batch, seq]} of random tokens."""
    rng = np.random.default_rng(seed)
    b, t, v = config.data.batch_size, config.data.seq_len, config.model.vocab_size
    out = []
    for _ in range(num):
        tokens = rng.integers(0, v, (b, t + 1), dtype=np.int32)
        out.append({"inputs": tokens[:, :-1], "targets": tokens[:, 1:]})
    return out


def process_rows(batch, process_index: int | None = None, process_count: int | None = None):
    """This process's contiguous block of a global batch's rows (what gptjax.data yields)."""
    i = jax.process_index() if process_index is None else process_index
    n = jax.process_count() if process_count is None else process_count
    return jax.tree.map(lambda x: x[i * (x.shape[0] // n):(i + 1) * (x.shape[0] // n)], batch)


@dataclasses.dataclass
class Run:
    plan: Plan
    losses: list[float]
    step_seconds: list[float]  # wall time of each step compiled beforehand
    state: object
    compile_seconds: float
    memory: dict  # per-device bytes: state shards, and the compiled step's own estimate


def run(config, batches, *, devices=None, plan: Plan | None = None) -> Run:
    """Init from config.train.seed and take one train step per global batch under the plan
    config.mesh asks for (or `plan`); every process passes the same global batches."""
    from gptjax.training.optim import make_optimizer
    from gptjax.training.state import graphdef_of, init_state
    from gptjax.training.steps import train_step_fn

    plan = plan or make_plan(config, devices=devices)
    tx, schedule = make_optimizer(config.optim, config.train.num_steps)
    state = plan.init(init_state, config.model, tx, config.train.seed)
    step = plan.compile_train(train_step_fn(config, graphdef_of(config.model), tx, schedule,
                                            axis_name=plan.axis_name), state)
    batches = [plan.put_batch(process_rows(b)) for b in batches]
    t0 = time.perf_counter()
    if plan.strategy == "pmap" and jax.process_count() > 1:
        # pmap's AOT executable expects global shapes across hosts; let the call compile
        compiled, memory = step, {}
        state, metrics = step(state, batches[0])
        first = [float(metrics["loss"])]
    else:
        compiled = step.lower(state, batches[0]).compile()  # compile once, outside timings
        memory, first = _compiled_memory(compiled), []
    compile_s = time.perf_counter() - t0
    losses, times = first, []
    for batch in batches[len(first):]:
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch)
        losses.append(float(metrics["loss"]))  # blocks: each step is timed whole
        times.append(time.perf_counter() - t0)
    per_device = device_bytes(state)
    memory = {"state_bytes_per_device_max": max(per_device.values()),
              "state_bytes_total": sum(per_device.values()), **memory}
    return Run(plan, losses, times, state, compile_s, memory)


def _compiled_memory(compiled) -> dict:
    """XLA's per-device estimate for the compiled step (arguments, outputs, temporaries)."""
    try:
        analysis = compiled.memory_analysis()
    except Exception:  # not every backend / path reports it
        return {}
    if analysis is None:
        return {}
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
              "alias_size_in_bytes", "generated_code_size_in_bytes")
    return {f"compiled_{f}": int(getattr(analysis, f)) for f in fields
            if hasattr(analysis, f)}
