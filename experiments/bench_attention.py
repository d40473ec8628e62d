"""Attention kernels x sequence lengths x head layouts: time, compile time, planned memory.

    python -m experiments.bench_attention --outdir=docs/bench_attention
    python -m experiments.bench_attention --kernels=xla,blockwise --lengths=1024,4096 --layouts=mha
"""

import sys

from absl import app, flags

from gptjax.bench import attention
from gptjax.model import kernels

FLAGS = flags.FLAGS
flags.DEFINE_list("kernels", None, "Kernels to measure (default: every registered kernel).")
flags.DEFINE_list("lengths", ["256", "1024", "4096", "8192", "16384"], "Sequence lengths.")
flags.DEFINE_list("layouts", ["mha", "gqa", "mqa"], "Head layouts: mha, gqa (4 per K/V), mqa.")
flags.DEFINE_list("passes", ["fwd", "fwd+bwd"], "Which passes to time.")
flags.DEFINE_integer("heads", 12, "Query heads.")
flags.DEFINE_integer("head_dim", 64, "Dimension per head.")
flags.DEFINE_integer("repeats", 3, "Timed runs per case at least (median reported), after one "
                     "warm-up.")
flags.DEFINE_float("min_seconds", 1.0, "Keep timing a case until its runs add up to this.")
flags.DEFINE_string("outdir", "docs/bench_attention", "Where the CSV, table and plots go.")


def main(argv):
    del argv
    names = FLAGS.kernels or list(kernels.KERNELS)
    unknown = [n for n in names if n not in kernels.KERNELS]
    if unknown:
        raise app.UsageError(f"unknown kernels {unknown}; registered: {sorted(kernels.KERNELS)}")
    bad = [x for x in FLAGS.layouts if x not in attention.LAYOUTS]
    if bad:
        raise app.UsageError(f"unknown layouts {bad}; choose from {list(attention.LAYOUTS)}")
    print("| kernel | heads | pass | seq_len | status | time (ms) | compile (s) | memory (MiB) "
          "| TFLOP/s | note |")
    cases = attention.run(names, [int(n) for n in FLAGS.lengths], FLAGS.layouts, FLAGS.passes,
                          heads=FLAGS.heads, head_dim=FLAGS.head_dim, repeats=FLAGS.repeats,
                          min_seconds=FLAGS.min_seconds)
    report = attention.write_report(cases, FLAGS.outdir,
                                    command="python -m experiments.bench_attention "
                                    + " ".join(sys.argv[1:]))
    print(f"wrote {report}")


if __name__ == "__main__":
    app.run(main)
