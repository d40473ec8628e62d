"""The host side of skipped steps: the train step (gptjax.training.steps) keeps the params and
optimizer state when a step's loss or gradient norm is not finite and reports it as
`skipped_steps`; the loop counts skips in a row here and stops the run after
train.max_consecutive_skips of them with a NonFiniteError.

A skipped step still counts as a step: it consumes its batch and the step counter (hence the
dropout keys and the checkpoint steps) moves on, as in MaxText and Levanter. The optimizer's own
count, which drives the learning-rate schedule and Adam's bias correction, advances only with
applied updates (as optax.apply_if_finite's inner state), and the `lr` column follows it.
Not optax.apply_if_finite itself: it looks at the gradients only, and its counters in the
optimizer state would change the checkpoints' structure (older checkpoints must still load).
The count of skips in a row starts afresh when a run resumes. Loss spikes skipped under
train.skip_spikes (gptjax.training.spikes) count as skips too: a spike regime that lasts
stops the run rather than skipping every step. A float16 step whose overflow halved the loss
scale (`overflow_steps`, gptjax.training.loss_scale) is skipped but counts neither way: it
neither adds to the skips in a row nor ends them (no update was applied). Once the scale is at
its floor, an overflowing step is an ordinary skip.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np


class NonFiniteError(RuntimeError):
    """The run stopped: too many steps in a row had a non-finite loss or gradient norm."""


@dataclasses.dataclass
class SkipGuard:
    """Counts skipped steps in a row from the steps' flags: {'skipped_steps', and for float16
    'overflow_steps'} (device scalars); a skip that halved the loss scale is not counted.

    Flags are read once their step has finished, so the host keeps running one step ahead of
    the device; `observe(..., wait=True)` reads the newest one too (before a checkpoint).
    """

    limit: int  # train.max_consecutive_skips; 0: never stop
    last_applied: int  # the newest step whose update was applied (or the run's start)
    streak: int = 0  # skipped steps in a row, up to the newest flag read
    unread: list = dataclasses.field(default_factory=list)  # [(step, flags, steps)] unread

    def observe(self, step: int, flags: dict, *, wait: bool, steps: int = 1) -> int | None:
        """Add the flags of the call that ended at `step` (steps > 1: a leading axis of its
        steps, oldest first) and read the finished calls' (all of them when `wait`): the step
        at which the skips in a row reached the limit, or None."""
        self.unread.append((step, flags, steps))
        ready = self.unread if wait else self.unread[:-1]
        if not ready:
            return None
        values = jax.device_get([f for _, f, _ in ready])
        self.unread = self.unread[len(ready):]
        for (end, _, n), value in zip(ready, values):
            rows = {k: np.asarray(v).reshape(n, -1) for k, v in value.items()}
            for i in range(n):
                s = end - n + 1 + i
                if "overflow_steps" in rows and rows["overflow_steps"][i].max() > 0:
                    continue  # the loss scale was halved
                if rows["skipped_steps"][i].max() > 0:  # pmap: one copy per device, all equal
                    self.streak += 1
                else:
                    self.streak, self.last_applied = 0, s
                if self.limit and self.streak >= self.limit:
                    return s
        return None


def error(guard: SkipGuard, step: int, checkpoint: str | None, config) -> NonFiniteError:
    """The error that stops a run at `step`; `checkpoint`: 'step N at PATH' of the newest
    checkpoint on disk, or None."""
    saved = (f"the newest checkpoint is {checkpoint} (no checkpoint holds a non-finite value: "
             "skipped steps never change the state)" if checkpoint
             else "no checkpoint was saved yet")
    model = config.model
    return NonFiniteError(
        f"step {step}: {guard.streak} steps in a row (train.max_consecutive_skips="
        f"{guard.limit}) had a non-finite loss or gradient norm"
        f"{' or a loss spike (train.skip_spikes)' if config.train.skip_spikes else ''} and "
        "were skipped; the last "
        f"update applied was step {guard.last_applied}; {saved}. Likely causes: a learning "
        f"rate too high (optim.lr={config.optim.lr:g}: lower it or lengthen "
        f"optim.warmup_steps={config.optim.warmup_steps}), float16 overflow (model.dtype="
        f"{model.dtype}{' even at a loss scale of 1' if model.dtype == 'float16' else ''}"
        ": use bfloat16 or float32), or bad data. Fix it and run the same command "
        "to resume from the newest checkpoint (or raise train.max_consecutive_skips; 0 never "
        "stops).")
