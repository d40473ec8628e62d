r"""Score a checkpoint on a fine-tuning task file: generated answers against the references.

    python -m experiments.evaluate --checkpoint=/tmp/gpt2-qa --data=val.jsonl --task=qa \
        --out=/tmp/gpt2-qa/eval.json --max_examples=200 --max_new_tokens=32

--checkpoint is a gptjax run's workdir or a Hugging Face GPT-2 folder; --data a JSON-lines file
in the --task's format (gptjax.data.tasks). Prints one JSON line of metrics (answer loss and
perplexity for every task; SQuAD exact match and F1 for qa; BLEU and chrF otherwise; see
gptjax.evaluate); --out also writes them with every example's prompt, reference and output (a
JSON file and a Markdown table beside it). Decoding is greedy unless the flags, which are
generate's, say otherwise.
"""

import json

from absl import app, flags

from experiments import cli
from gptjax import evaluate as evaluation
from gptjax.data.tasks import TASKS
from gptjax.generation import GenerationError

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "A gptjax run's workdir or a Hugging Face GPT-2 folder.",
                    required=True)
flags.DEFINE_string("tokenizer", None, "Tokenizer folder (default: --checkpoint).")
flags.DEFINE_string("data", None, "A JSON-lines file of the task's examples.", required=True)
flags.DEFINE_enum("task", None, list(TASKS), "The examples' format.", required=True)
flags.DEFINE_string("out", None, "Write the metrics and examples here (JSON, and a .md table).")
flags.DEFINE_integer("max_examples", None, "Score the first N examples only.")
flags.DEFINE_integer("batch_size", 8, "Examples per generation and loss batch.")
# generate's options; lengths that count the prompt do not apply to prompts of many lengths
OPTIONS = cli.define_generation_flags(skip=("max_length", "min_length",
                                            "num_return_sequences"))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.output_path("out")
    try:
        result = evaluation.evaluate_checkpoint(
            FLAGS.checkpoint, FLAGS.data, FLAGS.task, tokenizer=FLAGS.tokenizer,
            max_examples=FLAGS.max_examples, batch_size=FLAGS.batch_size,
            **cli.generation_options(OPTIONS))
    except GenerationError as e:  # a bad option: the message says what to change
        raise app.UsageError(str(e)) from None
    if FLAGS.out:
        evaluation.write_results(result, FLAGS.out)
    print(json.dumps(result["metrics"]))


if __name__ == "__main__":
    cli.run(main)
