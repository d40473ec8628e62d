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
OPTIONS = cli.define_generation_flags()  # transformers' generate options


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
    options.update(cli.generation_options(OPTIONS))
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
