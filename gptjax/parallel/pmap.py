"""The pmap path: plain data parallelism, kept for comparison and for older setups.

The state is replicated on every device, each device runs the same pure step body on its slice
of the batch, and gradients are averaged with `lax.pmean` over AXIS before the optimizer sees
them (gptjax.training.steps.train_step_fn(..., axis_name=AXIS)), so every replica applies the
same update and the state stays identical (returned once, unstacked).
"""

from __future__ import annotations

import jax
import numpy as np

from gptjax.parallel.sharding import ShardingError

AXIS = "devices"  # the pmap axis name gradients and metrics are averaged over


def check_batch(batch_size: int, num_devices: int, what: str = "data.batch_size") -> None:
    """Raise ShardingError unless `batch_size` rows split evenly over `num_devices`."""
    if batch_size % num_devices:
        raise ShardingError(
            f"mesh.strategy='pmap' splits the batch over {num_devices} devices, but "
            f"{what}={batch_size} is not a multiple of {num_devices}; use e.g. "
            f"{what}={-(-batch_size // num_devices) * num_devices}")


def split_batch(batch, num_devices: int):
    """[batch, ...] host arrays -> [num_devices, batch / num_devices, ...] (numpy)."""
    def split(x):
        x = np.asarray(x)
        check_batch(x.shape[0], num_devices, "the per-process batch")
        return x.reshape(num_devices, x.shape[0] // num_devices, *x.shape[1:])

    return jax.tree.map(split, batch)


def pmap_step(fn, *, donate: bool = False, returns_state: bool = True, devices=None):
    """pmap(fn) over every device: state (or params) replicated in and out, batch split,
    metrics averaged. fn(state, batch) -> (state, metrics), or -> metrics if not returns_state.

    `donate` is off by default: the replicated input is broadcast, not owned per device.
    """
    def body(state, batch):
        out = fn(state, batch)
        if returns_state:
            state, metrics = out
            return state, jax.lax.pmean(metrics, AXIS)
        return jax.lax.pmean(out, AXIS)

    return jax.pmap(body, axis_name=AXIS, in_axes=(None, 0),
                    out_axes=(None, None) if returns_state else None,
                    donate_argnums=(0,) if donate else (), devices=devices)
