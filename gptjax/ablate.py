"""Ablations: a sweep of named override sets x seeds, each trained by the normal training path,
summarised in one report (mean +- std table, loss curves, the command and config of every run).

A sweep config (configs/ablations/*.py) holds:
    base        path of an experiment config (configs/*.py)
    overrides   {'section': {'field': value}} applied to every run (e.g. a shorter schedule)
    variants    [{'name': ..., 'section': {'field': value}, ...}, ...]
    seeds       (0, 1, ...)
    metrics     final metrics to tabulate (e.g. 'val_loss', 'val_accuracy'; also run_info.json's
                numbers, e.g. 'trainable_params', 'optimizer_state_bytes')
    eval_lengths  optional multiples of data.seq_len to evaluate at after training
                  (length extrapolation)
    evaluate    optional {'task': ..., 'data': FILE.jsonl, 'max_examples': N, generate's
                options...}: each run's final checkpoint is scored on the task file
                (gptjax.evaluate; its JSON and example table go to the run's evaluate.json) and
                the task's metrics join the table
    setup       optional [{'name': ..., 'command': ['experiments.train', '--flag=...', ...],
                'creates': PATH}, ...]: `python -m` commands run in order before the runs
                (each skipped once its `creates` exists), e.g. the data and the pretrained
                model that fine-tuning variants start from
'{outdir}' in any string of the sweep (overrides, variants, setup, evaluate) is the sweep's
outdir, so a sweep's runs can read what its setup made.
Runs resume: a run whose final.json exists is not repeated, and an interrupted run resumes from
its last checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import pathlib
import shlex
import subprocess
import sys
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from gptjax.config import Config, ConfigError
from gptjax import evaluate as evaluation
from gptjax.data import build_data
from gptjax.model import apply, positions, split
from gptjax.tokenizers import Tokenizer
from gptjax.training import train
from gptjax.training.checkpoint import load_model
from gptjax.training.start import check_config
from gptjax.training.steps import cross_entropy, model_inputs


def load_config_file(path: str | pathlib.Path) -> ml_collections.ConfigDict:
    """get_config() of a configs/*.py file."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist (configs/ lists them)")
    spec = importlib.util.spec_from_file_location(f"_gptjax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]):
    """A copy of `config` with 'section.field' keys set; an unknown key is an error."""
    # A deep copy keeps the config's field references (finetune_gpt2's warm-up follows
    # train.num_steps), which a copy through to_dict() would freeze at the base's values.
    config = copy.deepcopy(config)
    for key, value in overrides.items():
        section, _, field = key.partition(".")
        if not field or section not in config or field not in config[section]:
            raise KeyError(f"override {key!r} names no field of the base config; use "
                           "'section.field' with a field the base config defines")
        config[section][field] = value
    return config


@dataclasses.dataclass
class Run:
    variant: str
    seed: int
    overrides: dict[str, Any]  # base overrides + the variant's + the seed
    workdir: pathlib.Path

    def command(self, base: str) -> str:
        flags = [f"--config={base}"] + [f"--config.{k}={_flag(v)}"
                                        for k, v in self.overrides.items()]
        return " ".join(["python -m experiments.train", *map(shlex.quote, flags),
                         f"--workdir={shlex.quote(str(self.workdir))}"])


def _flag(v) -> str:
    return str(v) if not isinstance(v, (list, tuple)) else ",".join(map(str, v))


def flatten(nested, prefix="") -> dict[str, Any]:
    """{'train': {'num_steps': 3}} -> {'train.num_steps': 3}."""
    if hasattr(nested, "to_dict"):
        nested = nested.to_dict()
    out = {}
    for key, value in nested.items():
        if isinstance(value, dict) or hasattr(value, "to_dict"):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def expand(sweep, outdir) -> list[Run]:
    outdir = pathlib.Path(outdir)
    variants = [flatten(v) for v in sweep.variants]
    names = [v.get("name") for v in variants]
    if None in names or len(set(names)) != len(names):
        raise ValueError(f"every variant needs a unique 'name': {names}")
    runs = []
    for variant in variants:
        name = variant.pop("name")
        for seed in sweep.seeds:
            overrides = {**flatten(sweep.get("overrides", {})), **variant, "train.seed": seed}
            runs.append(Run(name, seed, overrides, outdir / "runs" / _slug(name) / f"seed{seed}"))
    return runs


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def run_sweep(sweep: ml_collections.ConfigDict, outdir, *, train_fn: Callable | None = None,
              log: Callable[[str], None] = print) -> pathlib.Path:
    """Train every (variant, seed) not yet finished, then write outdir/report.md."""
    train_fn = train_fn or train
    sweep = with_outdir(sweep, outdir)
    runs, configs = planned_runs(sweep, outdir)
    run_setup(sweep.get("setup") or (), log)
    check_evaluate(sweep.get("evaluate"))
    for i, (run, config) in enumerate(zip(runs, configs)):
        done = run.workdir / "final.json"
        if done.exists():
            log(f"[{i + 1}/{len(runs)}] {run.variant} seed {run.seed}: finished earlier")
            continue
        log(f"[{i + 1}/{len(runs)}] {run.variant} seed {run.seed}: {run.command(sweep.base)}")
        run.workdir.mkdir(parents=True, exist_ok=True)
        (run.workdir / "command.txt").write_text(run.command(sweep.base) + "\n")
        final = train_fn(config, run.workdir)
        for mult in sweep.get("eval_lengths", ()) or ():
            final[f"val_loss@{mult}x"] = evaluate_at_length(run.workdir, config, mult)
        if sweep.get("evaluate"):
            final.update(evaluate_run(run.workdir, sweep.evaluate))
        final = {k: v for k, v in final.items() if isinstance(v, (int, float, type(None)))}
        tmp = done.with_suffix(".tmp")  # written whole, then renamed: a killed run has none
        tmp.write_text(json.dumps(final, indent=1))
        tmp.rename(done)
    return write_report(sweep, runs, outdir)


def planned_runs(sweep: ml_collections.ConfigDict, outdir
                 ) -> tuple[list[Run], list[ml_collections.ConfigDict]]:
    """Every (variant, seed) run and its config, each config checked as a run checks it
    before reading data: a bad variant fails before the first run of the sweep starts."""
    base = load_config_file(sweep.base)
    runs = expand(sweep, outdir)
    configs = [apply_overrides(base, run.overrides) for run in runs]
    for run, config in zip(runs, configs):
        try:
            check_config(Config.from_dict(config))
        except ConfigError as e:
            raise ConfigError(f"variant {run.variant!r}: {e}") from None
    return runs, configs


def with_outdir(sweep: ml_collections.ConfigDict, outdir) -> ml_collections.ConfigDict:
    """A copy of `sweep` with '{outdir}' in its strings replaced by `outdir`."""

    def fill(value):
        if isinstance(value, str):
            return value.replace("{outdir}", str(outdir))
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(fill(v) for v in value)
        return value

    return ml_collections.ConfigDict(fill(sweep.to_dict()))


def setup_command(step) -> list[str]:
    """The argv of a setup step: python -m its command."""
    return [sys.executable, "-m", *map(str, step["command"])]


def run_setup(steps, log: Callable[[str], None]) -> None:
    """Run each setup command unless what it `creates` exists; a failure stops the sweep."""
    for step in steps:
        name, creates = step.get("name", step["command"][0]), step.get("creates")
        if creates and pathlib.Path(creates).exists():
            log(f"setup {name}: {creates} exists")
            continue
        command = setup_command(step)
        log(f"setup {name}: {shlex.join(['python', *command[1:]])}")
        if subprocess.run(command).returncode != 0:
            raise RuntimeError(f"sweep setup step {name!r} failed: "
                               f"{shlex.join(['python', *command[1:]])}; fix it and rerun "
                               "the sweep (finished steps and runs are kept)")


def _evaluate_spec(spec) -> dict[str, Any]:
    return dict(spec.to_dict() if hasattr(spec, "to_dict") else spec)


def check_evaluate(spec) -> None:
    """A sweep's `evaluate` names a known task and an existing data file, before any run."""
    if not spec:
        return
    spec = _evaluate_spec(spec)
    if spec.get("task") not in evaluation.TASK_METRICS:
        raise ValueError(f"evaluate.task={spec.get('task')!r} is unknown; allowed: "
                         f"{list(evaluation.TASK_METRICS)}")
    if not pathlib.Path(str(spec.get("data"))).expanduser().is_file():
        raise FileNotFoundError(f"evaluate.data={spec.get('data')!r} is not a file; give the "
                                "JSON-lines task file to score each run on")


def evaluate_metrics(spec) -> list[str]:
    """The metrics a sweep's `evaluate` adds to each run's row."""
    if not spec:
        return []
    return [*evaluation.LOSS_METRICS, *evaluation.TASK_METRICS[_evaluate_spec(spec)["task"]]]


def evaluate_run(workdir, spec) -> dict[str, float]:
    """Task metrics of the run's final checkpoint (gptjax.evaluate); the examples go to
    workdir/evaluate.json and .md."""
    spec = _evaluate_spec(spec)
    task, data = spec.pop("task"), spec.pop("data")
    result = evaluation.evaluate_checkpoint(workdir, data, task, **spec)
    evaluation.write_results(result, pathlib.Path(workdir) / "evaluate.json")
    return {m: result["metrics"][m] for m in evaluate_metrics({"task": task})}


def evaluate_at_length(workdir, config, multiple: int) -> float | None:
    """Validation loss of the trained run at `multiple` x its training sequence length.

    None when the model cannot position that many tokens (learned positions stop at max_len).
    """
    seq_len = config.data.seq_len * multiple
    limit = positions.get(config.model.position).max_positions(Config.from_dict(config).model)
    if limit is not None and seq_len > limit:
        return None
    long = apply_overrides(config, {
        "data.seq_len": seq_len, "model.max_len": max(config.model.max_len, seq_len),
        "data.batch_size": max(1, config.data.batch_size // multiple)})
    model = load_model(workdir)
    graphdef, params = split(model)
    cfg = Config.from_dict(long)
    data = build_data(cfg, tokenizer=_saved_tokenizer(workdir), process_index=0,
                      process_count=1)
    step = jax.jit(lambda p, b: cross_entropy(apply(graphdef, p, b["inputs"], **model_inputs(b)),
                                              b["targets"])[0])
    losses = [float(step(params, b)) for b in data.val_batches(cfg.train.eval_steps)]
    return float(np.mean(losses))


def _saved_tokenizer(workdir):
    folder = pathlib.Path(workdir) / "tokenizer"
    if not folder.is_dir():
        return None
    return Tokenizer.from_pretrained(folder)


def _read_metrics(workdir) -> list[dict]:
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


SPEEDS = {"tokens_per_sec", "ms_per_step"}  # tabulated as each run's median logging window


def _run_info(workdir) -> dict[str, Any]:
    """The numbers of a run's run_info.json (trainable parameters, optimizer-state bytes)."""
    path = pathlib.Path(workdir) / "run_info.json"
    if not path.exists():
        return {}
    info = json.loads(path.read_text())
    return {k: v for k, v in info.items() if isinstance(v, (int, float))
            and not isinstance(v, bool)}


def summarise(runs, metrics) -> dict[str, dict[str, tuple[float, float, int]]]:
    """{variant: {metric: (mean, std, n)}} over the seeds that finished."""
    table: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        path = run.workdir / "final.json"
        if not path.exists():
            continue
        final = {**_run_info(run.workdir), **json.loads(path.read_text())}
        for speed in SPEEDS & set(metrics):  # one logging window is noisy: the run's median
            rates = [r[speed] for r in _read_metrics(run.workdir) if speed in r][1:] \
                or [final.get(speed)]
            final[speed] = None if rates[0] is None else float(np.median(rates))
        row = table.setdefault(run.variant, {})
        for m in metrics:
            if final.get(m) is not None:
                row.setdefault(m, []).append(float(final[m]))
    return {v: {m: (float(np.mean(x)), float(np.std(x, ddof=1)) if len(x) > 1 else 0.0, len(x))
                for m, x in row.items()} for v, row in table.items()}


def _mean_std(mean: float, std: float) -> str:
    """Losses and accuracies to 4 decimals; large figures (tokens/s) as whole numbers."""
    if abs(mean) >= 1000:
        return f"{mean:,.0f} ± {std:,.0f}"
    return f"{mean:.4f} ± {std:.4f}"


def write_report(sweep, runs, outdir) -> pathlib.Path:
    outdir = pathlib.Path(outdir)
    metrics = list(sweep.metrics) + [f"val_loss@{m}x" for m in (sweep.get("eval_lengths") or ())]
    metrics += [m for m in evaluate_metrics(sweep.get("evaluate")) if m not in metrics]
    summary = summarise(runs, metrics)
    variants = list(dict.fromkeys(run.variant for run in runs))
    lines = [f"# Ablation: {sweep.get('title', pathlib.Path(sweep.base).stem)}", "",
             f"Base config `{sweep.base}`, seeds {list(sweep.seeds)}; mean ± std over seeds"
             + (f"; {' and '.join(sorted(SPEEDS & set(metrics)))}: each run's median over its "
               "logging windows after the first" if SPEEDS & set(metrics) else "") + ".", "",
             "| variant | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for v in variants:
        cells = []
        for m in metrics:
            if m in summary.get(v, {}):
                mean, std, n = summary[v][m]
                cells.append(_mean_std(mean, std) + (f" (n={n})" if n < len(sweep.seeds)
                                                     else ""))
            else:
                cells.append("n/a")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    plot = _plot_curves(runs, variants, outdir)
    if plot:
        lines += ["", f"![loss curves]({plot.name})"]
    lines += ["", "## Runs", ""]
    for step in sweep.get("setup") or ():
        lines += [f"- setup **{step.get('name', step['command'][0])}**: "
                  f"`{shlex.join(['python', *setup_command(step)[1:]])}`"]
    for run in runs:
        lines += [f"- **{run.variant}**, seed {run.seed}: `{run.command(sweep.base)}`"]
        cfg_path = run.workdir / "config.json"
        if cfg_path.exists():
            lines += [f"  (resolved config: `{cfg_path.relative_to(outdir)}`)"]
    report = outdir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def _plot_curves(runs, variants, outdir) -> pathlib.Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    drawn = False
    for color, v in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 10, variants):
        for j, run in enumerate(r for r in runs if r.variant == v):
            rows = _read_metrics(run.workdir)
            for ax, key in zip(axes, ("train_loss", "val_loss")):
                pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
                if pts:
                    ax.plot(*zip(*pts), color=color, alpha=0.8, marker="o" if key == "val_loss"
                            else None, ms=3, label=v if j == 0 else None)
                    drawn = True
    if not drawn:
        plt.close(fig)
        return None
    for ax, title in zip(axes, ("train loss", "validation loss")):
        ax.set(xlabel="step", ylabel="loss", title=title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = outdir / "loss_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

