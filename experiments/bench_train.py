r"""Training throughput of a recipe against nanoGPT's, on this machine.

    python -m experiments.bench_train --config=configs/shakespeare_char_cpu.py \
        --config.data.text_file=../shared/data/tinyshakespeare.txt --full

Reports the jitted step alone, the real loop's steady-state tokens/s, compile time, and with
--full the wall time of the whole recipe and when it first reaches --target val loss. Every
measurement runs in a fresh process, --rounds times (median and range reported): on this
project's 2-core VM one process's figures move by up to 25% between runs, and a measurement made
in a process that has already trained was the slow one more often than not. Writes --out
(markdown) and the same numbers as JSON beside it.
"""

import json
import os
import subprocess
import sys
import tempfile

from absl import app, flags
from ml_collections import config_flags

from gptjax.bench import train as bench

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/shakespeare_char_cpu.py", "The recipe.")
flags.DEFINE_integer("steps", 600, "Steps for the loop measurement: the median over its 50-step "
                     "windows, the first (warm-up) left out.")
flags.DEFINE_integer("step_repeats", 3, "Timed runs of --steps//3 bare steps (median).")
flags.DEFINE_integer("rounds", 3, "Fresh-process repeats of every measurement.")
flags.DEFINE_bool("full", False, "Also run the whole recipe and time it to --target.")
flags.DEFINE_float("target", 1.89, "Validation loss for the time-to-loss measurement.")
flags.DEFINE_float("baseline_tokens_per_sec", 17_700, "nanoGPT's tokens/s on this machine.")
flags.DEFINE_float("baseline_wall", 95, "nanoGPT's wall seconds for the whole recipe.")
flags.DEFINE_string("out", "docs/bench_train.md", "Markdown report (JSON beside it).")
flags.DEFINE_enum("phase", None, ["loop", "step"], "Internal: run one measurement in this "
                  "process and write it to --phase_out.")
flags.DEFINE_string("phase_out", None, "Internal: where --phase writes its JSON.")


def run_phase(name: str, out: str) -> None:
    """One measurement in this (fresh) process."""
    if name == "loop":
        result = bench.loop_throughput(FLAGS.config, steps=FLAGS.steps)
    else:
        from gptjax.config import Config
        from gptjax.training.loop import set_up

        cfg, _ = set_up(Config.from_dict(FLAGS.config))  # the loop's own start-up
        result = bench.step_throughput(cfg, steps=max(FLAGS.steps // 3, 10),
                                       repeats=FLAGS.step_repeats)
    result["machine"] = bench.machine()
    with open(out, "w") as f:
        json.dump(result, f)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.phase:
        return run_phase(FLAGS.phase, FLAGS.phase_out)
    config_args = [a for a in sys.argv[1:] if a.startswith("--config")]
    load_before = os.getloadavg()  # what else was running when the benchmark started
    rounds = []
    for i in range(FLAGS.rounds):
        r = {}
        with tempfile.TemporaryDirectory() as tmp:
            if FLAGS.full:
                overrides = [a for a in config_args if a.startswith("--config.")]
                r["full"] = bench.time_to_loss(config_flags.get_config_filename(FLAGS["config"]),
                                               overrides, f"{tmp}/run", target=FLAGS.target)
            for phase in ("loop", "step"):
                out = f"{tmp}/{phase}.json"
                subprocess.run([sys.executable, "-m", "experiments.bench_train", *config_args,
                                f"--steps={FLAGS.steps}", f"--step_repeats={FLAGS.step_repeats}",
                                f"--phase={phase}", f"--phase_out={out}"], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                with open(out) as f:
                    r[phase] = json.load(f)
        rounds.append(r)
        print(f"round {i + 1}/{FLAGS.rounds}: " + ", ".join(
            f"{k} {v['tokens_per_sec']:,.0f} tok/s" for k, v in r.items() if k != "full")
            + (f", full {r['full']['wall_seconds']:.0f} s" if "full" in r else ""))
    results = {"machine": {**rounds[-1]["loop"]["machine"], "load_average": load_before,
                           "load_average_after": os.getloadavg()}, "rounds": rounds}
    path = bench.write_report(results, FLAGS.out,
                              command="python -m experiments.bench_train " + " ".join(sys.argv[1:]),
                              baseline_tokens_per_sec=FLAGS.baseline_tokens_per_sec,
                              baseline_wall=FLAGS.baseline_wall)
    print(open(path).read())


if __name__ == "__main__":
    app.run(main)
