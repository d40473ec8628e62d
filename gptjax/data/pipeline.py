"""From a dataset name to batches: the registry of dataset builders, and build_data.

    data = build_data(config)
    batch = next(data.train)        # {inputs, targets}: int32 [batch_size // processes, seq_len]
    state = data.train.get_state()  # its position; set_state(state) resumes at the same batch

Adding a dataset is one builder `(config, tokenizer, process_index, process_count) -> Data`
(a text corpus: one corpus function wrapped by text_dataset), one line in DATASETS and a test.
Any other name is looked up in the TFDS catalog, the one open-ended family.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from gptjax.config import Config, ConfigError
from gptjax.data import datasets
from gptjax.data.base import Data
from gptjax.data.mqar import build_mqar
from gptjax.data.shards import build_tokens
from gptjax.data.tasks import build_task_data
from gptjax.data.text import TextData, build_text, text_dataset

Builder = Callable[[Config, Any, int, int], Data]  # (config, tokenizer or None, index, count)

DATASETS: dict[str, Builder] = {
    "text_file": text_dataset(datasets.text_file),  # local text file(s): data.text_file
    "embedded": text_dataset(datasets.embedded),  # CPython's documentation, no download
    "mqar": build_mqar,  # synthetic recall task: token ids, no text or tokenizer
    "task": build_task_data,  # fine-tuning examples in data.text_file, answers scored
    "tokens": build_tokens,  # shards in data.tokens_dir, written by experiments.prepare_data
}


def catalog_dataset(config: Config, tokenizer, process_index: int,
                    process_count: int) -> TextData:
    """The fallback for names outside DATASETS: a TFDS catalog text dataset."""
    data = config.data
    name = data.dataset
    if not isinstance(name, str) or not name.strip():
        raise unknown_dataset(str(name))
    try:
        corpus = datasets.catalog(name, data, datasets.data_dir(data))
    except datasets.NotInCatalogError as e:
        raise unknown_dataset(name, f" ({e})") from None
    return build_text(config, corpus, tokenizer, process_index, process_count)


def unknown_dataset(name: str, why: str = "") -> ConfigError:
    close = difflib.get_close_matches(
        name, sorted(set(DATASETS) | set(datasets.catalog_names())), n=3)
    return ConfigError(
        f"data.dataset={name!r} is unknown{why}: choose one of gptjax's datasets "
        f"{sorted(DATASETS)} or a TFDS catalog name (e.g. 'tiny_shakespeare', 'lm1b'; see "
        "tfds.list_builders())" + (f"; did you mean {' or '.join(map(repr, close))}?"
                                   if close else ""))


def _processes(batch_size: int, process_index: int | None,
               process_count: int | None) -> tuple[int, int]:
    """(index, count), jax's where not given; every process loads batch_size // count rows."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if batch_size % process_count:
        raise ConfigError(
            f"data.batch_size={batch_size} must be divisible by the number of processes "
            f"({process_count}): each process loads batch_size // processes rows; use a "
            f"multiple of {process_count}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    return process_index, process_count


def build_data(config: Config, *, tokenizer=None, process_index: int | None = None,
               process_count: int | None = None) -> Data:
    """The dataset config.data.dataset names (DATASETS, else the TFDS catalog), built for this
    process.

    `tokenizer` replaces the one config.data.tokenizer names (e.g. the one saved beside a
    checkpoint). The process index/count default to jax's.
    """
    process_index, process_count = _processes(config.data.batch_size, process_index,
                                              process_count)
    build = DATASETS.get(config.data.dataset, catalog_dataset)
    data = build(config, tokenizer, process_index, process_count)
    # After the build, which makes the tokenizer (char: from the text); the token streams
    # it wrote to the cache serve the corrected run.
    vocab = config.model.vocab_size
    if vocab and vocab < data.vocab_size:
        source = (f"the tokenizer of data.tokens_dir={config.data.tokens_dir!r}"
                  if config.data.dataset == "tokens" else
                  f"data.tokenizer={config.data.tokenizer!r}")
        raise ConfigError(
            f"model.vocab_size={vocab} is smaller than the tokenizer's {data.vocab_size} tokens "
            f"({source}); set model.vocab_size=0 to take the tokenizer's size")
    return data


def to_global(batch: Mapping[str, np.ndarray], sharding) -> dict[str, Any]:
    """Host-local numpy batch -> global jax.Arrays (each process holds its rows).

    `sharding` is one jax.sharding.Sharding for every array, or a dict like `batch`.
    """
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
