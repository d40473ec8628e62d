"""Training throughput of a recipe against nanoGPT's, on this machine.

    python -m experiments.bench_train --config=configs/shakespeare_char_cpu.py \
        --config.data.text_file=../shared/data/tinyshakespeare.txt --full

Reports the jitted step alone, the real loop's steady-state tokens/s, compile time, and with
--full the wall time of the whole recipe and when it first reaches --target val loss. Writes
--out (markdown) and the same numbers as JSON beside it.
"""

import sys
import tempfile

from absl import app, flags
from ml_collections import config_flags

from gptjax.bench import train as bench
from gptjax.config import Config

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/shakespeare_char_cpu.py", "The recipe.")
flags.DEFINE_integer("steps", 300, "Steady-state steps for the loop measurement.")
flags.DEFINE_integer("step_repeats", 3, "Timed runs of --steps//3 bare steps (median).")
flags.DEFINE_bool("full", False, "Also run the whole recipe and time it to --target.")
flags.DEFINE_float("target", 1.89, "Validation loss for the time-to-loss measurement.")
flags.DEFINE_float("baseline_tokens_per_sec", 17_700, "nanoGPT's tokens/s on this machine.")
flags.DEFINE_float("baseline_wall", 95, "nanoGPT's wall seconds for the whole recipe.")
flags.DEFINE_string("out", "docs/bench_train.md", "Markdown report (JSON beside it).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    loop = bench.loop_throughput(FLAGS.config, steps=FLAGS.steps)  # first: it sets up JAX
    results = {"machine": bench.machine(), "loop": loop}
    print(f"loop: {loop['tokens_per_sec']:,.0f} tokens/s, {loop['ms_per_step']:.1f} ms/step")
    from gptjax.data import build_data

    cfg = Config.from_dict(FLAGS.config)
    from gptjax.training.loop import resolve_vocab

    cfg = resolve_vocab(cfg, build_data(cfg).vocab_size)
    step = bench.step_throughput(cfg, steps=max(FLAGS.steps // 3, 10),
                                 repeats=FLAGS.step_repeats)
    results["step"] = step
    print(f"step: {step['tokens_per_sec']:,.0f} tokens/s, {step['ms_per_step']:.1f} ms/step, "
          f"compile {step['first_step_seconds']:.1f} s")
    if FLAGS.full:
        overrides = [a for a in sys.argv[1:] if a.startswith("--config.")]
        with tempfile.TemporaryDirectory() as tmp:
            results["full"] = bench.time_to_loss(config_flags.get_config_filename(
                FLAGS["config"]), overrides, f"{tmp}/run", target=FLAGS.target)
        print(f"full: {results['full']}")
    results["machine"]["load_average_after"] = bench.machine()["load_average"]
    path = bench.write_report(results, FLAGS.out,
                              command="python -m experiments.bench_train " + " ".join(sys.argv[1:]),
                              baseline_tokens_per_sec=FLAGS.baseline_tokens_per_sec,
                              baseline_wall=FLAGS.baseline_wall)
    print(f"report: {path}")


if __name__ == "__main__":
    app.run(main)
