"""Training throughput and time-to-loss: the numbers to hold against nanoGPT on the same machine.

Three measurements of one config:
- `step_throughput`: the jitted train step alone on device-resident batches (no data, no loop);
- `loop_throughput`: the real loop (`gptjax.training.train`) for a few hundred steps, tokens/s as
  it logs them (compile, evaluations and checkpoints excluded);
- `time_to_loss`: the whole recipe, wall-clock from the call to the first evaluation at or below
  a target validation loss, and to the end.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import jax
import numpy as np

from gptjax.config import Config


def step_throughput(cfg: Config, *, steps: int = 100, repeats: int = 3) -> dict[str, Any]:
    """ms/step and tokens/s of the compiled train step alone, laid out as the loop lays it out
    (gptjax.parallel's plan, state as leaves), on fixed random batches; first-step seconds."""
    from gptjax.parallel import make_plan
    from gptjax.training import graphdef_of, init_state, make_optimizer
    from gptjax.training.steps import compile_train_step

    if not cfg.model.vocab_size:
        raise ValueError("step_throughput needs a resolved model.vocab_size")
    plan = make_plan(cfg)
    tx, schedule = make_optimizer(cfg.optim, cfg.train.num_steps)
    init = functools.partial(init_state, cfg.model, tx, cfg.train.seed)
    abstract = jax.eval_shape(init)
    step = compile_train_step(cfg, plan, graphdef_of(cfg.model), tx, schedule, abstract,
                              plan.shardings(abstract))
    leaves = jax.tree.leaves(plan.init(init))
    rng = np.random.default_rng(0)
    b, t, v = cfg.data.batch_size, cfg.data.seq_len, cfg.model.vocab_size
    batches = []
    for _ in range(8):
        x = rng.integers(0, v, (b, t + 1)).astype(np.int32)
        batches.append(plan.put_batch({"inputs": x[:, :-1], "targets": x[:, 1:]}))
    t0 = time.perf_counter()
    leaves, m = step(leaves, batches[0])
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        previous = None
        for i in range(steps):
            leaves, m = step(leaves, batches[i % len(batches)])
            if previous is not None:  # one step ahead at most, as the loop runs
                jax.block_until_ready(previous)
            previous = m
        jax.block_until_ready(m)
        times.append((time.perf_counter() - t0) / steps)
    best, median = min(times), statistics.median(times)
    return {"ms_per_step": 1e3 * median, "ms_per_step_best": 1e3 * best,
            "tokens_per_sec": b * t / median, "tokens_per_sec_best": b * t / best,
            "first_step_seconds": compile_s, "repeats": repeats, "steps": steps,
            "devices": jax.device_count()}


def loop_throughput(config, *, steps: int = 300, window: int = 50) -> dict[str, Any]:
    """The training loop itself for `steps` steps (no evaluation): tokens/s per logging window."""
    from gptjax.training import train

    cfg = Config.from_dict(config)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, num_steps=steps, log_every=window, eval_every=10 * steps,
        checkpoint_every=10 * steps, sample_tokens=0, eval_steps=1))
    with tempfile.TemporaryDirectory() as workdir:
        t0 = time.perf_counter()
        final = train(cfg, workdir)
        wall = time.perf_counter() - t0
        rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    rates = [r["tokens_per_sec"] for r in rows if "tokens_per_sec" in r][1:]  # skip warm-up
    median = statistics.median(rates)
    return {"tokens_per_sec": median, "tokens_per_sec_best": max(rates),
            "ms_per_step": 1e3 * cfg.data.batch_size * cfg.data.seq_len / median,
            "first_step_seconds": final.get("first_step_seconds"), "wall_seconds": wall,
            "steps": steps, "windows": len(rates)}


def time_to_loss(config_file: str, overrides: list[str], workdir, *,
                 target: float) -> dict[str, Any]:
    """Run the whole recipe as a user does (`python -m experiments.train`, a fresh process, a
    fresh workdir): wall seconds from the command's start to the first evaluation with
    val_loss <= target, and to the end."""
    if pathlib.Path(workdir).exists() and any(pathlib.Path(workdir).iterdir()):
        raise ValueError(f"{workdir} is not empty: time_to_loss needs a fresh run")
    command = [sys.executable, "-m", "experiments.train", f"--config={config_file}",
               f"--workdir={workdir}", *overrides]
    t0 = time.time()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.time() - t0
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    evals = [(r["step"], r["val_loss"], r["time"] - t0) for r in rows if "val_loss" in r]
    reached = next(((s, v, w) for s, v, w in evals if v <= target), None)
    return {"target": target, "final_val_loss": evals[-1][1], "final_step": evals[-1][0],
            "wall_seconds": wall, "seconds_to_target": reached[2] if reached else None,
            "step_at_target": reached[0] if reached else None, "evals": evals,
            "command": " ".join(command[1:])}


def machine() -> dict[str, Any]:
    return {"device": jax.devices()[0].device_kind, "devices": jax.device_count(),
            "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "jax": jax.__version__, "load_average": os.getloadavg()}


def write_report(results: dict[str, Any], path: str | os.PathLike, *, command: str,
                 baseline_tokens_per_sec: float | None = None,
                 baseline_wall: float | None = None) -> pathlib.Path:
    """results ({'machine', 'rounds': [{'step', 'loop', 'full'?}, ...]}) as JSON beside a
    markdown report at `path` (.md): medians and ranges over the rounds, then every round."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    rounds = results["rounds"]

    def ratio(x):
        return f"{x / baseline_tokens_per_sec:.2f}x" if baseline_tokens_per_sec else ""

    lines = ["# Training throughput: nanoGPT's Shakespeare CPU recipe", "",
             f"    {command}", "", f"Machine: {results['machine']}", "",
             f"Each measurement ran in a fresh process, {len(rounds)} times; median (range).", "",
             "| measurement | tokens/s | ms/step | first step (compile + run), s | vs nanoGPT |",
             "|---|---|---|---|---|"]
    for name, what in (("step", "compiled step alone"), ("loop", "training loop, steady state")):
        rs = [r[name] for r in rounds if name in r]
        if rs:
            tps = [r["tokens_per_sec"] for r in rs]
            med = statistics.median(tps)
            lines.append(
                f"| {what} | {med:,.0f} ({min(tps):,.0f}-{max(tps):,.0f}) | "
                f"{statistics.median(r['ms_per_step'] for r in rs):.1f} | "
                f"{statistics.median(r['first_step_seconds'] for r in rs):.1f} | {ratio(med)} "
                f"({ratio(min(tps))}-{ratio(max(tps))}) |")
    if baseline_tokens_per_sec:
        lines.append(f"| nanoGPT (PyTorch eager, measured here) | {baseline_tokens_per_sec:,.0f}"
                     " | | | 1.00x |")
    fulls = [r["full"] for r in rounds if "full" in r]
    if fulls:
        walls = [f["wall_seconds"] for f in fulls]
        reached = [f["seconds_to_target"] for f in fulls if f["seconds_to_target"] is not None]
        target = fulls[0]["target"]
        lines += ["", "The full recipe, a fresh `python -m experiments.train` process as a user "
                  "runs it:", "", f"    python {fulls[0]['command']}", "",
                  f"Wall time {statistics.median(walls):.0f} s ({min(walls):.0f}-"
                  f"{max(walls):.0f})" + (f" (nanoGPT: {baseline_wall:.0f} s)" if baseline_wall
                                          else "")
                  + (f"; val loss <= {target} first after {statistics.median(reached):.0f} s "
                     f"({min(reached):.0f}-{max(reached):.0f}) in {len(reached)} of {len(fulls)} "
                     "runs" if reached else f"; val loss never reached {target}") + "."]
    lines += ["", "| round | step tokens/s | loop tokens/s | full wall s | s to target | "
              "final val loss |", "|---|---|---|---|---|---|"]
    fmt = lambda r, k, f: format(r[k], f) if r and r.get(k) is not None else "-"  # noqa: E731
    for i, r in enumerate(rounds, 1):
        full = r.get("full")
        lines.append(f"| {i} | {fmt(r.get('step'), 'tokens_per_sec', ',.0f')} | "
                     f"{fmt(r.get('loop'), 'tokens_per_sec', ',.0f')} | "
                     f"{fmt(full, 'wall_seconds', '.0f')} | "
                     f"{fmt(full, 'seconds_to_target', '.0f')} | "
                     f"{fmt(full, 'final_val_loss', '.4f')} |")
    if fulls:
        lines += ["", "Validation loss in round 1:", "",
                  "| step | val loss | seconds since start |", "|---|---|---|"]
        lines += [f"| {s} | {v:.4f} | {w:.1f} |" for s, v, w in fulls[0]["evals"]]
    path.write_text("\n".join(lines) + "\n")
    return path
