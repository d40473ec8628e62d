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

import dataclasses
from collections.abc import Callable

import grain
import numpy as np

from gptjax.config import Config, ConfigError
from gptjax.data.base import READ_OPTIONS, Batch, Epochs, endless_batches

VAL_SEED = 0  # validation windows are drawn the same way for every run, so runs compare


def check_one_window(num_tokens: int, seq_len: int, where: str, fix: str) -> None:
    """ConfigError unless a split of num_tokens tokens (`where`: which) holds a window of
    seq_len + 1; `fix` is what else than a lower data.seq_len gives it one."""
    if num_tokens < seq_len + 1:
        raise ConfigError(f"data.seq_len={seq_len} needs windows of {seq_len + 1} tokens, but "
                          f"{where} has only {num_tokens} tokens; lower data.seq_len, {fix}")


def window_count(num_tokens: int, seq_len: int, phased: bool) -> int:
    """Windows per epoch; a phased epoch leaves room to start up to seq_len-1 tokens late."""
    count = (num_tokens - 1) // seq_len
    return (num_tokens - seq_len) // seq_len if phased and count > 1 else count


class Windows:
    """Row n of an endless, epoch-wise shuffled stream of [seq_len+1] windows of `tokens`."""

    def __init__(self, tokens, seq_len: int, *, seed: int, shuffle: bool, phased: bool):
        # An array (a memmap's plain view: slicing a memmap is slow), or a stream with
        # len() and windows(starts, length), as gptjax.data.shards' several shards are.
        self.tokens = tokens if hasattr(tokens, "windows") else np.asarray(tokens)
        self.seq_len = seq_len
        self.count = window_count(len(tokens), seq_len, phased)
        # Phases that keep every window of an epoch inside the stream: [0, slack].
        self.slack = min(seq_len - 1, len(tokens) - 1 - self.count * seq_len) if phased else 0
        self.epochs = Epochs(self.count, seed=seed, shuffle=shuffle, slack=self.slack)
        self._offsets = np.arange(seq_len + 1)

    def starts(self, rows: np.ndarray) -> np.ndarray:
        """The first token of each row (global row indices)."""
        phases, windows = self.epochs.locate(rows)
        return phases + windows * self.seq_len

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """[len(rows), seq_len + 1] tokens."""
        if not isinstance(self.tokens, np.ndarray):
            return self.tokens.windows(self.starts(rows), self.seq_len + 1)
        return self.tokens[self.starts(rows)[:, None] + self._offsets]


def host_batches(windows: Windows, global_batch: int, process_index: int,
                 process_count: int, extras: Callable[[np.ndarray], Batch] | None = None
                 ) -> grain.MapDataset:
    """Endless MapDataset of this process's {'inputs', 'targets'}: int32 [local, seq_len].

    Batch t holds this process's rows of global batch t (gptjax.data.base.host_rows), so the
    processes' batches, concatenated in process order, are the single-process batch.
    `extras(inputs)` adds arrays of the same shape (gptjax.data.shards: segment ids).
    """
    def batch(t: int, rows: np.ndarray) -> Batch:
        tokens = windows.rows(rows).astype(np.int32)
        out = {"inputs": np.ascontiguousarray(tokens[:, :-1]),
               "targets": np.ascontiguousarray(tokens[:, 1:])}
        if extras is not None:
            out.update(extras(out["inputs"]))
        return out

    return endless_batches(batch, global_batch, process_index, process_count)


@dataclasses.dataclass(frozen=True)
class SplitBatches:
    """A token dataset's two splits as this process's batches (what split_batches builds)."""

    train_dataset: grain.IterDataset  # iter() of it starts again from the first batch
    val_dataset: grain.MapDataset
    train_windows: int  # per epoch
    val_windows: int


def split_batches(config: Config, train_tokens, val_tokens, process_index: int,
                  process_count: int, extras: Callable[[np.ndarray], Batch] | None = None
                  ) -> SplitBatches:
    """Train windows shuffled (and phased) by train.seed as data.shuffle says, validation
    windows by VAL_SEED, each as this process's batches (host_batches)."""
    data = config.data
    train = Windows(train_tokens, data.seq_len, seed=config.train.seed % 2**32,
                    shuffle=data.shuffle, phased=data.shuffle)
    val = Windows(val_tokens, data.seq_len, seed=VAL_SEED, shuffle=True, phased=False)
    return SplitBatches(
        train_dataset=host_batches(train, data.batch_size, process_index, process_count,
                                   extras).to_iter_dataset(READ_OPTIONS),
        val_dataset=host_batches(val, data.batch_size, process_index, process_count, extras),
        train_windows=train.count, val_windows=val.count)
