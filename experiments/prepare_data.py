r"""Tokenize a corpus of any size into token shards that training reads (dataset='tokens').

    python -m experiments.prepare_data --inputs='fineweb-edu/sample/10BT/*.parquet' \
        --tokenizer=gpt2 --outdir=/data/fineweb10B
    python -m experiments.prepare_data --inputs='owt/*.jsonl.zst' --tokenizer=gpt2 \
        --outdir=/data/owt --val_fraction=0.0005

Reads .txt (a file is one document), .jsonl, .jsonl.gz, .jsonl.zst and .parquet; memory stays
bounded by the workers' batches and one shard whatever the corpus size. Interrupted, the same
command continues after the last finished shard. Then train with
--config.data.dataset=tokens --config.data.tokens_dir=OUTDIR.
"""

import os

from absl import app, flags

from experiments import cli
from gptjax.data.prepare import BAD_DOCUMENT, PrepareSettings, prepare

FLAGS = flags.FLAGS
flags.DEFINE_list("inputs", None, "Input files: globs, comma-separated (quote them).")
flags.DEFINE_string("tokenizer", "gpt2", "gpt2, byte, or a tokenizer folder (as data.tokenizer; "
                    "'char' needs the whole corpus, so it is refused).")
flags.DEFINE_string("outdir", None, "Where the shards, manifest.json and the tokenizer go.")
flags.DEFINE_string("text_field", "text", "The JSON field / parquet column holding the text.")
flags.DEFINE_float("val_fraction", 0.0005, "Fraction of the documents of --inputs that go to "
                   "the val split (whole documents, evenly spread).")
flags.DEFINE_list("val_inputs", None, "Globs of files that are the val split instead "
                  "(with --val_fraction=0).")
flags.DEFINE_integer("num_workers", os.cpu_count(), "Tokenizer processes (0: this one); the "
                     "shards are the same whatever the number.", lower_bound=0)
flags.DEFINE_integer("shard_tokens", 100_000_000, "Tokens per shard (the last one shorter).",
                     lower_bound=1)
flags.DEFINE_enum("on_bad_document", "error", list(BAD_DOCUMENT), "A bad document (invalid "
                  "JSON or UTF-8, no text field): stop with an error, or skip and count it.")
flags.mark_flags_as_required(["inputs", "outdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    settings = PrepareSettings(
        inputs=tuple(FLAGS.inputs), tokenizer=FLAGS.tokenizer, outdir=FLAGS.outdir,
        text_field=FLAGS.text_field, val_fraction=FLAGS.val_fraction,
        val_inputs=tuple(FLAGS.val_inputs) if FLAGS.val_inputs else None,
        shard_tokens=FLAGS.shard_tokens, on_bad_document=FLAGS.on_bad_document,
        num_workers=FLAGS.num_workers)
    manifest = prepare(settings)  # bad input: PrepareError, one line by experiments.cli
    for split, state in manifest["splits"].items():
        print(f"{split}: {state['tokens']:,} tokens, {state['documents']:,} documents, "
              f"{len(state['shards'])} shards")
    if manifest["skipped_documents"]:
        print(f"skipped {manifest['skipped_documents']:,} bad documents")
    print(f"train with --config.data.dataset=tokens --config.data.tokens_dir={FLAGS.outdir}")


if __name__ == "__main__":
    cli.run(main)
