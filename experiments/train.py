r"""Train a GPT from a config file; resume when the workdir already holds checkpoints.

    python -m experiments.train --config=configs/quickstart.py --workdir=/tmp/gptjax-quickstart
    python -m experiments.train --config=configs/shakespeare_char_cpu.py \
        --config.data.text_file=../shared/data/tinyshakespeare.txt --workdir=/tmp/shakespeare_cpu

Any config field can be overridden: --config.section.field=value. Parallelism is config too:
--config.mesh.fsdp=8, --config.mesh.tensor=4, --config.mesh.strategy=pmap (see gptjax.parallel).
Several hosts: run the same command on each, with --coordinator_address=HOST:PORT
--num_processes=N --process_id=I (or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
JAX_PROCESS_ID; detected automatically on TPU pods and under SLURM).
"""

import jax
from absl import app, flags
from ml_collections import config_flags

from experiments import cli
from gptjax.parallel import initialize_distributed
from gptjax.training import train
from gptjax.training.preemption import STOP_MESSAGE

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "An experiment config file (configs/*.py).")
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics.jsonl, TensorBoard events, the "
                    "resolved config and the tokenizer go; a workdir with checkpoints resumes.")
flags.DEFINE_string("coordinator_address", None, "Multi-process runs: HOST:PORT of process 0.")
flags.DEFINE_integer("num_processes", None, "Multi-process runs: how many processes in all.")
flags.DEFINE_integer("process_id", None, "Multi-process runs: this process's index, 0..N-1.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    final = train(FLAGS.config, FLAGS.workdir)
    if final.get("preempted"):  # SIGTERM / Ctrl-C: saved; exit 0 so a scheduler may requeue
        if jax.process_index() == 0:
            print(f"\n{STOP_MESSAGE.format(step=final['step'])}")
        return
    summary = ", ".join(f"{k} {final[k]:.4f}" for k in ("train_loss", "val_loss") if k in final)
    if jax.process_index() != 0:  # one report per run
        return
    print(f"\nstep {final['step']}: {summary}")
    if final.get("sample"):
        print(f"sample:\n{FLAGS.config.train.sample_prompt}{final['sample']}")


if __name__ == "__main__":
    cli.run(main)
