"""Optional loss-spike skipping (train.skip_spikes), after MaxText's skip_step_on_spikes and
OLMo-core's skip-step optimizer: a step whose loss or gradient norm is above the mean +
train.spike_threshold standard deviations of the last train.spike_window finite steps is skipped
exactly like a non-finite one (gptjax.training.steps): params and optimizer state unchanged,
`skipped_steps` and `spike_steps` in its metrics, and it counts toward
train.max_consecutive_skips (gptjax.training.skips).

The statistics are a small pytree in TrainState.spikes, so checkpoints hold them and a resume
stays bitwise; with skip_spikes off it is None and the state (hence a checkpoint) is exactly
what it was before this feature. Every finite step's values enter the window, spikes included
(as MaxText's): a lasting change of regime widens the window's spread and is soon accepted
rather than skipped forever; a short burst is skipped; a long one stops the run at
train.max_consecutive_skips. Non-finite values never enter it.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp

from gptjax.config import ConfigError, TrainConfig


def init(tcfg: TrainConfig) -> dict | None:
    """Empty statistics for train.spike_window steps, or None when train.skip_spikes is off."""
    if not tcfg.skip_spikes:
        return None
    window = jnp.zeros((tcfg.spike_window,), jnp.float32)
    # count: finite steps recorded so far (not capped: spike_warmup may exceed the window)
    return {"losses": window, "grad_norms": window, "count": jnp.zeros((), jnp.int32)}


def _mean_std(values, count):
    """Mean and sample standard deviation (Bessel) of the first min(count, window) values."""
    n = jnp.minimum(count, values.shape[0]).astype(jnp.float32)
    held = jnp.arange(values.shape[0]) < count
    mean = jnp.sum(jnp.where(held, values, 0.0)) / jnp.maximum(n, 1.0)
    var = jnp.sum(jnp.where(held, jnp.square(values - mean), 0.0)) / jnp.maximum(n - 1.0, 1.0)
    return mean, jnp.sqrt(var)


def is_spike(stats, loss, grad_norm, tcfg: TrainConfig):
    """True where `loss` or `grad_norm` is above its window's mean + k std, once
    train.spike_warmup finite steps are recorded."""
    above = []
    for values, x in ((stats["losses"], loss), (stats["grad_norms"], grad_norm)):
        mean, std = _mean_std(values, stats["count"])
        above.append(x > mean + tcfg.spike_threshold * std)
    return (stats["count"] >= tcfg.spike_warmup) & (above[0] | above[1])


def record(stats, loss, grad_norm, finite):
    """The statistics with this step's values added where `finite` (the oldest dropped)."""
    at = stats["count"] % stats["losses"].shape[0]
    return {"losses": jnp.where(finite, stats["losses"].at[at].set(loss), stats["losses"]),
            "grad_norms": jnp.where(finite, stats["grad_norms"].at[at].set(grad_norm),
                                    stats["grad_norms"]),
            "count": stats["count"] + finite.astype(jnp.int32)}


def check_resume(saved: Mapping[str, Any], tcfg: TrainConfig, where: str) -> None:
    """ConfigError if a resume changes what the checkpoint's state holds: the statistics exist
    only with train.skip_spikes, sized by train.spike_window."""
    old = saved.get("train", {})
    held = (bool(old.get("skip_spikes", False)), old.get("spike_window", 100))
    if held[0] == tcfg.skip_spikes and (not held[0] or held[1] == tcfg.spike_window):
        return
    raise ConfigError(
        f"{where} holds checkpoints written with train.skip_spikes={held[0]}"
        + (f", train.spike_window={held[1]}" if held[0] else "")
        + f", but the config says train.skip_spikes={tcfg.skip_spikes}"
        + (f", train.spike_window={tcfg.spike_window}" if tcfg.skip_spikes else "")
        + ": the spike statistics are part of the checkpointed state. Resume with the "
        "checkpoint's values, or train in another --workdir. Nothing was changed in the workdir.")
