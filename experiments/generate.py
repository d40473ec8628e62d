r"""Generate text from a checkpoint, with Hugging Face `generate`'s options and semantics.

    python -m experiments.generate --checkpoint=PATH --prompt="The quick brown fox jumps over the" \
        --max_length=50 --num_beams=5 --no_repeat_ngram_size=2

PATH is a Hugging Face GPT-2 folder or a gptjax checkpoint. --prompt repeats for a batch;
--json prints one JSON object per output ({"prompt", "ids", "text"}); otherwise a single greedy or
sampled prompt streams its text as it is generated. Options left unset take the checkpoint's
defaults (its generation_config.json), then transformers'.
"""

import json
import pathlib

from absl import app, flags

from experiments import cli
from gptjax import GPT, Tokenizer
from gptjax.generation import GenerationError, TextStreamer
from gptjax.generation.text import defaults_for, generate_text

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "A Hugging Face GPT-2 folder or a gptjax checkpoint.",
                    required=True)
flags.DEFINE_string("tokenizer", None, "Tokenizer folder (default: --checkpoint).")
flags.DEFINE_multi_string("prompt", [], "A prompt; repeat the flag for a batch.")
flags.DEFINE_multi_string("prompt_file", [], "A text file whose whole content is one prompt; "
                          "repeatable.")
flags.DEFINE_bool("json", False, "Print one JSON object per output: prompt index, ids, text.")
# transformers' generate options, same names and meanings; unset means the default.
flags.DEFINE_integer("max_length", None, "Maximum total length, prompt included (default 20).")
flags.DEFINE_integer("max_new_tokens", None, "Maximum new tokens (wins over --max_length).")
flags.DEFINE_integer("min_length", None, "Minimum total length before eos may end a sequence.")
flags.DEFINE_integer("min_new_tokens", None, "Minimum new tokens before eos may end a sequence.")
flags.DEFINE_bool("do_sample", None, "Sample instead of greedy / beam search.")
flags.DEFINE_integer("num_beams", None, "Beam width; 1 (default) is greedy or sampling.")
flags.DEFINE_float("temperature", None, "Sampling temperature (default 1.0).")
flags.DEFINE_integer("top_k", None, "Sample among the k most likely tokens (default 50; 0: off).")
flags.DEFINE_float("top_p", None, "Nucleus sampling: smallest set holding this probability.")
flags.DEFINE_float("repetition_penalty", None, "Penalty > 1 for tokens already in the text.")
flags.DEFINE_integer("no_repeat_ngram_size", None, "Never repeat an n-gram of this size.")
flags.DEFINE_float("length_penalty", None, "Beam scores are sum log p / length**this.")
flags.DEFINE_enum("early_stopping", None, ["true", "false", "never"],
                  "Beam search stopping: true, false (default) or never.")
flags.DEFINE_integer("num_return_sequences", None, "Outputs per prompt (<= num_beams "
                     "without sampling).")
flags.DEFINE_integer("eos_token_id", None, "Token that ends a sequence (default: the "
                     "checkpoint's); -1: none.")
flags.DEFINE_integer("pad_token_id", None, "Token that pads finished sequences (default: eos).")
flags.DEFINE_integer("seed", None, "Sampling seed (default 0).")

OPTIONS = ("max_length", "max_new_tokens", "min_length", "min_new_tokens", "do_sample",
           "num_beams", "temperature", "top_k", "top_p", "repetition_penalty",
           "no_repeat_ngram_size", "length_penalty", "num_return_sequences", "eos_token_id",
           "pad_token_id", "seed")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        run()
    except GenerationError as e:  # a bad prompt or option: the message says what to change
        raise app.UsageError(str(e)) from None


def run():
    prompts = list(FLAGS.prompt) + [pathlib.Path(p).read_text() for p in FLAGS.prompt_file]
    model = GPT.from_pretrained(FLAGS.checkpoint)
    tokenizer = Tokenizer.from_pretrained(FLAGS.tokenizer or FLAGS.checkpoint)
    options = defaults_for(model, tokenizer)
    options.update({k: getattr(FLAGS, k) for k in OPTIONS if getattr(FLAGS, k) is not None})
    if options.get("eos_token_id") == -1:
        options["eos_token_id"] = None
    if FLAGS.early_stopping is not None:
        options["early_stopping"] = {"true": True, "false": False}.get(FLAGS.early_stopping,
                                                                       "never")
    single = (len(prompts) == 1 and options.get("num_beams", 1) == 1
              and options.get("num_return_sequences", 1) == 1)
    if single and not FLAGS.json:
        print(prompts[0], end="", flush=True)
        generate_text(model, tokenizer, prompts, streamer=TextStreamer(tokenizer), **options)
        return
    for result in generate_text(model, tokenizer, prompts, **options):
        if FLAGS.json:
            print(json.dumps({k: result[k] for k in ("prompt", "ids", "text")},
                             ensure_ascii=False))
        else:
            print(f"--- prompt {result['prompt']}\n{result['text']}")


if __name__ == "__main__":
    cli.run(main)
