r"""Tokenize a corpus of any size into token shards that training reads (dataset='tokens').

    python -m experiments.prepare_data --inputs='fineweb-edu/sample/10BT/*.parquet' \
        --tokenizer=gpt2 --outdir=/data/fineweb10B
    python -m experiments.prepare_data --inputs='owt/*.jsonl.zst' --tokenizer=gpt2 \
        --outdir=/data/owt --val_fraction=0.0005
    python -m experiments.prepare_data --inputs=tfds:tiny_shakespeare --tokenizer=gpt2 \
        --outdir=/data/shakespeare

Reads .txt (a file is one document), .jsonl, .jsonl.gz, .jsonl.zst and .parquet, and TFDS
catalog datasets as `tfds:NAME[/CONFIG][:VERSION][@SPLIT]` (TFDS's own `name/config:version`,
then a split, slices included: 'tfds:lm1b@train[:10%]'): one document per example, its text
feature (--text_field; by default 'text', or the dataset's only text feature). Without @SPLIT the
train split is read, and the dataset's validation (else test) split becomes the val split unless
--val_fraction or --val_inputs is given. The dataset is downloaded and prepared once (in
--data_dir) where there is network; offline, prepare it elsewhere with `tfds build`. Memory stays
bounded by the workers' batches and one shard whatever the corpus size. Interrupted, the same
command continues after the last finished shard. Then train with
--config.data.dataset=tokens --config.data.tokens_dir=OUTDIR.
"""

import os

from absl import app, flags

from experiments import cli
from gptjax.data.prepare import BAD_DOCUMENT, PrepareSettings, prepare

FLAGS = flags.FLAGS
flags.DEFINE_list("inputs", None, "Input files: globs, comma-separated (quote them); or TFDS "
                  "catalog datasets: tfds:NAME[/CONFIG][:VERSION][@SPLIT], e.g. "
                  "tfds:tiny_shakespeare, 'tfds:lm1b/subwords8k@train[:10%]' (no @SPLIT: train, "
                  "and the validation or test split as val).")
flags.DEFINE_string("tokenizer", "gpt2", "gpt2, byte, or a tokenizer folder (as data.tokenizer; "
                    "'char' needs the whole corpus, so it is refused).")
flags.DEFINE_string("outdir", None, "Where the shards, manifest.json and the tokenizer go.")
flags.DEFINE_string("text_field", "text", "The JSON field / parquet column / TFDS feature "
                    "holding the text (a TFDS dataset without 'text': its only text feature).")
flags.DEFINE_float("val_fraction", None, "Fraction of the documents of --inputs that go to "
                   "the val split (whole documents, evenly spread). Default: 0.0005, or 0 with "
                   "--val_inputs or a tfds: input that has a validation or test split.")
flags.DEFINE_list("val_inputs", None, "Globs of files (or tfds: datasets; no @SPLIT: the "
                  "validation or test split) that are the val split instead.")
flags.DEFINE_string("data_dir", None, "Where TFDS datasets are prepared (tfds: inputs); "
                    "default $GPTJAX_DATA_DIR, else TFDS's ($TFDS_DATA_DIR, "
                    "~/tensorflow_datasets), as --config.data.data_dir for training.")
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
        num_workers=FLAGS.num_workers, data_dir=FLAGS.data_dir)
    manifest = prepare(settings)  # bad input: PrepareError, one line by experiments.cli
    for split, state in manifest["splits"].items():
        print(f"{split}: {state['tokens']:,} tokens, {state['documents']:,} documents, "
              f"{len(state['shards'])} shards")
    if manifest["skipped_documents"]:
        print(f"skipped {manifest['skipped_documents']:,} bad documents")
    print(f"train with --config.data.dataset=tokens --config.data.tokens_dir={FLAGS.outdir}")


if __name__ == "__main__":
    cli.run(main)
