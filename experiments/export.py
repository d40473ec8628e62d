r"""Export a model as a Hugging Face GPT-2 folder that transformers loads.

    python -m experiments.export --checkpoint=/tmp/gpt2-qa --outdir=/tmp/gpt2-qa-hf

--checkpoint is a gptjax run's workdir (its latest checkpoint; a LoRA run's adapters merged
into the base) or a Hugging Face GPT-2 folder. --outdir gets config.json, model.safetensors (the
true vocabulary size, a padded vocabulary's rows dropped), generation_config.json and the
tokenizer files as the source had them. A model GPT-2 cannot express (rope/alibi/sinusoidal
positions, grouped-query attention, a sliding window) is refused, naming the field.
"""

from absl import app, flags, logging

from experiments import cli
from gptjax.training.export import export

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "A gptjax run's workdir or a Hugging Face GPT-2 folder.",
                    required=True)
flags.DEFINE_string("outdir", None, "The folder to write (new or empty).", required=True)
flags.DEFINE_bool("overwrite", False, "Replace the model and tokenizer files of a non-empty "
                  "--outdir (other files there are left alone).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    summary = export(FLAGS.checkpoint, FLAGS.outdir, overwrite=FLAGS.overwrite)
    logging.info("exported %s to %s: vocab_size=%d, tokenizer=%s, files %s", FLAGS.checkpoint,
                 summary["outdir"], summary["vocab_size"], summary["tokenizer"],
                 ", ".join(summary["files"]))


if __name__ == "__main__":
    cli.run(main)
