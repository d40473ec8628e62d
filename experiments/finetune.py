r"""Fine-tune a pretrained GPT: a training run that starts from a model's weights.

    python -m experiments.finetune --config=configs/finetune_gpt2.py:qa --init_from=gpt2 \
        --config.data.text_file=train.jsonl --workdir=/tmp/gpt2-qa

--init_from is a Hugging Face GPT-2 folder (or hub id) or a gptjax run's workdir; it sets
config.train.init_from, and the run takes that model's architecture and weights, then trains as
experiments.train does (same flags, same workdir contents; a workdir with checkpoints resumes
from them). Task formats (data.dataset='task', data.task=completion|qa|translation|dialogue):
gptjax/data/tasks.py.
"""

from absl import app, flags

from experiments import cli, train

FLAGS = flags.FLAGS
flags.adopt_module_key_flags(train)  # --help lists train's --config, --workdir, ... too
flags.DEFINE_string("init_from", None, "The pretrained model: a Hugging Face GPT-2 folder or "
                    "hub id, or a gptjax run's workdir (default: the config's "
                    "train.init_from).")


def main(argv):
    if FLAGS.init_from:
        FLAGS.config.train.init_from = FLAGS.init_from
    if not FLAGS.config.train.get("init_from"):
        raise app.UsageError("fine-tuning needs a pretrained model: pass --init_from=PATH (a "
                             "Hugging Face GPT-2 folder or a gptjax run); to train from "
                             "scratch use experiments.train")
    train.main(argv)


if __name__ == "__main__":
    cli.run(main)
