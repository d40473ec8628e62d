"""Tokenizing prepare_data's documents in worker processes, in order, with bounded memory."""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import os
import sys
from collections.abc import Iterable, Iterator

from gptjax.data.prepare.documents import Record
from gptjax.tokenizers import encode_documents

BATCH_BYTES = 1 << 20  # text per worker task: big enough to amortise pickling, small in memory
BATCH_DOCUMENTS = 4096
IN_FLIGHT = 2  # batches queued per worker: keeps workers busy, bounds memory


@contextlib.contextmanager
def _unnamed_main():
    """Spawned workers re-run __main__ (the CLI imports JAX and TFDS: ~6 s and ~300 MB each)
    unless it has no name; they need only gptjax.tokenizers."""
    main = sys.modules["__main__"]
    saved = {k: main.__dict__[k] for k in ("__spec__", "__file__") if k in main.__dict__}
    main.__spec__ = None
    main.__dict__.pop("__file__", None)
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


@contextlib.contextmanager
def _serial_tokenizers(num_workers: int):
    """Workers spawned inside inherit TOKENIZERS_PARALLELISM=false (unless the user set it): with
    several workers the processes are the parallelism, and each worker's Rayon threads (as many
    as cores, for BPEs that tiktoken cannot encode) would only contend with the other workers."""
    if num_workers < 2 or "TOKENIZERS_PARALLELISM" in os.environ:
        yield
        return
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        del os.environ["TOKENIZERS_PARALLELISM"]


@contextlib.contextmanager
def encoder(num_workers: int, folder: str):
    """encode(batches of (Record, split)) -> (batch, encode_documents' result), in order, by
    `num_workers` processes (0: this one), IN_FLIGHT batches queued per worker (bounded memory)."""
    if num_workers == 0:
        yield lambda batches: ((b, encode_documents(folder, [r.text for r, _ in b]))
                               for b in batches)
        return
    # spawn: a fork of a process that has started JAX's threads can deadlock
    with _unnamed_main(), _serial_tokenizers(num_workers):
        pool = multiprocessing.get_context("spawn").Pool(num_workers)

    def encode(batches: Iterable[list[tuple[Record, str]]]):
        pending = collections.deque()
        for batch in batches:
            texts = [record.text for record, _ in batch]
            pending.append((batch, pool.apply_async(encode_documents, (folder, texts))))
            if len(pending) >= IN_FLIGHT * num_workers:
                batch, result = pending.popleft()
                yield batch, result.get()
        while pending:
            batch, result = pending.popleft()
            yield batch, result.get()

    try:
        yield encode
    finally:
        pool.terminate()
        pool.join()


def batches(items: Iterator[tuple[Record, str]]) -> Iterator[list[tuple[Record, str]]]:
    """The items in lists of BATCH_BYTES of text or BATCH_DOCUMENTS documents, in order."""
    batch, size = [], 0
    for item in items:
        batch.append(item)
        size += len(item[0].text)
        if size >= BATCH_BYTES or len(batch) >= BATCH_DOCUMENTS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch
