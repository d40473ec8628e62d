"""What every dataset shares: the Data protocol callers rely on, and how batches are drawn.

A dataset's batches form an endless grain MapDataset: global batch t is rows
[t * global_batch, (t + 1) * global_batch) of an endless row stream, each process takes its
consecutive share of them (`host_rows`), and a row is a pure function of (seed, row), so a
position in the stream is one integer that grain checkpoints.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import grain
import numpy as np

Batch = dict[str, np.ndarray]  # {'inputs', 'targets'}: int32 [batch_size // processes, seq_len]
# (+ 'segment_ids', 'positions' of that shape where data.document_mask asks: shards.py)

# Most batches cost tens of microseconds; a prefetch thread would only compete with XLA for the
# CPU, and on accelerators JAX's async dispatch already overlaps the next batch with the step.
READ_OPTIONS = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


@runtime_checkable
class Data(Protocol):
    """What training, ablate and the tests use of a dataset (every builder returns one)."""

    tokenizer: Any  # encode/decode/save; None where token ids are the task (mqar)
    train: grain.DatasetIterator  # endless; get_state()/set_state(); orbax: grain.checkpoint

    @property
    def vocab_size(self) -> int:
        """Token ids are in [0, vocab_size)."""
        ...

    def val_batches(self, num_batches: int) -> Iterator[Batch]:
        """The same `num_batches` validation batches on every call."""
        ...


@dataclasses.dataclass
class BatchData:
    """A Data whose validation batches are the first ones of an endless MapDataset."""

    tokenizer: Any
    train: grain.DatasetIterator
    val_dataset: grain.MapDataset
    vocab_size: int
    read_options: grain.ReadOptions = dataclasses.field(default_factory=lambda: READ_OPTIONS,
                                                        kw_only=True)

    def val_batches(self, num_batches: int) -> Iterator[Batch]:
        """The same `num_batches` validation batches on every call."""
        return iter(self.val_dataset[:num_batches].to_iter_dataset(self.read_options))


def file_paths(value: str | Sequence[str]) -> list[str]:
    """data.text_file's forms: one path, a list of paths, or 'a.txt,b.txt' from the command line."""
    if isinstance(value, str):
        if "," in value and not os.path.exists(value):
            return [p.strip() for p in value.split(",") if p.strip()]
        return [value]
    return [str(p) for p in value]


def host_rows(batch: int, global_batch: int, process_index: int,
              process_count: int) -> np.ndarray:
    """Global row numbers of this process's share of global batch `batch`: int64 [local].

    The processes' shares, concatenated in process order, are the single-process batch.
    """
    local = global_batch // process_count
    return batch * global_batch + process_index * local + np.arange(local)


def endless_batches(fetch: Callable[[int, np.ndarray], Batch], global_batch: int,
                 process_index: int, process_count: int) -> grain.MapDataset:
    """Endless MapDataset whose batch t is `fetch(t, host_rows(t, ...))`: this process's rows."""
    def batch(t: int) -> Batch:
        return fetch(t, host_rows(t, global_batch, process_index, process_count))

    return grain.MapDataset.range(sys.maxsize).map(batch)


class Epochs:
    """Which of `count` items row n of an endless stream holds: epoch-wise permutations.

    Epoch e permutes the items with a generator seeded by (seed, e); when `slack` > 0 the same
    generator first draws the epoch's phase in [0, slack] (Windows: where its cuts start).
    """

    def __init__(self, count: int, *, seed: int, shuffle: bool, slack: int = 0):
        self.count, self.seed, self.shuffle, self.slack = count, seed, shuffle, slack
        self._epochs: dict[int, tuple[int, np.ndarray | None]] = {}

    def _epoch(self, epoch: int) -> tuple[int, np.ndarray | None]:
        """(phase, order of the items) of `epoch`; a batch spans at most a few epochs."""
        if epoch not in self._epochs:
            if len(self._epochs) >= 4:
                self._epochs.pop(next(iter(self._epochs)))
            rng = np.random.default_rng([self.seed, epoch])
            phase = int(rng.integers(self.slack + 1)) if self.slack > 0 else 0
            order = rng.permutation(self.count) if self.shuffle else None
            self._epochs[epoch] = (phase, order)
        return self._epochs[epoch]

    def locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(phase, item) of each global row: int64 [len(rows)] each."""
        epochs, within = np.divmod(np.asarray(rows, np.int64), self.count)
        phases, items = np.empty_like(within), np.empty_like(within)
        for epoch in np.unique(epochs):
            phase, order = self._epoch(int(epoch))
            mine = epochs == epoch
            phases[mine] = phase
            items[mine] = order[within[mine]] if order is not None else within[mine]
        return phases, items
