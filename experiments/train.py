"""Train a GPT from a config file; resume when the workdir already holds checkpoints.

    python -m experiments.train --config=configs/quickstart.py --workdir=/tmp/gptjax-quickstart
    python -m experiments.train --config=configs/shakespeare_char_cpu.py \
        --config.data.text_file=../shared/data/tinyshakespeare.txt --workdir=/tmp/shakespeare_cpu

Any config field can be overridden: --config.section.field=value.
"""

from absl import app, flags
from ml_collections import config_flags

from gptjax.training import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "An experiment config file (configs/*.py).")
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics.jsonl, TensorBoard events, the "
                    "resolved config and the tokenizer go; a workdir with checkpoints resumes.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    final = train(FLAGS.config, FLAGS.workdir)
    summary = ", ".join(f"{k} {final[k]:.4f}" for k in ("train_loss", "val_loss") if k in final)
    print(f"\nstep {final['step']}: {summary}")
    if final.get("sample"):
        print(f"sample:\n{FLAGS.config.train.sample_prompt}{final['sample']}")


if __name__ == "__main__":
    app.run(main)
