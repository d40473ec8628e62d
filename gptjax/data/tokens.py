"""Text to one token stream per split, tokenized once and cached beside the prepared dataset."""

from __future__ import annotations

import os
import pathlib
import re
import tempfile
from collections.abc import Iterator

import numpy as np
from absl import logging

from gptjax.data.datasets import Corpus
from gptjax.tokenizers import fingerprint

ENCODE_GROUP = 1024  # documents per encode_batch call when tokenizing many small documents


def tokenize(documents: Iterator[tuple[int, str]], tokenizer) -> np.ndarray:
    """One token stream: documents in order, eos between them when the tokenizer has one.

    Chunks of one document (same id) join without a separator. uint16 where the vocabulary
    fits (half the memory and disk), else uint32.
    """
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    eos = tokenizer.eos_token_id
    parts: list[np.ndarray] = []
    group: list[tuple[int, str]] = []
    last_doc = None

    def flush():
        nonlocal last_doc
        texts = [text for _, text in group]
        encoded = (tokenizer.encode_batch(texts) if len(texts) > 1
                   and hasattr(tokenizer, "encode_batch") else map(tokenizer.encode, texts))
        for (doc, _), ids in zip(group, encoded):
            if eos is not None and last_doc is not None and doc != last_doc:
                parts.append(np.array([eos], dtype))
            parts.append(np.asarray(ids, dtype))
            last_doc = doc
        group.clear()

    for item in documents:
        group.append(item)
        if len(group) >= ENCODE_GROUP:
            flush()
    flush()
    return np.concatenate(parts) if parts else np.zeros([0], dtype)


def token_stream(corpus: Corpus, split: str, tokenizer) -> np.ndarray:
    """The tokens of `split`, cached as .npy beside the prepared dataset (memory-mapped)."""
    name = re.sub(r"[^A-Za-z0-9_]+", "_", split).strip("_")
    path = pathlib.Path(corpus.builder.data_dir) / "gptjax_tokens" / (
        f"{name}-{fingerprint(tokenizer)}.npy")
    if path.is_file():
        return np.load(path, mmap_mode="r")
    tokens = tokenize(corpus.documents(split), tokenizer)
    try:  # write then rename: several processes may race to the same cache
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npy", delete=False) as f:
            np.save(f, tokens)
        os.replace(f.name, path)
    except OSError as e:  # e.g. a read-only shared data_dir: keep the tokens in memory
        logging.warning("could not cache tokens at %s (%s); tokenizing again next time", path, e)
    return tokens
