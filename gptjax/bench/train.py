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
    from gptjax.training import graphdef_of, init_state, make_optimizer, train_step_fn
    from gptjax.training.steps import compile_on_leaves

    if not cfg.model.vocab_size:
        raise ValueError("step_throughput needs a resolved model.vocab_size")
    plan = make_plan(cfg)
    tx, schedule = make_optimizer(cfg.optim, cfg.train.num_steps)
    init = functools.partial(init_state, cfg.model, tx, cfg.train.seed)
    abstract = jax.eval_shape(init)
    from gptjax.training.loop import _cpu_data_mesh

    step = compile_on_leaves(plan, train_step_fn(cfg, graphdef_of(cfg.model), tx, schedule,
                                                 axis_name=plan.axis_name,
                                                 data_mesh=_cpu_data_mesh(plan)),
                             abstract, plan.shardings(abstract))
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
    """results as JSON beside a markdown table at `path` (.md)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# Training throughput: nanoGPT's Shakespeare CPU recipe", "",
             f"    {command}", "", f"Machine: {results['machine']}", ""]
    lines += ["| measurement | tokens/s | ms/step | first step (compile + run), s | vs nanoGPT |",
              "|---|---|---|---|---|"]
    for name in ("step", "loop"):
        r = results.get(name)
        if r:
            ratio = (f"{r['tokens_per_sec'] / baseline_tokens_per_sec:.2f}x"
                     if baseline_tokens_per_sec else "")
            lines.append(f"| {name} | {r['tokens_per_sec']:,.0f} (best "
                         f"{r['tokens_per_sec_best']:,.0f}) | {r['ms_per_step']:.1f} | "
                         f"{r['first_step_seconds']:.1f} | {ratio} |")
    if baseline_tokens_per_sec:
        lines.append(f"| nanoGPT (PyTorch eager, measured here) | {baseline_tokens_per_sec:,.0f}"
                     " | | | 1.00x |")
    full = results.get("full")
    if full:
        lines += ["", "Full recipe, a fresh process as a user runs it:", "",
                  f"    python {full['command']}", "",
                  f"Final val loss {full['final_val_loss']:.4f} at step "
                  f"{full['final_step']}, wall {full['wall_seconds']:.0f} s"
                  + (f" (nanoGPT: {baseline_wall:.0f} s)" if baseline_wall else "")
                  + (f"; val loss <= {full['target']} first at step {full['step_at_target']}, "
                     f"{full['seconds_to_target']:.0f} s after the start"
                     if full["seconds_to_target"] is not None else
                     f"; val loss never reached {full['target']}") + ".",
                  "", "| step | val loss | seconds since start |", "|---|---|---|"]
        lines += [f"| {s} | {v:.4f} | {w:.1f} |" for s, v, w in full["evals"]]
    path.write_text("\n".join(lines) + "\n")
    return path
