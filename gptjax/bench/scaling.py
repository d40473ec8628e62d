"""Train a few steps under any plan, without data files or checkpoints: the common core of the
equivalence tests (every strategy vs one device), the multi-process test and
experiments/bench_scaling.py."""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from gptjax.config import ConfigError, MeshConfig
from gptjax.parallel.sharding import device_bytes
from gptjax.parallel.strategy import Plan, make_plan
from gptjax.training.optim import make_optimizer
from gptjax.training import finetune, loss_scale
from gptjax.training.state import graphdef_of, init_state
from gptjax.training.steps import train_step_fn


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
    plan = plan or make_plan(config, devices=devices)
    tx, schedule = make_optimizer(config.optim, config.train.num_steps)
    state = plan.init(init_state, config.model, tx, config.train.seed,
                       finetune.trainable(config), None, loss_scale.init(config))
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


def strategies(num_devices: int) -> dict[str, dict]:
    """The layouts worth comparing on `num_devices` devices: name -> config.mesh fields."""
    n = num_devices
    out = {"single device": dict(data=1)}
    if n == 1:
        return out
    out.update({"pmap DP": dict(strategy="pmap"), "jit DP": dict(data=n),
                "FSDP": dict(data=1, fsdp=n), "TP": dict(data=1, tensor=n)})
    if n % 2 == 0 and n > 2:
        out.update({"DP x TP": dict(data=2, tensor=n // 2),
                    "FSDP x TP": dict(data=1, fsdp=2, tensor=n // 2)})
    if n % 4 == 0 and n > 4:
        out["DP x FSDP x TP"] = dict(data=2, fsdp=2, tensor=n // 4)
    return out


def benchmark(config, meshes: dict[str, dict], num_steps: int, log=print) -> list[dict]:
    """Step time and per-device memory of `config` under each mesh; a row per strategy (or
    the reason it cannot run)."""
    import dataclasses as dc

    batches = synthetic_batches(config, num_steps + 1)
    rows = []
    for name, mesh in meshes.items():
        cfg = dc.replace(config, mesh=MeshConfig(**{**dict(data=-1), **mesh}))
        devices = jax.devices()[:1] if mesh == dict(data=1) else None
        row = {"strategy": name, "mesh": mesh}
        try:
            result = run(cfg, batches, devices=devices)
        except ConfigError as e:
            row["skipped"] = str(e)
            log(f"{name}: skipped: {e}")
            rows.append(row)
            continue
        steps = result.step_seconds[1:] or result.step_seconds  # drop the first (warm-up) run
        tokens = config.data.batch_size * config.data.seq_len
        mem = result.memory
        peak = sum(mem.get(f"compiled_{k}_size_in_bytes", 0)
                   for k in ("argument", "output", "temp")) - mem.get(
                       "compiled_alias_size_in_bytes", 0)
        row.update({
            "layout": str(result.plan), "devices": int(result.plan.mesh.devices.size),
            "compile_s": round(result.compile_seconds, 2),
            "step_ms_median": round(1e3 * float(np.median(steps)), 2),
            "step_ms_min": round(1e3 * float(np.min(steps)), 2),
            "tokens_per_s": round(tokens / float(np.median(steps)), 1),
            "state_mib_per_device": round(mem["state_bytes_per_device_max"] / 2**20, 3),
            "xla_temp_mib_per_device": round(mem.get("compiled_temp_size_in_bytes", 0) / 2**20,
                                             3),
            "xla_peak_mib_per_device": round(peak / 2**20, 3) if peak else None,
            "final_loss": round(result.losses[-1], 6), "losses": result.losses})
        log(f"{name}: {row['step_ms_median']} ms/step, {row['state_mib_per_device']} MiB state "
            f"per device, compile {row['compile_s']} s")
        rows.append(row)
    return rows


def markdown(rows: list[dict], title: str, notes: str = "") -> str:
    """The benchmark's rows as a Markdown page."""
    lines = [f"# {title}", "", notes, "",
             "| strategy | mesh | ms/step (median) | tokens/s | state MiB/device | "
             "XLA temp MiB/device | XLA peak MiB/device | compile s | final loss |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['strategy']} | {r['mesh']} | skipped: {r['skipped']} |"
                         " | | | | | |")
            continue
        lines.append(
            f"| {r['strategy']} | {r['layout'].split(': ', 1)[-1]} | {r['step_ms_median']} | "
            f"{r['tokens_per_s']:,.0f} | {r['state_mib_per_device']} | "
            f"{r['xla_temp_mib_per_device']} | {r['xla_peak_mib_per_device']} | "
            f"{r['compile_s']} | {r['final_loss']} |")
    return "\n".join(lines) + "\n"
