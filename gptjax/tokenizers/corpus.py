"""Corpus preparation's encoder: documents -> one token stream, eos after each, by tiktoken
where it gives the same ids (GPT-2 BPE). A worker process of gptjax.data.prepare imports this
package alone (no JAX).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence

import numpy as np

from gptjax.tokenizers.codec import BPECodec
from gptjax.tokenizers.tokenizer import Tokenizer, check_text


def encode_documents(tokenizer: Tokenizer | str, texts: Sequence[str],
                     ) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """`texts` as one token stream with eos after each document (when the tokenizer has one).

    Returns (tokens, each document's length in tokens, {index: why} of documents that could not
    be encoded: they have length 0). uint16 where the vocabulary fits, else uint32.
    `tokenizer` may be a saved folder, loaded once per process: a worker process of
    gptjax.data.prepare imports this module alone (no JAX).
    """
    tok = _loaded(tokenizer) if isinstance(tokenizer, str) else tokenizer
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32
    eos = [] if tok.eos_token_id is None else [tok.eos_token_id]
    encode_batch = _document_encoder(tok)
    errors: dict[int, str] = {}
    try:
        ids = encode_batch(list(texts))
    except (TypeError, ValueError):  # find which documents fail, encode the others
        ids = []
        for i, text in enumerate(texts):
            try:
                ids.append(encode_batch([text])[0])
            except (TypeError, ValueError) as e:
                errors[i] = str(e)
                ids.append(None)
    lengths = np.array([0 if d is None else len(d) + len(eos) for d in ids], np.int64)
    pieces = itertools.chain.from_iterable((d, eos) for d in ids if d is not None)
    flat = np.fromiter(itertools.chain.from_iterable(pieces), dtype, count=int(lengths.sum()))
    return flat, lengths, errors


def _document_encoder(tok: Tokenizer) -> Callable[[list[str]], list[list[int]]]:
    """tok.encode_batch, or tiktoken's encoder where it gives the same ids (GPT-2 BPE).

    Only here, not in Tokenizer.encode: corpus preparation is where its speed matters, and
    building it (~0.3 s at GPT-2's size) would slow every tokenizer's first encode.
    """
    if isinstance(tok._codec, BPECodec):
        fast, _ = tok._codec.fast()
        if fast is not None:
            def encode_batch(texts: list[str]) -> list[list[int]]:
                for text in texts:
                    check_text(text)  # the errors Tokenizer.encode_batch raises
                return fast.encode_batch(texts)
            return encode_batch
    return tok.encode_batch


@functools.lru_cache(maxsize=4)
def _loaded(folder: str) -> Tokenizer:
    return Tokenizer.from_pretrained(folder)
