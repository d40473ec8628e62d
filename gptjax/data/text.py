"""A text corpus as a dataset: tokenize, window, shuffle, batch, this host's rows.

    builder = text_dataset(datasets.text_file)     # what gptjax.data.DATASETS registers
    data = builder(config, None, process_index, process_count)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import grain
from absl import logging

from gptjax.config import Config, DataConfig
from gptjax.data import tokens as tokens_lib
from gptjax.data.base import Batch, BatchData
from gptjax.data.datasets import Corpus, data_dir
from gptjax.data.windows import check_one_window, split_batches
from gptjax.tokenizers import Tokenizer


@dataclasses.dataclass(kw_only=True)
class TextData(BatchData):
    """Windows of a tokenized text corpus; a gptjax.data.Data."""

    train_dataset: grain.IterDataset  # iter() of it starts again from the first batch
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
    def local_batch_size(self) -> int:
        return self.global_batch_size // self.process_count

    def val_batches(self, num_batches: int) -> Iterator[Batch]:
        """The same `num_batches` validation batches on every call (windows repeat if fewer)."""
        if num_batches * self.global_batch_size > self.val_windows:
            logging.log_first_n(
                logging.INFO, "validation: %d batches of %d need more than the %d windows of "
                "the split, so some windows count twice", 1, num_batches,
                self.global_batch_size, self.val_windows)
        return super().val_batches(num_batches)


def _tokenizer(data: DataConfig, corpus: Corpus):
    """The tokenizer data.tokenizer names; 'char' takes every character of the corpus."""
    text = None
    if data.tokenizer == "char":
        text = "".join(t for split in (corpus.train_split, corpus.val_split)
                       for _, t in corpus.documents(split))
    return Tokenizer.from_name(data.tokenizer, corpus=text)


def build_text(config: Config, corpus: Corpus, tokenizer, process_index: int,
               process_count: int) -> TextData:
    """Tokenize `corpus` (by `tokenizer`, or the one data.tokenizer names) and window it."""
    data = config.data
    tokenizer = tokenizer if tokenizer is not None else _tokenizer(data, corpus)
    train_tokens = tokens_lib.token_stream(corpus, corpus.train_split, tokenizer)
    val_tokens = tokens_lib.token_stream(corpus, corpus.val_split, tokenizer)
    for split, tokens in (("train", train_tokens), ("validation", val_tokens)):
        check_one_window(len(tokens), data.seq_len, f"the {split} split of {corpus.name}",
                         "use a longer text" + (" or raise data.val_fraction"
                                                if split == "validation" else ""))

    batches = split_batches(config, train_tokens, val_tokens, process_index, process_count)
    return TextData(
        tokenizer=tokenizer, train=iter(batches.train_dataset),
        train_dataset=batches.train_dataset, val_dataset=batches.val_dataset,
        vocab_size=tokenizer.vocab_size, corpus=corpus, seq_len=data.seq_len,
        global_batch_size=data.batch_size, process_index=process_index,
        process_count=process_count, train_tokens=len(train_tokens),
        val_tokens=len(val_tokens), train_windows=batches.train_windows,
        val_windows=batches.val_windows)


def text_dataset(corpus: Callable[[DataConfig, str | None], Corpus]):
    """The registry's builder for a corpus function `(DataConfig, data_dir) -> Corpus`."""
    def build(config: Config, tokenizer: Any, process_index: int,
              process_count: int) -> TextData:
        return build_text(config, corpus(config.data, data_dir(config.data)), tokenizer,
                          process_index, process_count)

    build.__doc__ = corpus.__doc__
    return build
