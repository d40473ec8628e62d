"""Attention kernels x sequence lengths x head layouts: time, compile time, planned memory.

    python -m experiments.bench_attention --outdir=docs/bench_attention
    python -m experiments.bench_attention --kernels=xla,blockwise --lengths=1024,4096 --layouts=mha
    python -m experiments.bench_attention --dtype=bfloat16 --peak_tflops=989 --outdir=DIR  # a GPU
"""

import sys

from absl import app, flags

from experiments import cli
from gptjax.bench import attention
from gptjax.model import kernels

FLAGS = flags.FLAGS
flags.DEFINE_list("kernels", None, "Kernels to measure (default: every registered kernel).")
flags.DEFINE_list("lengths", ["256", "1024", "4096", "8192", "16384"], "Sequence lengths.")
flags.DEFINE_list("layouts", ["mha", "gqa", "mqa"], "Head layouts: mha, gqa (4 per K/V), mqa.")
flags.DEFINE_list("passes", ["fwd", "fwd+bwd"], "Which passes to time.")
flags.DEFINE_integer("heads", 12, "Query heads.", lower_bound=1)
flags.DEFINE_integer("head_dim", 64, "Dimension per head.", lower_bound=1)
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"],
                  "Compute dtype of q, k, v (cudnn needs bfloat16 or float16).")
flags.DEFINE_float("peak_tflops", None, "The chip's peak TFLOP/s in --dtype (e.g. 989 for an "
                   "H100/H200's dense bf16), to report each case's share of it.")
flags.DEFINE_integer("repeats", 3, "Timed runs per case at least (median reported), after one "
                     "warm-up.", lower_bound=1)
flags.DEFINE_float("min_seconds", 1.0, "Keep timing a case until its runs add up to this.")
flags.DEFINE_string("outdir", "docs/bench_attention", "Where the CSV, table and plots go.")


def main(argv):
    del argv
    names = FLAGS.kernels or list(kernels.KERNELS)
    unknown = [n for n in names if n not in kernels.KERNELS]
    if unknown:
        raise app.UsageError(f"unknown kernels {unknown}; registered: {sorted(kernels.KERNELS)}")
    for name in FLAGS.kernels or []:  # asked for by name: one this machine cannot run is an error
        try:
            kernels.check_available(name, dtype=FLAGS.dtype)
        except ValueError as e:
            raise app.UsageError(f"--kernels={name}: {e}") from None
    bad = [x for x in FLAGS.layouts if x not in attention.LAYOUTS]
    if bad:
        raise app.UsageError(f"unknown layouts {bad}; choose from {list(attention.LAYOUTS)}")
    if not all(n.isdigit() and int(n) > 0 for n in FLAGS.lengths):
        raise app.UsageError(f"--lengths={','.join(FLAGS.lengths)}: give positive integers")
    bad = [p for p in FLAGS.passes if p not in ("fwd", "fwd+bwd")]
    if bad:
        raise app.UsageError(f"unknown passes {bad}; choose from ['fwd', 'fwd+bwd']")
    if FLAGS.peak_tflops is not None and FLAGS.peak_tflops <= 0:
        raise app.UsageError(f"--peak_tflops must be positive, got {FLAGS.peak_tflops}")
    cli.output_path("outdir", folder=True)
    print(attention.header())
    shape = dict(heads=FLAGS.heads, head_dim=FLAGS.head_dim, dtype=FLAGS.dtype)
    cases = attention.run(names, [int(n) for n in FLAGS.lengths], FLAGS.layouts, FLAGS.passes,
                          repeats=FLAGS.repeats, min_seconds=FLAGS.min_seconds, **shape)
    report = attention.write_report(cases, FLAGS.outdir, peak_tflops=FLAGS.peak_tflops,
                                    command="python -m experiments.bench_attention "
                                    + " ".join(sys.argv[1:]), **shape)
    print(f"wrote {report}")


if __name__ == "__main__":
    cli.run(main)
