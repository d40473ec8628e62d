"""Dynamic loss scaling for float16 compute (model.dtype='float16'), the standard mixed-precision
recipe of NVIDIA's apex/AMP and DeepMind jmp's DynamicLossScale, whose rule this is.

float16 holds nothing above 65504 and flushes gradients below ~6e-8 to zero. The train step
(gptjax.training.steps) multiplies each micro-batch's mean loss by a scale S before
differentiating (relative to the mean, as AMP's: the same level whatever the batch size) and
divides the gradients by S after, in float32: small gradients survive the float16 backward. A step
whose gradients are not finite is skipped as any non-finite step is (params and optimizer state
unchanged) and halves S, down to FLOOR; after optim.loss_scale_period finite steps in a row S
doubles (unless that is not finite in float32). optim.loss_scale is the starting S.

A skip that halved S is counted as `overflow_steps` (and in `skipped_steps`) but not toward
train.max_consecutive_skips (gptjax.training.skips): it is the scale finding its level, and a
scale started too high overflows for many steps in a row. Once S is at FLOOR, halving cannot
help, and a skip counts: a run whose float16 values overflow unscaled (its forward pass) stops.

The state is a small pytree in TrainState.loss_scale, present only for float16 runs, so
float32 and bfloat16 states and checkpoints are exactly as before; a float16 checkpoint written
before loss scaling (or a run resumed in float16 from another dtype) starts at optim.loss_scale.
Written here, not taken from jmp: jmp's last release (0.0.4) is from January 2023 and its code
has not changed since, and optax has no loss scaling; the rule is `adjust`'s ten lines.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from absl import logging

from gptjax.config import Config

FLOOR = 1.0  # the smallest scale: below it scaling would shrink the gradients instead
FACTOR = 2.0  # a power of two: halving and doubling are exact


def enabled(cfg: Config) -> bool:
    """Whether this run scales its loss: float16 compute only (bfloat16 has float32's range)."""
    return cfg.model.dtype == "float16"


def init(cfg: Config) -> dict | None:
    """The starting state, {'scale': float32, 'good_steps': int32 finite steps in a row since
    the last change}, or None where the run does not scale its loss."""
    if not enabled(cfg):
        return None
    return {"scale": jnp.asarray(cfg.optim.loss_scale, jnp.float32),
            "good_steps": jnp.zeros((), jnp.int32)}


def adjust(state: dict, finite, period: int):
    """(the state after a step whose scaled gradients were `finite` or not, whether the scale
    was halved): halved on a non-finite step above FLOOR, doubled after `period` finite steps
    in a row."""
    scale, good = state["scale"], state["good_steps"] + 1
    grown = scale * FACTOR
    double = finite & (good >= period) & jnp.isfinite(grown)
    halve = ~finite & (scale > FLOOR)
    new = jnp.where(double, grown, jnp.where(halve, jnp.maximum(scale / FACTOR, FLOOR), scale))
    good = jnp.where(finite & (good < period), good, 0)  # jmp: a doubling restarts the count
    return {"scale": new, "good_steps": good}, halve


def fill_missing(state, cfg: Config, target):
    """A restored `state` whose checkpoint held no loss scale (written before loss scaling, or
    in another dtype) given the starting one, laid out as `target`'s; other states as they are."""
    if target.loss_scale is None or state.loss_scale is not None:
        return state
    logging.info("the checkpoint holds no loss scale (written before loss scaling or in "
                 "another dtype): float16 starts at optim.loss_scale=%g", cfg.optim.loss_scale)
    fresh = jax.tree.map(lambda x, t: jax.device_put(x, t.sharding), init(cfg),
                         target.loss_scale)
    return state.replace(loss_scale=fresh)
