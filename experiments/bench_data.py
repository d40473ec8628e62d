r"""Data benchmarks, side by side with their peers, run here, now.

    python -m experiments.bench_data --sections=tokenize --corpus_mb=256,2048

tokenize: prepare_data's throughput (GPT-2 BPE, tokens/s) and peak memory against build-nanogpt's
fineweb.py way (tiktoken, a multiprocessing Pool, uint16 shards) on the same corpus
(../shared/data/tinyshakespeare.txt cut into documents of a few KB, repeated to each
--corpus_mb), the same --num_workers. The two tools run one after the other, each in a fresh
process.

loader: tokens/s that the training iterator alone (dataset='tokens', seq_len 1024, batch 16)
delivers from the last corpus's prepared GPT-2 shards (prepared first if the tokenize section did
not run), with and without document segment ids. Writes --out (markdown) and the same numbers
as JSON beside it.
"""

import json
import os
import pathlib

from absl import app, flags

from experiments import cli
from gptjax.bench import data as bench
from gptjax.bench.host import cpu_model

ROOT = pathlib.Path(__file__).resolve().parents[1]
FLAGS = flags.FLAGS
flags.DEFINE_list("sections", ["tokenize", "loader"], "Which benchmarks: tokenize, loader.")
flags.DEFINE_list("corpus_mb", ["256", "2048"], "Corpus sizes in MiB, one run of each tool each.")
flags.DEFINE_integer("num_workers", os.cpu_count(), "Tokenizer processes, both tools.",
                     lower_bound=1)
flags.DEFINE_string("text", str(ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"),
                    "The text repeated into the corpus.")
flags.DEFINE_string("workdir", "/tmp/gptjax-bench-data", "Corpora and shards (large).")
flags.DEFINE_string("out", "docs/bench_data.md", "The markdown report; JSON beside it.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    check_flags()
    out = cli.output_path("out")
    workdir = pathlib.Path(FLAGS.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    if "tokenize" in FLAGS.sections:
        for mb in map(int, FLAGS.corpus_mb):
            corpus = bench.make_corpus(pathlib.Path(FLAGS.text), mb,
                                       workdir / f"corpus-{mb}MB.jsonl")
            rows += bench.bench_tokenize(corpus, FLAGS.num_workers, workdir, ROOT)
            print(json.dumps(rows[-2:]))
    loader = []
    if "loader" in FLAGS.sections:
        prepared = workdir / "prepared"
        if not (prepared / "manifest.json").is_file():
            corpus = bench.make_corpus(pathlib.Path(FLAGS.text), int(FLAGS.corpus_mb[-1]),
                                       workdir / f"corpus-{FLAGS.corpus_mb[-1]}MB.jsonl")
            bench.bench_tokenize(corpus, FLAGS.num_workers, workdir, ROOT)
        loader = bench.bench_loader(prepared)
        print(json.dumps(loader))
    machine = f"{cpu_model()}, {os.cpu_count()} cores"
    out.write_text(report(rows, machine) + loader_report(loader))
    out.with_suffix(".json").write_text(json.dumps({"machine": machine, "rows": rows,
                                                    "loader": loader}, indent=1))
    print(out.read_text())


def check_flags() -> None:
    """Bad sections, sizes or text fail before any corpus is written."""
    unknown = sorted(set(FLAGS.sections) - {"tokenize", "loader"})
    if unknown:
        raise app.UsageError(f"--sections: unknown {unknown}; choose from tokenize, loader")
    if not all(n.isdigit() and int(n) > 0 for n in FLAGS.corpus_mb):
        raise app.UsageError(f"--corpus_mb={','.join(FLAGS.corpus_mb)}: give positive integers")
    if not pathlib.Path(FLAGS.text).is_file():
        raise FileNotFoundError(f"--text={FLAGS.text} is not a file; give a text file to repeat "
                                "into the corpus")


def report(rows: list[dict], machine: str) -> str:
    lines = ["# Data benchmarks", "", f"Machine: {machine}. Command: `python -m "
             f"experiments.bench_data --sections={','.join(FLAGS.sections)} "
             f"--corpus_mb={','.join(FLAGS.corpus_mb)} --num_workers={FLAGS.num_workers}`."]
    if not rows:
        return "\n".join(lines) + "\n"
    lines += ["", "## tokenize: GPT-2 BPE into uint16 shards, same corpus, same workers", "",
              "| tool | corpus MiB | workers | tokens | seconds | CPU seconds | M tokens/s |"
              " peak RSS MiB | vs fineweb.py |", "|---|---|---|---|---|---|---|---|---|"]
    peer = {}
    for row in rows:
        if "fineweb" in row["tool"]:
            peer[row["corpus_mb"]] = row["tokens_per_sec"]
        ratio = row["tokens_per_sec"] / peer.get(row["corpus_mb"], row["tokens_per_sec"])
        lines.append(f"| {row['tool']} | {row['corpus_mb']:.0f} | {row['workers']} | "
                     f"{row['tokens']:,} | {row['seconds']:.1f} | "
                     f"{row.get('cpu_seconds', float('nan')):.1f} | "
                     f"{row['tokens_per_sec'] / 1e6:.3f} | {row['peak_rss_mib']:.0f} | "
                     f"{ratio:.2f}x |")
    return "\n".join(lines) + "\n"


def loader_report(rows: list[dict]) -> str:
    if not rows:
        return ""
    lines = ["", "## loader: the training iterator alone, prepared GPT-2 shards, page cache warm",
             "", "| batches | seq_len x batch | ms per batch | M tokens/s |", "|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['loader']} | {row['seq_len']} x {row['batch_size']} | "
                     f"{row['ms_per_batch']:.3f} | {row['tokens_per_sec'] / 1e6:.1f} |")
    lines += ["", "Goal: >= 5M tokens/s (an 8-GPU host training the 124M model near 50% MFU "
              "consumes about 5M tokens/s)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    cli.run(main)
