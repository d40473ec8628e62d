r"""The chaos run, long form: real training processes killed, stopped and corrupted, then resumed,
each ending bitwise equal to an uninterrupted run; writes docs/reliability.md with the figures.

    python -m experiments.chaos                      # about 10 minutes on 2 busy cores
    python -m experiments.chaos --kills=10 --steps=400 --out=/tmp/chaos

Every run is `python -m experiments.train --config=configs/quickstart.py` made tiny (TINY), with
a checkpoint every few steps (asynchronous saves) and a line of metrics.jsonl per step. The short
form is tests/test_chaos.py; the harness is gptjax/bench/chaos.py.
"""

import datetime
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags, logging

from experiments import cli
from gptjax.bench import chaos
from gptjax.bench.host import cpu_model

FLAGS = flags.FLAGS
flags.DEFINE_integer("steps", 200, "Training steps of each run.")
flags.DEFINE_integer("kills", 5, "SIGKILLs of the single-device run (one during a save).")
flags.DEFINE_integer("fsdp_steps", 100, "Training steps of the 8-device FSDP runs.")
flags.DEFINE_integer("fsdp_kills", 5, "SIGKILLs of the 8-device FSDP run (one during a save).")
flags.DEFINE_integer("checkpoint_every", 5, "Steps between (asynchronous) checkpoints.")
flags.DEFINE_integer("seed", 0, "Seeds the moments of the kills.")
flags.DEFINE_string("out", None, "Folder for the runs (default: a new temporary folder).")
flags.DEFINE_string("report", "docs/reliability.md", "Where to write the report ('' for none).")
flags.DEFINE_bool("bad_inputs", True, "Also run tests/test_cli_errors.py's table of bad inputs.")

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--config.model.num_layers=2", "--config.model.d_model=64", "--config.model.num_heads=2",
        "--config.model.dropout=0.1",  # the per-step dropout keys must resume exactly too
        "--config.train.log_every=1", "--config.train.eval_steps=2",
        "--config.train.sample_tokens=0", "--config.mesh.cpu_devices=0"]
# float16 with dynamic loss scaling (gptjax.training.loss_scale), nothing injected. From the
# default 2**15 this model never overflows (the scale doubled to 2**19 in 200 steps at period 50,
# losses as float32's); from 2**30 the first steps' scaled gradients overflow float16, each is
# skipped and halves the scale, and the run trains on. A short loss_scale_period doubles the
# scale every 25 good steps, so it climbs back to float16's ceiling mid-run and is halved again.
FLOAT16 = ["--config.model.dtype=float16", "--config.optim.loss_scale=1073741824",
           "--config.optim.loss_scale_period=25"]


def command(out: pathlib.Path, steps: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "experiments.train", "--config=configs/quickstart.py", *TINY,
            f"--config.train.num_steps={steps}", f"--config.train.eval_every={steps}",
            f"--config.train.checkpoint_every={FLAGS.checkpoint_every}",
            f"--config.data.data_dir={out / 'data'}", *extra]


def environment(out: pathlib.Path, devices: int) -> dict:
    """The children's environment: CPU, `devices` host devices, one shared compilation cache."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(out / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1", PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)
    if devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def bitwise(a: pathlib.Path, b: pathlib.Path, what: str) -> int:
    compared, diff = chaos.differing(a, b)
    if diff:
        raise chaos.ChaosError(f"{what}: {len(diff)} of {compared} arrays differ: {diff[:3]}")
    return compared


def kills_phase(out, name, steps, kills, env, *extra) -> dict:
    """A straight run and one killed `kills` times, compared bitwise."""
    cmd = command(out, steps, *extra)
    t0 = time.monotonic()
    straight_s = chaos.straight_run(cmd, out / f"{name}_straight", env)
    done = chaos.killed_run(cmd, out / f"{name}_killed", env, kills=kills, num_steps=steps,
                            seed=FLAGS.seed)
    arrays = bitwise(out / f"{name}_straight", out / f"{name}_killed", name)
    logging.info("%s: %d kills survived, %d arrays bitwise equal", name, len(done), arrays)
    return dict(kills=done, arrays=arrays, straight_s=straight_s, s=time.monotonic() - t0)


def sigterm_phase(out, env) -> dict:
    """SIGTERM mid-run, resumed; a copy with its newest checkpoint truncated, resumed."""
    cmd = command(out, FLAGS.steps)
    work, cut = out / "sigterm", out / "truncated"
    stop = chaos.sigterm_run(cmd, work, env, at_step=FLAGS.steps // 2 + 1)
    shutil.copytree(work, cut)
    truncated = chaos.truncate_newest(cut)
    chaos.straight_run(cmd, work, env)
    chaos.straight_run(cmd, cut, env)
    warned = "is unreadable" in pathlib.Path(f"{cut}-log.err").read_text()
    if not warned:
        raise chaos.ChaosError("the truncated checkpoint was not reported")
    straight = out / "single_straight"
    return dict(**stop, truncated=truncated, warned=warned,
                sigterm_arrays=bitwise(straight, work, "SIGTERM"),
                truncated_arrays=bitwise(straight, cut, "truncated"))


def nonfinite_phase(out, env) -> dict:
    """lr=1e30 must stop with one error line and no non-finite checkpoint."""
    huge = chaos.failing_run(command(out, FLAGS.steps, "--config.optim.lr=1e30"),
                             out / "lr1e30", env)
    read, bad = chaos.non_finite(out / "lr1e30")
    if huge["code"] == 0 or len(huge["error"]) != 1 or huge["traceback"] or bad:
        raise chaos.ChaosError(f"lr=1e30: {huge}, non-finite arrays {bad[:3]}")
    return dict(lr_error=huge["error"][0], lr_checkpoints=read)


def float16_phase(out, env, float32_run: pathlib.Path) -> dict:
    """float16 (see FLOAT16) must overflow for real, skip exactly the steps whose overflow
    halved the loss scale, train on to its last step with finite checkpoints, and end near
    `float32_run`'s loss (the same command in float32)."""
    run = chaos.failing_run(command(out, FLAGS.steps, *FLOAT16), out / "float16", env)
    figures = chaos.float16_figures(out / "float16", float32_run)
    if (run["code"] != 0 or figures["last"] != FLAGS.steps or not figures["overflows"]
            or figures["skipped"] != figures["overflows"] or figures["non_finite"]):
        raise chaos.ChaosError(f"float16: {run}, {figures}")
    return dict(float16=figures)


def bad_inputs_phase(out: pathlib.Path) -> dict:
    """tests/test_cli_errors.py's table, run: how many cases, how many passed."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_cli_errors.py", "-k", "test_bad_input_gets_one_clear_line"],
                          cwd=ROOT, capture_output=True, text=True, env=environment(out, 8))
    return chaos.pytest_counts(proc.stdout)


def check_flags() -> None:
    """Bad sizes fail here, in one line, before any training process starts."""
    for name in ("steps", "fsdp_steps", "checkpoint_every"):
        if getattr(FLAGS, name) <= 0:
            raise app.UsageError(f"--{name}={getattr(FLAGS, name)} must be positive")
    for name in ("kills", "fsdp_kills"):
        if getattr(FLAGS, name) < 1:
            raise app.UsageError(f"--{name}={getattr(FLAGS, name)} must be at least 1 (one "
                                 "kill lands during a save)")
    shortest = min(FLAGS.steps, FLAGS.fsdp_steps)
    if FLAGS.checkpoint_every * 2 > shortest:
        raise app.UsageError(f"--checkpoint_every={FLAGS.checkpoint_every} leaves fewer than two "
                             f"checkpoints in a {shortest}-step run; lower it or raise --steps / "
                             "--fsdp_steps")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    check_flags()
    report = cli.output_path("report")  # before the minutes of runs it reports
    out = pathlib.Path(FLAGS.out or tempfile.mkdtemp(prefix="gptjax-chaos-")).absolute()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    single = kills_phase(out, "single", FLAGS.steps, FLAGS.kills, environment(out, 1))
    fsdp = kills_phase(out, "fsdp", FLAGS.fsdp_steps, FLAGS.fsdp_kills, environment(out, 8),
                       "--config.mesh.data=1", "--config.mesh.fsdp=8")
    figures = dict(single=single, fsdp=fsdp, **sigterm_phase(out, environment(out, 1)),
                   **nonfinite_phase(out, environment(out, 1)),
                   **float16_phase(out, environment(out, 1), out / "single_straight"),
                   bad=bad_inputs_phase(out) if FLAGS.bad_inputs else None,
                   seconds=time.monotonic() - t0, cpu=cpu_model(),
                   date=datetime.date.today().isoformat(),
                   command=" ".join(["python -m experiments.chaos", *sys.argv[1:]]))
    text = chaos.report(figures, TINY, FLOAT16)
    print(text)
    if report:
        report.write_text(text)


if __name__ == "__main__":
    cli.run(main)
