"""Whether the compiled train step fits in the devices' memory, checked before it first runs.

A step that does not fit fails deep inside XLA (RESOURCE_EXHAUSTED, with pages of HLO) on an
accelerator, or on a CPU host gets the process killed by the operating system, with no message at
all. XLA's own plan for the compiled program (its memory analysis: arguments, outputs and
temporaries per device) is known once the step is compiled, before any of it runs: a plan larger
than the memory there is refused with a ConfigError that names the fields that make a step smaller.

The plan is a lower bound (XLA:CPU's library calls hold scratch of their own), so the check
refuses only steps that cannot fit, never one that might.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
from absl import logging

from gptjax.config import Config, ConfigError

GIB = 2 ** 30


def planned_bytes(analysis) -> int:
    """Memory a compiled program needs on one device: arguments, the outputs that do not reuse a
    donated argument's buffer, and temporaries."""
    return (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
            - analysis.alias_size_in_bytes + analysis.temp_size_in_bytes)


def available_bytes(device) -> tuple[int, str] | None:
    """(bytes one device's program may use, where they come from), or None if unknown. An
    accelerator's allocator limit; on CPU devices, the host's available memory shared by this
    process's devices (Linux's MemAvailable + SwapFree: a step that would only swap is slow,
    not refused)."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"on each {device.device_kind}"
    if device.platform != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        free = sum(int(fields[k].split()[0]) * 1024 for k in ("MemAvailable", "SwapFree")
                   if k in fields)
    except (OSError, ValueError):
        return None
    if not free:
        return None
    n = jax.local_device_count()
    return free // n, (f"of the host's {free / GIB:.1f} GiB of available memory (RAM and swap) "
                       f"shared by {n} CPU devices" if n > 1
                       else "of the host's available memory (RAM and swap)")


def advice(config: Config, shrink: float = 2.0, state_heavy: bool = True,
           shards: int = 1) -> str:
    """The fields that make a train step need less memory, for this config; `shrink`: by how
    much the step's temporaries must shrink (the grad_accum suggested splits the batch so, into
    micro-batches that still split over the `shards` the batch is split over);
    state_heavy: the train state itself is a large share (sharding it is worth suggesting)."""
    fixes = []
    b, k = config.data.batch_size, config.optim.grad_accum
    more = next((n for n in range(max(2 * k, math.ceil(k * shrink)), b + 1)
                 if b % n == 0 and (b // n) % shards == 0), None)
    if more is not None:
        fixes.append(f"optim.grad_accum={more} (micro-batches of {b // more})")
    if not config.model.remat:
        fixes.append("model.remat=True (recompute activations in the backward pass)")
    if state_heavy and jax.device_count() > 1 and config.mesh.strategy == "jit":
        fixes.append("mesh.fsdp (shard the parameters and optimizer state over the devices)")
    if config.train.steps_per_call > 1:
        fixes.append(f"train.steps_per_call=1 (now {config.train.steps_per_call} batches "
                     "are held at once)")
    fixes.append("a smaller data.batch_size or model")
    return "; ".join(fixes)


def check_fits(compiled, config: Config, what: str = "the train step", shards: int = 1) -> None:
    """ConfigError if XLA's plan for `compiled` exceeds the memory of one of its devices (a
    warning instead when several processes run: their hosts' free memory may differ, and one
    process stopping alone would leave the others waiting in a collective)."""
    analysis = compiled.memory_analysis()
    found = available_bytes(jax.local_devices()[0])
    if analysis is None or found is None:
        return
    need, (limit, where) = planned_bytes(analysis), found
    held = need - analysis.temp_size_in_bytes  # state and batch: no micro-batching shrinks them
    if need <= limit:
        return
    fixes = advice(config, shrink=analysis.temp_size_in_bytes / max(1, limit - held),
                   state_heavy=held > limit / 4, shards=shards)
    text = (f"{what} needs {need / GIB:.2f} GiB per device by XLA's plan "
            f"({analysis.argument_size_in_bytes / GIB:.2f} GiB of train state and batch, "
            f"{analysis.temp_size_in_bytes / GIB:.2f} GiB of temporaries), more than the "
            f"{limit / GIB:.2f} GiB {where}; nothing was trained. Make it smaller: "
            f"{fixes}")
    if jax.process_count() > 1:
        logging.warning("%s (process %d goes on, and may run out of memory)", text,
                        jax.process_index())
        return
    raise ConfigError(text)


class Checked:
    """A jitted step that, on its first call, is compiled for those arguments and checked with
    check_fits before it runs; every call runs that compiled program (no second trace)."""

    def __init__(self, step: Callable, config: Config, what: str = "the train step",
                 shards: int = 1):
        """shards: how many ways the plan splits a batch (micro-batches must split so too)."""
        self.step, self.config, self.what, self.shards = step, config, what, shards
        self.compiled: Callable | None = None

    def __call__(self, *args):
        if self.compiled is None:
            compiled = self.step.lower(*args).compile()
            check_fits(compiled, self.config, self.what, self.shards)
            self.compiled = compiled
        return self.compiled(*args)
