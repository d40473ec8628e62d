"""Token stream -> shuffled seq_len+1 windows -> this host's rows of each global batch.

Windows are non-overlapping seq_len+1 slices of the stream (neighbours share one token, so every
token is a target once per epoch). Each epoch permutes them with (seed, epoch) and starts them at
a phase in [0, seq_len) drawn from the same pair, so later epochs see other cuts of the text, as
nanoGPT's random offsets do, while one epoch still covers the text once. Row n of the endless
stream is a pure function of (seed, n), so a position is one integer, and global batch t is rows
[t * batch, (t + 1) * batch) whatever the number of processes that share it.

The permutation is numpy's, one per epoch for a whole batch at once: grain's per-element
`shuffle` costs ~10-40 us a row in Python, too much for a 64 x 1024 batch on a busy host.
"""

from __future__ import annotations

import sys

import grain
import numpy as np


def window_count(num_tokens: int, seq_len: int, phased: bool) -> int:
    """Windows per epoch; a phased epoch leaves room to start up to seq_len-1 tokens late."""
    count = (num_tokens - 1) // seq_len
    return (num_tokens - seq_len) // seq_len if phased and count > 1 else count


class Windows:
    """Row n of an endless, epoch-wise shuffled stream of [seq_len+1] windows of `tokens`."""

    def __init__(self, tokens: np.ndarray, seq_len: int, *, seed: int, shuffle: bool,
                 phased: bool):
        self.tokens = np.asarray(tokens)  # a memmap's plain view: slicing a memmap is slow
        self.seq_len, self.seed, self.shuffle = seq_len, seed, shuffle
        self.count = window_count(len(tokens), seq_len, phased)
        # Phases that keep every window of an epoch inside the stream: [0, slack].
        self.slack = min(seq_len - 1, len(tokens) - 1 - self.count * seq_len) if phased else 0
        self._offsets = np.arange(seq_len + 1)
        self._epochs: dict[int, tuple[int, np.ndarray | None]] = {}

    def _epoch(self, epoch: int) -> tuple[int, np.ndarray | None]:
        """(phase, order of the windows) of `epoch`; a batch spans at most a few epochs."""
        if epoch not in self._epochs:
            if len(self._epochs) >= 4:
                self._epochs.pop(next(iter(self._epochs)))
            rng = np.random.default_rng([self.seed, epoch])
            phase = int(rng.integers(self.slack + 1)) if self.slack > 0 else 0
            order = rng.permutation(self.count) if self.shuffle else None
            self._epochs[epoch] = (phase, order)
        return self._epochs[epoch]

    def starts(self, rows: np.ndarray) -> np.ndarray:
        """The first token of each row (global row indices)."""
        epochs, within = np.divmod(np.asarray(rows, np.int64), self.count)
        starts = np.empty_like(within)
        for epoch in np.unique(epochs):
            phase, order = self._epoch(int(epoch))
            mine = epochs == epoch
            windows = order[within[mine]] if order is not None else within[mine]
            starts[mine] = phase + windows * self.seq_len
        return starts

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """[len(rows), seq_len + 1] tokens."""
        return self.tokens[self.starts(rows)[:, None] + self._offsets]


def host_batches(windows: Windows, global_batch: int, process_index: int,
                 process_count: int) -> grain.MapDataset:
    """Endless MapDataset of this process's {'inputs', 'targets'}: int32 [local, seq_len].

    Batch t holds rows t * global_batch + process_index * local + [0, local) of `windows`, so
    the processes' batches, concatenated in process order, are the single-process batch.
    """
    local = global_batch // process_count
    first = process_index * local + np.arange(local)

    def batch(t: int) -> dict[str, np.ndarray]:
        rows = windows.rows(t * global_batch + first).astype(np.int32)
        return {"inputs": np.ascontiguousarray(rows[:, :-1]),
                "targets": np.ascontiguousarray(rows[:, 1:])}

    return grain.MapDataset.range(sys.maxsize).map(batch)
