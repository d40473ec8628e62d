r"""Multiple-choice accuracy of a checkpoint (HellaSwag and the like).

    python -m experiments.multiple_choice --checkpoint=gpt2 --data=hellaswag_val.jsonl

--checkpoint is a gptjax run's workdir or a Hugging Face GPT-2 folder; --data a JSON-lines file,
one question per line: HellaSwag's own ({"ctx", "endings", "label"}) or {"context", "choices",
"label"}. Each choice is scored as the continuation of its context (summed log-probability of its
tokens) and the likeliest is the model's answer (gptjax.multiple_choice). Prints one JSON line:
accuracy, accuracy_norm (per character: lm-evaluation-harness's acc_norm), accuracy_per_token
(build-nanogpt's); --out also writes every question's scores and picks (JSON).
"""

import json

from absl import app, flags

from experiments import cli
from gptjax import multiple_choice

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "A gptjax run's workdir or a Hugging Face GPT-2 folder.",
                    required=True)
flags.DEFINE_string("data", None, "A JSON-lines file of questions (HellaSwag's format or "
                    "{context, choices, label}).", required=True)
flags.DEFINE_string("tokenizer", None, "Tokenizer folder (default: --checkpoint).")
flags.DEFINE_integer("max_examples", None, "Score the first N questions only.")
flags.DEFINE_integer("batch_size", 8, "Choices per forward pass.")
flags.DEFINE_string("out", None, "Write the metrics and every question's scores here (JSON).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    out = cli.output_path("out")
    result = multiple_choice.evaluate_checkpoint(
        FLAGS.checkpoint, FLAGS.data, tokenizer=FLAGS.tokenizer,
        max_examples=FLAGS.max_examples, batch_size=FLAGS.batch_size)
    if out:
        out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["metrics"]))


if __name__ == "__main__":
    cli.run(main)
