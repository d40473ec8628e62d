"""Training: state, pure steps, optax builders, the loop, orbax checkpoints, metrics/MFU.

    from gptjax.training import train
    final_metrics = train(config, workdir)      # config: ml_collections ConfigDict, dict or Config
"""

from gptjax.training.optim import SCHEDULES, decay_mask, make_optimizer, make_schedule
from gptjax.training.state import TrainState, graphdef_of, init_state
from gptjax.training.steps import cross_entropy, eval_step_fn, train_step_fn


def __getattr__(name):
    # The loop pulls in orbax, grain and TFDS: load it only when asked for.
    if name == "train":
        from gptjax.training.loop import train

        return train
    raise AttributeError(f"module 'gptjax.training' has no attribute {name!r}")


__all__ = ["SCHEDULES", "TrainState", "cross_entropy", "decay_mask", "eval_step_fn",
           "graphdef_of", "init_state", "make_optimizer", "make_schedule", "train",
           "train_step_fn"]
