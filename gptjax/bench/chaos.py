"""A chaos harness: real training processes killed (SIGKILL at random moments, some during an
asynchronous save), stopped (SIGTERM), resumed, their newest checkpoint truncated, and the end
compared bitwise with an uninterrupted run.

A run is a command (argv without --workdir; e.g. `python -m experiments.train --config=...`)
started as a child process in a workdir. Progress is read from the workdir as a person would:
the last complete line of metrics.jsonl (so train.log_every=1) and the checkpoints folder, where
a `<step>.orbax-checkpoint-tmp*` folder means an asynchronous save is being written.
experiments/chaos.py runs the long form and writes docs/reliability.md; tests/test_chaos.py the
short form.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import random
import re
import signal
import subprocess
import time
from typing import Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from gptjax.training import checkpoint as ckpt_lib

TMP_MARK = "orbax-checkpoint-tmp"
POLL_S = 0.002  # an async save of a tiny model lasts tens of milliseconds: look often


class ChaosError(AssertionError):
    """A run of the harness did not behave as promised (the message says how)."""


@dataclasses.dataclass
class Kill:
    """One SIGKILL: the newest step logged when it landed, the newest durable checkpoint then,
    and whether a save was being written (its temporary folder left behind)."""

    at_step: int
    checkpoint: int
    during_save: bool

    @property
    def steps_lost(self) -> int:
        """Steps logged after the newest durable checkpoint: the resume computes them again."""
        return self.at_step - self.checkpoint


# --- watching a run ------------------------------------------------------------------------------

def last_step(workdir: pathlib.Path) -> int:
    """The step of metrics.jsonl's last complete line; 0 before the first."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    try:
        text = path.read_bytes()[-4096:].decode(errors="replace")
    except FileNotFoundError:
        return 0
    for line in reversed(text.splitlines()):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError):
            continue  # a line being written, or cut by the tail
    return 0


def saving(workdir: pathlib.Path) -> bool:
    """Whether an asynchronous save is being written (or a killed one left its folder)."""
    try:
        return any(TMP_MARK in name for name in os.listdir(pathlib.Path(workdir) / "checkpoints"))
    except FileNotFoundError:
        return False


def launch(command: Sequence[str], workdir: pathlib.Path, env: dict, log: pathlib.Path):
    """Start `command --workdir=WORKDIR`; stdout and stderr go to LOG.out and LOG.err."""
    out, err = open(f"{log}.out", "a"), open(f"{log}.err", "a")
    try:
        return subprocess.Popen([*command, f"--workdir={workdir}"], env=env, stdout=out,
                                stderr=err)
    finally:
        out.close()
        err.close()


def wait_until(proc, predicate, what: str, log: pathlib.Path, timeout: float) -> None:
    """Poll `predicate()` until it holds; ChaosError if the process ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise ChaosError(f"the run ended (exit {proc.returncode}) before {what}: "
                             f"{tail(f'{log}.err')}")
        if time.monotonic() > deadline:
            proc.kill()
            raise ChaosError(f"no {what} within {timeout:.0f} s")
        time.sleep(POLL_S)


def finish(proc, log: pathlib.Path, timeout: float) -> int:
    """Wait for the process; its exit code."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise ChaosError(f"the run did not end within {timeout:.0f} s: {tail(f'{log}.err')}")


def tail(path, lines: int = 5) -> str:
    text = pathlib.Path(path).read_text(errors="replace") if pathlib.Path(path).exists() else ""
    return " | ".join(text.strip().splitlines()[-lines:])


# --- the scenarios -------------------------------------------------------------------------------

def straight_run(command, workdir, env, *, timeout: float = 600) -> float:
    """An uninterrupted run to the end; its wall-clock seconds."""
    log, t0 = pathlib.Path(f"{workdir}-log"), time.monotonic()
    rc = finish(launch(command, workdir, env, log), log, timeout)
    if rc != 0:
        raise ChaosError(f"the run exited {rc}: {tail(f'{log}.err')}")
    return time.monotonic() - t0


def kill_plan(kills: int, num_steps: int, seed: int, during_save: int) -> list[tuple[int, bool]]:
    """(step to reach, whether to wait for a save then) for each kill: seeded, increasing."""
    rng = random.Random(seed)
    steps = sorted(rng.sample(range(2, num_steps - 1), kills))
    in_save = set(rng.sample(range(kills), min(during_save, kills)))
    return [(s, i in in_save) for i, s in enumerate(steps)]


def killed_run(command, workdir, env, *, kills: int, num_steps: int, seed: int = 0,
               during_save: int = 1, timeout: float = 600) -> list[Kill]:
    """Start the run, SIGKILL it at each planned moment and start it again; the last start runs
    to the end (ChaosError unless it exits 0). A kill 'during a save' waits for the planned
    step, then for a save's temporary folder, and kills at once."""
    workdir, log, done = pathlib.Path(workdir), pathlib.Path(f"{workdir}-log"), []
    for target, in_save in kill_plan(kills, num_steps, seed, during_save):
        # past the rows a killed run left: a resume rewrites them only once it has restored
        target = max(target, last_step(workdir) + 1)
        proc = launch(command, workdir, env, log)
        reached = lambda: last_step(workdir) >= target  # noqa: E731
        wait_until(proc, reached, f"step {target}", log, timeout)
        if in_save:
            wait_until(proc, lambda: saving(workdir), "an asynchronous save", log, timeout)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        checkpoint = ckpt_lib.latest_step(workdir / "checkpoints") or 0
        done.append(Kill(last_step(workdir), checkpoint, saving(workdir)))
    rc = finish(launch(command, workdir, env, log), log, timeout)
    if rc != 0:
        raise ChaosError(f"the resumed run exited {rc}: {tail(f'{log}.err')}")
    return done


def sigterm_run(command, workdir, env, *, at_step: int, timeout: float = 600) -> dict:
    """Start the run and send SIGTERM once step `at_step` is logged; it must exit 0 with the
    resume line. {'stopped_at': N, 'checkpoint': newest step saved}."""
    workdir, log = pathlib.Path(workdir), pathlib.Path(f"{workdir}-log")
    proc = launch(command, workdir, env, log)
    wait_until(proc, lambda: last_step(workdir) >= at_step, f"step {at_step}", log, timeout)
    proc.send_signal(signal.SIGTERM)
    rc = finish(proc, log, timeout)
    out = pathlib.Path(f"{log}.out").read_text()
    stopped = last_step(workdir)
    if rc != 0 or f"stopped at step {stopped}; run the same command to resume" not in out:
        raise ChaosError(f"SIGTERM: exit {rc}, no resume line for step {stopped}: "
                         f"{tail(f'{log}.err')}")
    return {"stopped_at": stopped, "checkpoint": ckpt_lib.latest_step(workdir / "checkpoints")}


def truncate_newest(workdir) -> int:
    """Cut every array file of the newest checkpoint to half its length; that step."""
    ckpts = pathlib.Path(workdir) / "checkpoints"
    step = ckpt_lib.latest_step(ckpts)
    for path in (ckpts / str(step) / "state").rglob("*"):
        if path.is_file() and path.parent.name == "d":  # OCDBT's data files
            with path.open("r+b") as f:
                f.truncate(path.stat().st_size // 2)
    return step


def failing_run(command, workdir, env, *, timeout: float = 600) -> dict:
    """A run expected to stop with an error: {'code', 'error' (stderr's error lines),
    'traceback' (whether one was printed)}."""
    log = pathlib.Path(f"{workdir}-log")
    err_file = pathlib.Path(f"{log}.err")
    before = err_file.stat().st_size if err_file.exists() else 0
    rc = finish(launch(command, workdir, env, log), log, timeout)
    err = err_file.read_bytes()[before:].decode(errors="replace")  # this run's lines only
    errors = [line for line in err.splitlines() if ": error: " in line]
    return {"code": rc, "error": errors, "traceback": "Traceback" in err}


# --- what the checkpoints hold -------------------------------------------------------------------

def saved_state(workdir, step: int | None = None) -> dict:
    """The TrainState pytree saved at `step` (the newest if None), as numpy arrays: readable
    whatever mesh saved it (an 8-device FSDP run's checkpoint in a 1-device process)."""
    ckpts = pathlib.Path(workdir).absolute() / "checkpoints"
    path = ckpts / str(ckpt_lib.latest_step(ckpts) if step is None else step) / "state"
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)  # orbax warns that the item has no step metadata file
    try:
        with ocp.PyTreeCheckpointer() as checkpointer:
            tree = checkpointer.metadata(path).item_metadata.tree
            as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
            return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
    finally:
        logging.set_verbosity(verbosity)


def _leaves(tree, prefix=""):
    if isinstance(tree, dict):
        for key in sorted(tree):
            yield from _leaves(tree[key], f"{prefix}/{key}")
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from _leaves(value, f"{prefix}/{i}")
    elif tree is not None:
        yield prefix, np.asarray(tree)


def differing(workdir_a, workdir_b) -> tuple[int, list[str]]:
    """(arrays compared, paths whose bytes differ) between the newest checkpoints' states."""
    a, b = dict(_leaves(saved_state(workdir_a))), dict(_leaves(saved_state(workdir_b)))
    if a.keys() != b.keys():
        return len(a), sorted(a.keys() ^ b.keys())
    return len(a), [k for k in a if a[k].dtype != b[k].dtype or a[k].tobytes() != b[k].tobytes()]


def non_finite(workdir) -> tuple[list[int], list[str]]:
    """(checkpoint steps read, 'step:path' of every float array holding a NaN or an inf)."""
    read = ckpt_lib.steps(pathlib.Path(workdir) / "checkpoints")
    bad = [f"{step}:{path}" for step in read for path, x in _leaves(saved_state(workdir, step))
           if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all()]
    return read, bad


def metrics_rows(workdir) -> list[dict]:
    """A run's metrics.jsonl rows."""
    return [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").open()
            if line.strip()]


def skipped_steps(workdir, column: str = "skipped_steps") -> list[int]:
    """The metrics.jsonl steps counted in `column` (skipped_steps, overflow_steps: summed per
    logged window)."""
    return [r["step"] for r in metrics_rows(workdir) if r.get(column)]


def float16_figures(workdir, float32_workdir) -> dict:
    """What a float16 run did with its loss scale: its skipped and overflow steps, the scale's
    range, its last step and train loss beside the float32 run's, non-finite checkpoint arrays."""
    rows, reference = metrics_rows(workdir), metrics_rows(float32_workdir)
    scales = [r["loss_scale"] for r in rows if "loss_scale" in r]
    read, bad = non_finite(workdir)
    return dict(skipped=skipped_steps(workdir), overflows=skipped_steps(workdir, "overflow_steps"),
                scales=(min(scales), max(scales), scales[-1]) if scales else None,
                last=rows[-1]["step"], loss=_last(rows, "train_loss"),
                float32_loss=_last(reference, "train_loss"), checkpoints=read, non_finite=bad)


def _last(rows: list[dict], column: str) -> float | None:
    values = [r[column] for r in rows if column in r]
    return values[-1] if values else None


def pytest_counts(stdout: str) -> dict:
    """{'passed': N, 'failed': M, ...} from pytest -q's summary line."""
    last = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|error|skipped)",
                                                         last)}
    return {"passed": counts.get("passed", 0), "failed": counts.get("failed", 0)
            + counts.get("error", 0), "summary": last.strip("= ")}


# --- docs/reliability.md -------------------------------------------------------------------------

# (what is guaranteed, the tests that prove it): docs/reliability.md's first table
GUARANTEES = [
    ('A run killed with SIGKILL at any moment, during an asynchronous save included, '
     'resumes with the same command and ends bitwise equal to an uninterrupted run '
     '(params, optimizer state, step, RNG; every logged loss). On one device and on an '
     '8-device FSDP mesh.',
     'tests/test_training.py::test_exact_resume_after_kill, '
     'tests/test_chaos.py::test_random_sigkills_resume_bitwise, the chaos run below'),
    ('A step whose loss or gradient norm is not finite leaves params and optimizer state '
     'bitwise as they were (every strategy: jit, FSDP, pmap, the CPU path, gradient '
     'accumulation), is counted as `skipped_steps`, and `train.max_consecutive_skips` '
     '(default 10) in a row stop the run with one error naming the step, the newest '
     'checkpoint and the likely causes. No checkpoint ever holds a non-finite value.',
     'tests/test_nonfinite.py::test_a_non_finite_step_leaves_params_and_optimizer_state_bitwise,'
     ' ::test_skipped_steps_are_summed_over_the_window_and_lr_follows_applied_updates, '
     '::test_a_huge_learning_rate_stops_the_run_and_no_checkpoint_holds_a_non_finite_value,'
     ' ::test_a_float16_run_skips_its_overflowing_steps_and_keeps_training, '
     '::test_resume_with_skipped_steps_is_bitwise; the chaos run (lr=1e30, float16)'),
    ('float16 compute scales its loss dynamically (NVIDIA AMP, jmp): a step whose scaled '
     'gradients overflow is skipped and halves `loss_scale` (from `optim.loss_scale`, 2^15, '
     'down to 1), not counted toward `train.max_consecutive_skips` while the scale can still '
     'halve; `optim.loss_scale_period` (2000) good steps in a row double it. `loss_scale` and '
     '`overflow_steps` are logged; the scale is checkpointed (resume stays bitwise); float32 '
     'and bfloat16 checkpoints are exactly as before, and float16 ones written before it '
     'restore.',
     'tests/test_loss_scale.py::test_a_real_float16_overflow_halves_the_scale_skips_and_keeps_'
     'training, ::test_an_overflowing_float16_step_is_skipped_and_halves_the_scale, '
     '::test_the_scale_halves_on_overflow_and_doubles_after_period_finite_steps, '
     '::test_a_float16_resume_is_bitwise, '
     '::test_a_float16_checkpoint_from_before_loss_scaling_restores_and_resumes, '
     '::test_a_resume_may_change_the_dtype_and_the_loss_scale_follows; the chaos run '
     '(float16)'),
    ('With `train.skip_spikes` (off by default), a step whose loss or gradient norm is '
     'above the mean + `train.spike_threshold` (6) standard deviations of the last '
     '`train.spike_window` (100) finite steps is skipped the same way, counted as '
     '`skipped_steps` and `spike_steps`, and counts toward `train.max_consecutive_skips`; '
     'its statistics are checkpointed (resume stays bitwise), and with it off checkpoints '
     'are exactly those written before it existed.',
     'tests/test_spikes.py::test_a_spike_step_is_skipped_bitwise_and_counted, '
     '::test_spike_statistics_are_the_last_windows_mean_and_sample_std, '
     '::test_a_checkpoint_from_before_skip_spikes_still_restores_and_the_stats_are_saved, '
     '::test_a_run_with_skip_spikes_logs_spikes_and_checkpoints_its_statistics'),
    ('SIGTERM or a first Ctrl-C finishes the step, saves it, waits for the save and exits'
     ' 0 with "stopped at step N; run the same command to resume"; a second Ctrl-C exits '
     'at once, the last checkpoint intact; several processes stop at the same step.',
     'tests/test_survive.py::test_sigterm_saves_the_step_and_stops, '
     '::test_command_line_sigterm_exits_0_with_the_resume_line, '
     '::test_second_ctrl_c_stops_at_once_and_keeps_the_last_checkpoint, '
     '::test_two_processes_stop_at_the_same_step_when_one_is_preempted; the chaos run '
     '(SIGTERM)'),
    ('A truncated, partial or unreadable newest checkpoint is named in one warning, moved'
     ' aside as `<step>.corrupt`, and the newest readable one restored; none readable is '
     'an error, never a fresh start over a run; leftovers of killed saves are cleaned; a '
     'half-written last line of metrics.jsonl does not stop a resume.',
     'tests/test_survive.py::test_truncated_newest_checkpoint_falls_back_and_resumes_bitwise,'
     ' ::test_no_readable_checkpoint_is_an_error_not_a_fresh_start; the chaos run '
     '(truncated)'),
    ('In a multi-process run, a checkpoint that one process cannot read stops every process '
     'at once, before anything trains (the processes agree on its config, data-iterator '
     'files and state folder before the restore), naming the checkpoint and the process; the '
     'same command run again resumes every process from the same older step.',
     'tests/test_survive.py::test_two_processes_stop_together_when_one_cannot_read_the_'
     'newest_checkpoint'),
    ('A train step too large for the devices\' memory (an accelerator\'s limit, or the '
     'host\'s available RAM and swap) is refused once compiled, before it runs: one line '
     'with XLA\'s plan for it and the fields that shrink it (a grad_accum that fits, remat, '
     'fsdp); nothing is trained or checkpointed.',
     'tests/test_memory.py::test_training_stops_before_the_first_step_when_it_cannot_fit, '
     '::test_a_step_that_fits_passes_and_one_that_does_not_names_the_fixes; '
     'tests/test_cli_errors.py (train:step-larger-than-memory)'),
    ('Raising `train.num_steps` of a finished run keeps its learning-rate schedule, and '
     'says so.',
     'tests/test_survive.py::test_raised_num_steps_keeps_the_schedule'),
    ('A full disk (ENOSPC) at a save, or an unwritable workdir, is one clear error; the '
     'earlier checkpoints stay intact.',
     'tests/test_survive.py::test_full_disk_at_a_save_is_a_clear_error_and_keeps_the_checkpoints,'
     ' ::test_unwritable_workdir_fails_before_the_data'),
    ('Every entry point answers bad input with one line naming cause and fix, exit non-'
     'zero, no traceback (GPTJAX_DEBUG=1 shows it), nothing in an existing workdir '
     'changed; lr=nan/inf refused; loading never executes code (safetensors and orbax '
     'only; a pytorch_model.bin-only folder is a clear error).',
     'tests/test_cli_errors.py::test_bad_input_gets_one_clear_line (the table), '
     '::test_real_process_exit_code_and_one_line, ::test_debug_env_shows_the_traceback, '
     '::test_empty_text_file_leaves_no_dataset_behind; '
     'tests/test_config.py::test_float_fields_refuse_non_finite_values; '
     'tests/test_interop.py::test_missing_weights'),
]


def _kills_rows(name: str, phase: dict) -> list[str]:
    kills = phase["kills"]
    lost = [k.steps_lost for k in kills]
    at = ", ".join(f"{k.at_step}{'*' if k.during_save else ''}" for k in kills)
    return [f"| {name} | {len(kills)} survived | {at} | {', '.join(map(str, lost))} "
            f"(mean {sum(lost) / max(len(lost), 1):.1f}) | {phase['arrays']} arrays bitwise equal "
            f"| {phase['s']:.0f} s |"]


def report(f: dict, tiny: Sequence[str], float16: Sequence[str]) -> str:
    """docs/reliability.md from the chaos run's figures (experiments/chaos.py)."""
    bad = f.get("bad")
    bad_line = (f"- Bad inputs: {bad['passed'] + bad['failed']} cases of "
                f"tests/test_cli_errors.py's table tried, {bad['passed']} answered with one "
                f"clear line (`{bad['summary']}`)." if bad
                else "- Bad inputs: not run (--nobad_inputs).")
    lines = [
        "# Reliability: long runs survive", "",
        "What a gptjax run guarantees when it meets kills, preemption, corrupt checkpoints, "
        "non-finite steps and bad input, and how each guarantee is tested. The figures below "
        "are written by `experiments/chaos.py` (the harness: gptjax/bench/chaos.py; its short "
        "form runs in CI as tests/test_chaos.py).", "",
        "## What is guaranteed", "", "| Guarantee | Tested by |", "|---|---|",
        *(f"| {g} | {tests} |" for g, tests in GUARANTEES), "",
        "## The chaos run", "",
        f"Real `python -m experiments.train` processes on configs/quickstart.py made tiny "
        f"(`{' '.join(tiny)}`), a checkpoint every few steps (asynchronous saves), killed with "
        "SIGKILL at seeded random steps, one kill waiting for an asynchronous save's temporary "
        "folder (`<step>.orbax-checkpoint-tmp*`) and landing while it is written; each time "
        "resumed with the same command. Steps lost per kill: the steps logged after the newest "
        "durable checkpoint, which the resume computes again. `*`: the kill left an unfinished "
        "save behind.", "",
        "| Mesh | Kills | Killed at step | Steps lost per kill | End vs uninterrupted run | "
        "Time |", "|---|---|---|---|---|---|",
        *_kills_rows("1 device", f["single"]), *_kills_rows("8-device FSDP", f["fsdp"]), "",
        f"- SIGTERM at step {f['stopped_at']}: exit 0 with the resume line, checkpoint "
        f"{f['checkpoint']} saved; resumed: {f['sigterm_arrays']} arrays bitwise equal.",
        f"- Newest checkpoint ({f['truncated']}) truncated: one warning, the previous one "
        f"restored; the run ends with {f['truncated_arrays']} arrays bitwise equal.",
        f"- `--config.optim.lr=1e30`: exit non-zero with one line, `{f['lr_error'][:160]}...`; "
        f"checkpoints {f['lr_checkpoints']} read, no non-finite value in any.",
        _float16_line(f, float16),
        bad_line, "",
        f"Machine: {f['cpu']}, {os.cpu_count()} cores, CPU only; {f['date']}; the whole run "
        f"{f['seconds'] / 60:.1f} min.", "",
        f"    {f['command']}", ""]
    return "\n".join(lines)


def _float16_line(f: dict, float16: Sequence[str]) -> str:
    g = f["float16"]
    low, high, end = (_power_of_two(x) for x in g["scales"])
    return (f"- float16 (`{' '.join(float16)}`), nothing injected: the scaled gradients of "
            f"{len(g['overflows'])} steps overflowed (steps {_ranges(g['overflows'])}); each "
            f"was skipped and halved the loss scale (it ranged {low} to {high} and ended at "
            f"{end}), none counted toward `train.max_consecutive_skips` (10), and the run "
            f"trained on to step {g['last']} (exit 0): final train loss {g['loss']:.4f}, "
            f"float32's {g['float32_loss']:.4f}; checkpoints {g['checkpoints']} hold no "
            "non-finite value. Before dynamic loss scaling a real float16 overflow never "
            "recovered: the skipped step kept the weights that overflowed, so every later batch "
            "overflowed too. What scaling cannot fix still stops: at `--config.optim.lr=0.3` "
            "the forward pass overflows (a NaN loss from step 46), the scale falls to 1 in 14 "
            "uncounted skips (steps 46-59), and 10 more stop the run at step 69 with the error "
            "naming float16.")


def _power_of_two(x: float) -> str:
    return f"2^{math.log2(x):.0f}" if x > 0 and math.log2(x).is_integer() else f"{x:g}"


def _ranges(steps: Sequence[int]) -> str:
    """'1-13, 64, 68' from [1, 2, ..., 13, 64, 68]."""
    runs: list[list[int]] = []
    for s in steps:
        if runs and s == runs[-1][-1] + 1:
            runs[-1].append(s)
        else:
            runs.append([s])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)
