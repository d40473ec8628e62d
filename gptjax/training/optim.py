"""The optimizer story in one place: learning-rate schedules (a registry), AdamW with a
weight-decay mask, global-norm clipping.

Schedules map an optimizer step (0, 1, ...) to a learning rate and are optax's own functions, so
a test can check them against optax's formulas and a plot against the paper's.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from gptjax.config import ConfigError, OptimConfig

# name -> fn(optim: OptimConfig, total_steps: int) -> optax.Schedule. Add a variant: one function,
# one @register_schedule line; config validation and the tools pick it up.
SCHEDULES: dict[str, Callable[..., optax.Schedule]] = {}


def register_schedule(name: str):
    def add(fn):
        SCHEDULES[name] = fn
        return fn

    return add


def _decay_steps(optim, total_steps: int) -> int:
    return optim.decay_steps or total_steps


@register_schedule("cosine")
def cosine(optim, total_steps: int) -> optax.Schedule:
    """Linear warmup 0 -> lr, then cosine decay to min_lr at decay_steps (then held)."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=optim.lr, warmup_steps=optim.warmup_steps,
        decay_steps=max(_decay_steps(optim, total_steps), optim.warmup_steps + 1),
        end_value=optim.min_lr)


@register_schedule("linear")
def linear(optim, total_steps: int) -> optax.Schedule:
    """Linear warmup 0 -> lr, then linear decay to min_lr at decay_steps (then held)."""
    decay = max(_decay_steps(optim, total_steps) - optim.warmup_steps, 1)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, optim.lr, optim.warmup_steps),
         optax.linear_schedule(optim.lr, optim.min_lr, decay)], [optim.warmup_steps])


@register_schedule("constant")
def constant(optim, total_steps: int) -> optax.Schedule:
    """Linear warmup 0 -> lr, then constant lr."""
    del total_steps
    # not optax.warmup_constant_schedule: with warmup_steps=0 it stays at 0
    return optax.join_schedules([optax.linear_schedule(0.0, optim.lr, optim.warmup_steps),
                                 optax.constant_schedule(optim.lr)], [optim.warmup_steps])


@register_schedule("wsd")
def warmup_stable_decay(optim, total_steps: int) -> optax.Schedule:
    """Warmup-stable-decay (Hu et al. 2024, MiniCPM): warmup, lr held, then the last
    wsd_decay_fraction of decay_steps decays linearly to min_lr."""
    end = _decay_steps(optim, total_steps)
    decay = max(int(round(optim.wsd_decay_fraction * (end - optim.warmup_steps))), 1)
    stable_end = end - decay
    return optax.join_schedules(
        [optax.linear_schedule(0.0, optim.lr, optim.warmup_steps),
         optax.constant_schedule(optim.lr),
         optax.linear_schedule(optim.lr, optim.min_lr, decay)],
        [optim.warmup_steps, stable_end])


def check(optim: OptimConfig) -> None:
    """Raise ConfigError if optim.schedule names no registered schedule."""
    if optim.schedule not in SCHEDULES:
        raise ConfigError(f"optim.schedule={optim.schedule!r} is invalid: choose one of "
                          f"{sorted(SCHEDULES)}")


def make_schedule(optim, total_steps: int) -> optax.Schedule:
    """The learning-rate schedule optim.schedule names, over total_steps optimizer steps."""
    check(optim)
    return SCHEDULES[optim.schedule](optim, total_steps)


def _param_name(path) -> str:
    """The parameter's own name (kernel, bias, scale, embedding) from a pytree path."""
    names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    return str(names[-1]) if names else ""


def decay_mask(params, decay_embeddings: bool = False):
    """True where AdamW's weight decay applies: matmul kernels, and embeddings when asked.

    Norm scales/biases and all biases are never decayed. Decided by the parameter's name in its
    path (nnx names: kernel, bias, scale, embedding).
    """
    decayed = {"kernel", "lora_a", "lora_b"} | ({"embedding"} if decay_embeddings else set())
    return jax.tree_util.tree_map_with_path(lambda path, _: _param_name(path) in decayed, params)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformationExtraArgs:
    """optax.clip_by_global_norm, which takes the gradients' global norm as the extra argument
    `grad_norm` where the caller has it (the train step, for its finite check), so a step
    computes it once; without it the norm is computed as optax does. Same (empty) state."""
    plain = optax.clip_by_global_norm(max_norm)

    def update(updates, state, params=None, *, grad_norm=None, **extra_args):
        del extra_args
        if grad_norm is None:
            return plain.update(updates, state, params)
        # optax's own rule, so the clipped updates are bitwise the same
        keep = jnp.squeeze(grad_norm < max_norm)
        return jax.tree.map(
            lambda t: jax.lax.select(keep, t, (t / grad_norm.astype(t.dtype)) * max_norm),
            updates), state

    return optax.GradientTransformationExtraArgs(plain.init, update)


def make_optimizer(optim, total_steps: int) -> tuple[optax.GradientTransformationExtraArgs,
                                                      optax.Schedule]:
    """(clip by global norm -> AdamW with the decay mask, its schedule). Its update takes the
    gradients' global norm as `grad_norm=` (clip_by_global_norm)."""
    schedule = make_schedule(optim, total_steps)
    # identity() keeps the optimizer state's structure the same with or without clipping.
    clip = clip_by_global_norm(optim.grad_clip) if optim.grad_clip else optax.identity()
    adamw = optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                        weight_decay=optim.weight_decay,
                        mask=lambda p: decay_mask(p, optim.decay_embeddings))
    return optax.chain(clip, adamw), schedule
