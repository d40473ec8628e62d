r"""Run an ablation sweep (variants x seeds) through the normal training path and write a report.

    python -m experiments.ablate --config=configs/ablations/attention.py \
        --outdir=docs/ablations/attention

Finished runs are not repeated: run the same command again to resume an interrupted sweep.
"""

from absl import flags
from ml_collections import config_flags

from experiments import cli
from gptjax import ablate

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "A sweep config (configs/ablations/*.py).",
                                lock_config=False)
flags.DEFINE_string("outdir", None, "Where runs and the report go.", required=True)
flags.mark_flag_as_required("config")


def main(argv):
    del argv
    report = ablate.run_sweep(FLAGS.config, FLAGS.outdir)
    print(f"report: {report}")


if __name__ == "__main__":
    cli.run(main)
