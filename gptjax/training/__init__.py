"""Training: state, pure steps, optax builders, the loop, orbax checkpoints, metrics/MFU."""

from gptjax.training.optim import SCHEDULES, decay_mask, make_optimizer, make_schedule
