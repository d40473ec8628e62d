"""From a dataset name to batches: prepare, tokenize, window, shuffle, batch, shard per host.

    data = build_data(config)
    batch = next(data.train)        # {inputs, targets}: int32 [batch_size // processes, seq_len]
    state = data.train.get_state()  # its position; set_state(state) resumes at the same batch
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import grain
import numpy as np
from absl import logging

from gptjax.config import Config, ConfigError
from gptjax.data import tokens as tokens_lib
from gptjax.data.datasets import Corpus, load_corpus
from gptjax.data.windows import Windows, host_batches

VAL_SEED = 0  # validation windows are drawn the same way for every run, so runs compare
# Batches cost tens of microseconds; a prefetch thread would only compete with XLA for the
# CPU, and on accelerators JAX's async dispatch already overlaps the next batch with the step.
READ_OPTIONS = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


@dataclasses.dataclass
class Data:
    """The tokenizer, the endless training iterator and deterministic validation batches."""

    tokenizer: Any
    train: grain.DatasetIterator  # get_state() / set_state(); orbax: grain.checkpoint
    train_dataset: grain.IterDataset  # iter() of it starts again from the first batch
    val_dataset: grain.MapDataset
    corpus: Corpus
    seq_len: int
    global_batch_size: int
    process_index: int
    process_count: int
    train_tokens: int
    val_tokens: int
    train_windows: int  # per epoch
    val_windows: int

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def local_batch_size(self) -> int:
        return self.global_batch_size // self.process_count

    def val_batches(self, num_batches: int) -> Iterator[dict[str, np.ndarray]]:
        """The same `num_batches` validation batches on every call (windows repeat if fewer)."""
        if num_batches * self.global_batch_size > self.val_windows:
            logging.log_first_n(
                logging.INFO, "validation: %d batches of %d need more than the %d windows of "
                "the split, so some windows count twice", 1, num_batches,
                self.global_batch_size, self.val_windows)
        return iter(self.val_dataset[:num_batches].to_iter_dataset(READ_OPTIONS))


def build_data(config: Config, *, tokenizer=None, process_index: int | None = None,
               process_count: int | None = None) -> Data:
    """Prepare the dataset, build the tokenizer (char: from its text) and the batch iterators.

    `tokenizer` replaces the one config.data.tokenizer names (e.g. the one saved beside a
    checkpoint). The process index/count default to jax's.
    """
    data = config.data
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if data.batch_size % process_count:
        raise ConfigError(
            f"data.batch_size={data.batch_size} must be divisible by the number of processes "
            f"({process_count}): each process loads batch_size // processes rows; use a "
            f"multiple of {process_count}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")

    if data.dataset == "mqar":  # synthetic recall task: token ids, no text or tokenizer
        from gptjax.data.mqar import build_mqar

        return build_mqar(config, process_index=process_index, process_count=process_count)
    if data.dataset == "task":  # fine-tuning examples: one row each, answers scored
        from gptjax.data.tasks import build_task_data

        return build_task_data(config, tokenizer, process_index=process_index,
                               process_count=process_count)
    corpus = load_corpus(data)
    if tokenizer is None:
        text = None
        if data.tokenizer == "char":  # the vocabulary is every character of the dataset
            text = "".join(t for split in (corpus.train_split, corpus.val_split)
                           for _, t in corpus.documents(split))
        tokenizer = tokens_lib.make_tokenizer(data.tokenizer, text)
    if config.model.vocab_size and config.model.vocab_size < tokenizer.vocab_size:
        raise ConfigError(
            f"model.vocab_size={config.model.vocab_size} is smaller than the tokenizer's "
            f"{tokenizer.vocab_size} tokens (data.tokenizer={data.tokenizer!r}); set "
            "model.vocab_size=0 to take the tokenizer's size")

    train_tokens = tokens_lib.token_stream(corpus, corpus.train_split, tokenizer)
    val_tokens = tokens_lib.token_stream(corpus, corpus.val_split, tokenizer)
    for split, tokens in (("train", train_tokens), ("validation", val_tokens)):
        if len(tokens) < data.seq_len + 1:
            raise ConfigError(
                f"data.seq_len={data.seq_len} needs windows of {data.seq_len + 1} tokens, but the "
                f"{split} split of {corpus.name} has only {len(tokens)} tokens; lower "
                "data.seq_len, use a longer text"
                + (" or raise data.val_fraction" if split == "validation" else ""))

    seed = config.train.seed % 2**32
    train = Windows(train_tokens, data.seq_len, seed=seed, shuffle=data.shuffle,
                    phased=data.shuffle)
    val = Windows(val_tokens, data.seq_len, seed=VAL_SEED, shuffle=True, phased=False)
    train_dataset = host_batches(train, data.batch_size, process_index,
                                 process_count).to_iter_dataset(READ_OPTIONS)
    return Data(
        tokenizer=tokenizer, train=iter(train_dataset), train_dataset=train_dataset,
        val_dataset=host_batches(val, data.batch_size, process_index, process_count),
        corpus=corpus, seq_len=data.seq_len, global_batch_size=data.batch_size,
        process_index=process_index, process_count=process_count,
        train_tokens=len(train_tokens), val_tokens=len(val_tokens),
        train_windows=train.count, val_windows=val.count)


def to_global(batch: Mapping[str, np.ndarray], sharding) -> dict[str, Any]:
    """Host-local numpy batch -> global jax.Arrays (each process holds its rows).

    `sharding` is one jax.sharding.Sharding for every array, or a dict like `batch`.
    """
    import jax

    def put(x, s):
        try:
            return jax.make_array_from_process_local_data(s, x)
        except ValueError as e:
            raise ValueError(
                f"a host batch of shape {x.shape} does not fit sharding {s}: the batch "
                "(data.batch_size // processes rows here) must divide over this process's "
                f"devices along the batch axes ({e})") from e

    if isinstance(sharding, Mapping):
        return {k: put(v, sharding[k]) for k, v in batch.items()}
    return {k: put(v, sharding) for k, v in batch.items()}
