r"""Perplexity of a checkpoint on a text file, in Hugging Face's sliding windows.

    python -m experiments.perplexity --checkpoint=gpt2 --text_file=wiki.test.raw --stride=512

--checkpoint is a gptjax run's workdir or a Hugging Face GPT-2 folder. The file is tokenized
whole and read in windows of --context tokens (default: all the model's positions) that begin
every --stride tokens (default: half the context), each scoring only the tokens no window before
it scored (gptjax.perplexity). Prints one JSON line: perplexity, loss (nats per token),
bits_per_byte (comparable between tokenizers), tokens scored, windows; --out writes it too.
"""

import json

from absl import app, flags

from experiments import cli
from gptjax.perplexity import perplexity_of_file

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "A gptjax run's workdir or a Hugging Face GPT-2 folder.",
                    required=True)
flags.DEFINE_string("text_file", None, "The UTF-8 text to score.", required=True)
flags.DEFINE_string("tokenizer", None, "Tokenizer folder (default: --checkpoint).")
flags.DEFINE_integer("context", None, "Tokens per window (default: the model's max_len).")
flags.DEFINE_integer("stride", None, "Tokens between window starts, below --context (default: "
                     "half of it; smaller: more context per token, more compute).")
flags.DEFINE_integer("batch_size", 8, "Windows per forward pass.")
flags.DEFINE_integer("max_tokens", None, "Score the text's first N tokens only.")
flags.DEFINE_string("out", None, "Also write the JSON result to this file.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    out = cli.output_path("out")
    result = perplexity_of_file(FLAGS.checkpoint, FLAGS.text_file, tokenizer=FLAGS.tokenizer,
                                context=FLAGS.context, stride=FLAGS.stride,
                                batch_size=FLAGS.batch_size, max_tokens=FLAGS.max_tokens,
                                progress=True)
    line = json.dumps(result)
    if out:
        out.write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    cli.run(main)
