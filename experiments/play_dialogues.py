r"""Turn a play script into dialogue fine-tuning files: each speech and the reply to it.

    python -m experiments.play_dialogues --text_file=../shared/data/tinyshakespeare.txt \
        --outdir=/tmp/shakespeare_dialogue --max_chars=200

Writes train.jsonl and val.jsonl (data.task='dialogue' format). The split is the text's: the
first (1 - val_fraction) of the characters give the training pairs and the rest the validation
pairs, as a char-level pretraining run on the same text splits it, so a model pretrained there
has not read the validation speeches. val_choices.jsonl asks the validation pairs as
multiple-choice questions (experiments.multiple_choice, train.choice_file): which of
--num_choices replies (the true one and others drawn from the validation pairs) follows.
"""

import pathlib

from absl import app, flags

from experiments import cli
from gptjax.data.tasks import play_dialogues, reply_questions, write_examples

FLAGS = flags.FLAGS
flags.DEFINE_string("text_file", None, "The play script (tinyshakespeare's layout).",
                    required=True)
flags.DEFINE_string("outdir", None, "Where train.jsonl, val.jsonl and val_choices.jsonl go.",
                    required=True)
flags.DEFINE_integer("max_chars", None, "Keep pairs whose two speeches fit in this many "
                     "characters together (default: all).")
flags.DEFINE_float("val_fraction", 0.1, "The end of the text that gives validation pairs.")
flags.DEFINE_integer("num_choices", 4, "Replies per question of val_choices.jsonl (0: none).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.num_choices == 1 or FLAGS.num_choices < 0:
        raise app.UsageError(f"--num_choices={FLAGS.num_choices}: give 2 or more (0: no "
                             "val_choices.jsonl)")
    text = pathlib.Path(FLAGS.text_file).read_text(encoding="utf-8")
    cut = int(len(text) * (1 - FLAGS.val_fraction))
    outdir = pathlib.Path(FLAGS.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", text[:cut]), ("val", text[cut:])):
        examples = play_dialogues(part, FLAGS.max_chars)
        write_examples(outdir / f"{name}.jsonl", examples)
        print(f"{outdir / f'{name}.jsonl'}: {len(examples)} dialogues")
    if not FLAGS.num_choices:
        return
    try:
        questions = reply_questions(examples, FLAGS.num_choices)
    except ValueError as e:  # too few validation dialogues: the files above stand
        print(f"no {outdir / 'val_choices.jsonl'}: {e}")
        return
    write_examples(outdir / "val_choices.jsonl", questions)
    print(f"{outdir / 'val_choices.jsonl'}: {len(questions)} questions of "
          f"{FLAGS.num_choices} replies")


if __name__ == "__main__":
    cli.run(main)
