r"""Packed fine-tuning rows (data.pack=True) against one example per row, run here, now.

    python -m experiments.bench_packing --steps=50

The task: the dialogues of --text (tinyshakespeare; each speech and the reply to it, pairs of at
most --max_chars characters, as experiments.play_dialogues makes them), written to --workdir.
Both layouts train the same small char-level model for --steps steps of --batch_size rows of
--seq_len tokens (gptjax/bench/packing.py). Writes --out (markdown) and the same numbers as JSON
beside it.
"""

import json
import os
import pathlib
import sys

from absl import app, flags

from experiments import cli
from gptjax.bench import packing as bench
from gptjax.bench.host import cpu_model

ROOT = pathlib.Path(__file__).resolve().parents[1]
FLAGS = flags.FLAGS
flags.DEFINE_integer("steps", 50, "Timed train steps of each layout.")
flags.DEFINE_integer("seq_len", 256, "Tokens (characters) per row.")
flags.DEFINE_integer("batch_size", 16, "Rows per step.")
flags.DEFINE_integer("max_chars", 200, "Keep dialogue pairs of at most this many characters.")
flags.DEFINE_string("text", str(ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"),
                    "The play script the dialogues come from.")
flags.DEFINE_string("workdir", "/tmp/gptjax-bench-packing", "Where the task file goes.")
flags.DEFINE_string("out", "docs/bench_packing.md", "The markdown report; JSON beside it.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    check_flags()
    out = cli.output_path("out")
    machine = f"{cpu_model()}, {os.cpu_count()} cores"
    print(f"machine: {machine}")
    task = bench.make_dialogues(pathlib.Path(FLAGS.text), FLAGS.max_chars,
                                pathlib.Path(FLAGS.workdir) / f"dialogues-{FLAGS.max_chars}.jsonl")
    rows = []
    for pack in (False, True):
        cfg = bench.config(str(task), pack=pack, seq_len=FLAGS.seq_len,
                           batch_size=FLAGS.batch_size, steps=FLAGS.steps)
        rows.append(bench.measure(cfg, FLAGS.steps))
        print(json.dumps(rows[-1]))
    command = "python -m experiments.bench_packing " + " ".join(sys.argv[1:])
    out.write_text(bench.report(rows, machine, command.strip()))
    out.with_suffix(".json").write_text(json.dumps({"machine": machine, "command": command,
                                                    "rows": rows}, indent=1))
    print(out.read_text())


def check_flags() -> None:
    """Bad sizes or a missing text fail before anything is built."""
    for name in ("steps", "seq_len", "batch_size", "max_chars"):
        if getattr(FLAGS, name) <= 0:
            raise app.UsageError(f"--{name}={getattr(FLAGS, name)}: give a positive integer")
    if not pathlib.Path(FLAGS.text).is_file():
        raise FileNotFoundError(f"--text={FLAGS.text} is not a file; give the play script "
                                "(tinyshakespeare's layout) the dialogues come from")


if __name__ == "__main__":
    cli.run(main)
