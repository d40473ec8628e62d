"""Training throughput and time-to-loss, side by side with nanoGPT run on the same machine.

The peer: nanoGPT's CPU recipe, run by ../shared/baselines/nanogpt_cpu.sh in a fresh process
(`run_nanogpt`), in the same benchmark run as gptjax and never at the same time; the reports
divide by that measurement, never by a figure from elsewhere. Three measurements of gptjax:
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
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import jax
import numpy as np

from gptjax.bench.host import cpu_model
from gptjax.config import Config
from gptjax.parallel import make_plan
from gptjax.training.loop import train
from gptjax.training.optim import make_optimizer
from gptjax.training import finetune, loss_scale
from gptjax.training.state import graphdef_of, init_state
from gptjax.training.steps import compile_train_step


def compiled_step(cfg: Config, *, batches: int = 8):
    """The config's train step compiled as the loop runs it (gptjax.parallel's plan, the state
    as leaves, train.steps_per_call steps to a call): (call, initial leaves, `batches` fixed
    random device-resident inputs of one call each, steps per call)."""
    if not cfg.model.vocab_size:
        raise ValueError("a compiled step needs a resolved model.vocab_size")
    plan = make_plan(cfg)
    tx, schedule = make_optimizer(cfg.optim, cfg.train.num_steps)
    init = functools.partial(init_state, cfg.model, tx, cfg.train.seed,
                             finetune.trainable(cfg), loss_scale=loss_scale.init(cfg))
    abstract = jax.eval_shape(init)
    k = cfg.train.steps_per_call
    call = compile_train_step(cfg, plan, graphdef_of(cfg.model), tx, schedule, abstract,
                              plan.shardings(abstract), steps=k)
    leaves = jax.tree.leaves(plan.init(init))
    rng = np.random.default_rng(0)
    b, t, v = cfg.data.batch_size, cfg.data.seq_len, cfg.model.vocab_size
    fixed = []
    for _ in range(batches):
        xs = [rng.integers(0, v, (b, t + 1)).astype(np.int32) for _ in range(k)]
        one = [{"inputs": x[:, :-1], "targets": x[:, 1:]} for x in xs]
        fixed.append(plan.put_batch(one[0]) if k == 1 else plan.put_batches(one))
    return call, leaves, fixed, k


def step_throughput(cfg: Config, *, steps: int = 100, repeats: int = 3) -> dict[str, Any]:
    """ms/step and tokens/s of the compiled train step alone, laid out as the loop lays it out
    (gptjax.parallel's plan, state as leaves, train.steps_per_call steps to a call), on fixed
    random batches; first-call seconds."""
    step, leaves, batches, k = compiled_step(cfg)
    calls = max(steps // k, 1)
    b, t = cfg.data.batch_size, cfg.data.seq_len
    t0 = time.perf_counter()
    leaves, m = step(leaves, batches[0])
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        previous = None
        for i in range(calls):
            leaves, m = step(leaves, batches[i % len(batches)])
            if previous is not None:  # one call ahead at most, as the loop runs
                jax.block_until_ready(previous)
            previous = m
        jax.block_until_ready(m)
        times.append((time.perf_counter() - t0) / (calls * k))
    best, median = min(times), statistics.median(times)
    return {"ms_per_step": 1e3 * median, "ms_per_step_best": 1e3 * best,
            "tokens_per_sec": b * t / median, "tokens_per_sec_best": b * t / best,
            "first_step_seconds": compile_s, "repeats": repeats, "steps": calls * k,
            "steps_per_call": k, "devices": jax.device_count()}


def loop_throughput(config, *, steps: int = 300, window: int = 50) -> dict[str, Any]:
    """The training loop itself for `steps` steps (no evaluation): tokens/s per logging window."""
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


# --- the machine: every report names it, since figures from two CPUs do not compare ----------

def machine() -> dict[str, Any]:
    """What the figures were measured on: CPU model, cores, devices, jax, and the load."""
    return {"cpu_model": cpu_model(), "cpus": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(), "processor": platform.machine(),
            "device": jax.devices()[0].device_kind, "devices": jax.device_count(),
            "jax": jax.__version__, "load_average": os.getloadavg()}


def machine_line(m: dict[str, Any]) -> str:
    """One sentence naming the machine and the libraries, for a report."""
    line = (f"{m.get('cpu_model', m.get('processor'))}, {m['cpus']} cores "
            f"({m.get('cpus_usable', m['cpus'])} usable), jax {m['jax']} on {m['devices']} "
            f"{m['device']} device(s)")
    if m.get("torch"):
        line += f", torch {m['torch']}" + (f" ({m['torch_note']})" if m.get("torch_note") else "")
    if "load_average_after" in m:
        line += (f". Load average before/after: {m['load_average'][0]:.1f} / "
                 f"{m['load_average_after'][0]:.1f} (other processes may have shared the CPU)")
    return line + "."


# --- the peer: nanoGPT's CPU recipe, run by ../shared/baselines/nanogpt_cpu.sh ------------------

class PeerError(RuntimeError):
    """nanoGPT could not be run side by side: the message names the cause and the fix."""


# nanoGPT's train.py flag -> the gptjax config field that must equal it for the same recipe.
NANOGPT_FIELDS = {"n_layer": ("model", "num_layers"), "n_head": ("model", "num_heads"),
                  "n_embd": ("model", "d_model"), "block_size": ("data", "seq_len"),
                  "batch_size": ("data", "batch_size"), "dropout": ("model", "dropout")}
_NO_PEER = "pass --peer=none to measure gptjax alone"


def default_venv(script: str | os.PathLike) -> pathlib.Path:
    """Where the runner keeps its CPU PyTorch when given no venv: .venv beside it."""
    return pathlib.Path(script).resolve().parent / ".venv"


def nanogpt_recipe(script: str | os.PathLike) -> dict[str, str]:
    """The `--name=value` flags the runner passes to nanoGPT's train.py, read from its text."""
    path = pathlib.Path(script)
    if not path.is_file():
        raise PeerError(f"nanoGPT's runner {path} is absent (it lives in shared/baselines beside "
                        f"the repository): pass --peer_script=PATH, or {_NO_PEER}")
    return dict(re.findall(r"--(\w+)=([^\s\"'\\$]+)", path.read_text()))


def check_same_recipe(cfg: Config, script: str | os.PathLike) -> None:
    """Raise PeerError unless `cfg`'s model and batch are the ones the runner gives nanoGPT."""
    recipe = nanogpt_recipe(script)
    wrong = []
    for flag, (section, field) in NANOGPT_FIELDS.items():
        ours = getattr(getattr(cfg, section), field)
        if flag in recipe and float(recipe[flag]) != float(ours):
            wrong.append(f"{section}.{field}={ours} where nanoGPT runs --{flag}={recipe[flag]}")
    if wrong:
        raise PeerError(f"the config is not the recipe {script} runs ({'; '.join(wrong)}): use "
                        f"configs/shakespeare_char_cpu.py, or {_NO_PEER}")


def peer_torch(venv: str | os.PathLike) -> str | None:
    """torch's version in nanoGPT's venv; None while the venv is not built (the runner builds it
    on first use); PeerError when the venv is there but torch does not import."""
    python = pathlib.Path(venv) / "bin" / "python"
    if not python.exists():
        return None
    done = subprocess.run([str(python), "-c", "import torch; print(torch.__version__)"],
                          capture_output=True, text=True)
    if done.returncode:
        raise PeerError(f"torch does not import in nanoGPT's venv {venv} "
                        f"({done.stderr.strip().splitlines()[-1:]}): run `{python} -m pip install "
                        f"torch==2.13.0 numpy` (a CPU wheel on this machine's disk), pass "
                        f"--peer_venv=NEW_DIR to have the runner build one, or {_NO_PEER}")
    return done.stdout.strip()


def run_nanogpt(script: str | os.PathLike, venv: str | os.PathLike, *,
                steps: int) -> dict[str, Any]:
    """nanoGPT's CPU recipe for `steps` iterations in a fresh process: the runner's JSON
    (tokens_per_sec, ms_per_iter, val_loss, wall_s) and the command that ran it. val_loss is
    from nanoGPT's last evaluation (every 250 iterations, from 0): in a short run, its start."""
    command = ["bash", str(script), str(venv), f"--max_iters={steps}",
               f"--lr_decay_iters={steps}"]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise PeerError(f"nanoGPT's run failed (exit {done.returncode}): {tail}\nIt needs CPU "
                        f"PyTorch in {venv} (the runner installs torch==2.13.0 there on first "
                        f"use); or {_NO_PEER}")
    try:
        result = json.loads(lines[-1])
        float(result["tokens_per_sec"])
    except (ValueError, KeyError, TypeError) as e:
        raise PeerError(f"nanoGPT's runner printed {lines[-1]!r}, not its JSON line with "
                        f"tokens_per_sec ({e})") from e
    return {**result, "steps": steps, "command": " ".join(command)}


# --- the report ---------------------------------------------------------------------------------

def _spread(values, fmt: str, unit: str = "") -> str:
    """'median (min-max)' of `values`, each formatted with `fmt` and followed by `unit`."""
    med, lo, hi = (format(x, fmt) + unit for x in (statistics.median(values), min(values),
                                                  max(values)))
    return f"{med} ({lo}-{hi})"


def _throughput_lines(rounds: list[dict]) -> list[str]:
    lines = ["| measurement | tokens/s | ms/step | first step (compile + run), s | vs nanoGPT, "
             "same round |", "|---|---|---|---|---|"]
    for name, what in (("step", "compiled step alone"), ("loop", "training loop, steady state")):
        rs = [r for r in rounds if name in r]
        if rs:
            ratios = [r[name]["tokens_per_sec"] / r["peer"]["tokens_per_sec"]
                      for r in rs if "peer" in r]
            lines.append(
                f"| {what} | {_spread([r[name]['tokens_per_sec'] for r in rs], ',.0f')} | "
                f"{statistics.median(r[name]['ms_per_step'] for r in rs):.1f} | "
                f"{statistics.median(r[name]['first_step_seconds'] for r in rs):.1f} | "
                + (_spread(ratios, ".2f", "x") if ratios else "not measured") + " |")
    peers = [r["peer"] for r in rounds if "peer" in r]
    if peers:
        lines.append(f"| nanoGPT (PyTorch eager, its own loop) | "
                     f"{_spread([p['tokens_per_sec'] for p in peers], ',.0f')} | "
                     f"{statistics.median(p['ms_per_iter'] for p in peers):.1f} | | 1.00x |")
    return lines


def _full_lines(rounds: list[dict]) -> list[str]:
    fulls = [r["full"] for r in rounds if "full" in r]
    if not fulls:
        return []
    peers = [r["peer"] for r in rounds if "peer" in r]
    walls = [f["wall_seconds"] for f in fulls]
    reached = [f["seconds_to_target"] for f in fulls if f["seconds_to_target"] is not None]
    target = fulls[0]["target"]
    peer_wall = f" (nanoGPT: {_spread([p['wall_s'] for p in peers], '.0f')} s)" if peers else ""
    losses = [p["val_loss"] for p in peers if p.get("val_loss") is not None]
    peer_loss = f" (nanoGPT: {statistics.median(losses):.4f})" if losses else ""
    return ["", "The full recipe, a fresh `python -m experiments.train` process as a user runs it:",
            "", f"    python {fulls[0]['command']}", "",
            f"Wall time {_spread(walls, '.0f')} s{peer_wall}"
            + (f"; val loss <= {target} first after {_spread(reached, '.0f')} s in "
               f"{len(reached)} of {len(fulls)} runs" if reached
               else f"; val loss never reached {target}")
            + f"; final val loss {statistics.median(f['final_val_loss'] for f in fulls):.4f}"
            + peer_loss + "."]


def _round_lines(rounds: list[dict]) -> list[str]:
    lines = ["", "| round | nanoGPT tokens/s | step tokens/s | loop tokens/s | full wall s | "
             "nanoGPT wall s | s to target | final val loss | nanoGPT val loss |",
             "|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda r, k, f: format(r[k], f) if r and r.get(k) is not None else "-"  # noqa: E731
    for i, r in enumerate(rounds, 1):
        full, peer = r.get("full"), r.get("peer")
        lines.append(f"| {i} | {fmt(peer, 'tokens_per_sec', ',.0f')} | "
                     f"{fmt(r.get('step'), 'tokens_per_sec', ',.0f')} | "
                     f"{fmt(r.get('loop'), 'tokens_per_sec', ',.0f')} | "
                     f"{fmt(full, 'wall_seconds', '.0f')} | {fmt(peer, 'wall_s', '.0f')} | "
                     f"{fmt(full, 'seconds_to_target', '.0f')} | "
                     f"{fmt(full, 'final_val_loss', '.4f')} | {fmt(peer, 'val_loss', '.4f')} |")
    return lines


def write_report(results: dict[str, Any], path: str | os.PathLike, *,
                 command: str) -> pathlib.Path:
    """results ({'machine', 'rounds': [{'peer'?, 'step', 'loop', 'full'?}, ...]}) as JSON beside
    a markdown report at `path` (.md): medians and ranges over the rounds, then every round.
    Ratios to nanoGPT are per round, from the 'peer' measured in that round."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps({"command": command, **results}, indent=2)
                                         + "\n")
    rounds = results["rounds"]
    peer = rounds and "peer" in rounds[0]
    lines = ["# Training throughput: nanoGPT's Shakespeare CPU recipe", "",
             f"    {command}", "", f"Machine: {machine_line(results['machine'])}", "",
             f"{len(rounds)} round{'s' if len(rounds) != 1 else ''}; in each, " + (
                 "nanoGPT's run (`" + rounds[0]["peer"]["command"] + "`), then " if peer else
                 "(nanoGPT not run: --peer=none) ")
             + "every gptjax measurement in a fresh process, one after the other. "
             "Median (range) over the rounds.", ""]
    lines += _throughput_lines(rounds) + _full_lines(rounds) + _round_lines(rounds)
    fulls = [r["full"] for r in rounds if "full" in r]
    if fulls:
        lines += ["", "Validation loss in round 1:", "",
                  "| step | val loss | seconds since start |", "|---|---|---|"]
        lines += [f"| {s} | {v:.4f} | {w:.1f} |" for s, v, w in fulls[0]["evals"]]
    path.write_text("\n".join(lines) + "\n")
    return path
