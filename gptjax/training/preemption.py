"""Preemption: SIGTERM (what schedulers and container stops send) and a first Ctrl-C ask the run
to stop; the loop finishes its step, saves it, waits for the save and returns. A second Ctrl-C
raises KeyboardInterrupt at once (orbax's atomic commit keeps the last finished checkpoint).

One process: a Python signal handler sets a flag, read after every step. Several processes
(jax.distributed): only some may get the signal, and all must stop at the same step with one
checkpoint. jax's preemption sync manager does exactly this: its own SIGTERM handler notifies the
coordination service, and `reached_preemption_sync_point(step)`, asked at every step, turns True
on every process at the same step (the largest step any process had reached, plus one). A first
Ctrl-C there is forwarded to that handler as a SIGTERM to this process.
"""

from __future__ import annotations

import os
import signal
import threading

from absl import logging
from jax._src import distributed
from jax.experimental import multihost_utils

STOP_MESSAGE = "stopped at step {step}; run the same command to resume"


def _sync_manager():
    """jax's preemption sync manager when jax.distributed runs one (else None)."""
    state = distributed.global_state
    return state.preemption_sync_manager if state.client is not None else None


class StopRequest:
    """Within `with StopRequest() as stop:`, SIGTERM and a first Ctrl-C make
    stop.reached(step) True after a step (the same step on every process); the signal handlers
    before it are restored on exit. Off the main thread it installs nothing and never stops."""

    def __init__(self):
        self.signal: int | None = None  # the first signal received here
        self._previous: dict[int, object] = {}
        self._multihost = False

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is not threading.main_thread():
            return self  # signal.signal works only in the main thread
        self._multihost = _sync_manager() is not None
        # Several processes: SIGTERM stays with jax's handler (it tells the other processes).
        wanted = (signal.SIGINT,) if self._multihost else (signal.SIGINT, signal.SIGTERM)
        for signum in wanted:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.signal is not None:
            self.__exit__()  # a third Ctrl-C gets Python's default
            logging.warning("second Ctrl-C: stopping now, without saving this step; the last "
                            "finished checkpoint is kept")
            raise KeyboardInterrupt
        name = signal.Signals(signum).name
        if self.signal is None:
            logging.warning("%s received: finishing this step, saving a checkpoint and stopping "
                            "(Ctrl-C again to stop at once)", name)
        self.signal = signum
        if self._multihost and signum == signal.SIGINT:
            os.kill(os.getpid(), signal.SIGTERM)  # to jax's handler: every process hears of it

    def reached(self, step: int) -> bool:
        """Whether the run stops after `step`. Call it after every step, on every process."""
        if self._multihost:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.signal is not None
