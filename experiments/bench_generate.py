"""Generation tokens/s: gptjax vs Hugging Face transformers on CPU, GPT-2 124M shape.

    python -m experiments.bench_generate --out=docs/bench_generate.md

Greedy (batch 1, 200 new tokens) and beam search (5 beams, 50 new tokens), compile time
reported separately; transformers is measured too when it is installed. Writes --out (markdown)
and the same numbers as JSON beside it.
"""

import sys

from absl import app, flags

from experiments import cli
from gptjax.bench import generate as bench

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "A Hugging Face GPT-2 folder to load in both libraries; "
                    "default: random weights of GPT-2 124M's shape.")
flags.DEFINE_integer("repeats", 3, "Timed runs per case and library (median reported).",
                     lower_bound=1)
flags.DEFINE_bool("hf", True, "Also measure transformers (skipped when it is not installed).")
flags.DEFINE_string("out", "docs/bench_generate.md", "Markdown report (JSON beside it).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.output_path("out")
    results = bench.run(bench.default_prompt(), checkpoint=FLAGS.checkpoint,
                        repeats=FLAGS.repeats, with_hf=FLAGS.hf)
    command = " ".join(["python -m experiments.bench_generate", *sys.argv[1:]])
    text = bench.write_report(results, FLAGS.out, command=command)
    print(text)


if __name__ == "__main__":
    cli.run(main)
