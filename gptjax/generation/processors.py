"""Logits processors with Hugging Face's names and semantics, as pure functions on static shapes.

Every processor takes `scores: [rows, vocab]` (float32 logits, or log-probabilities in beam
search) and returns new scores. Token histories are the fixed-size slot buffers of the decode
loop, `tokens: [rows, cache_len]`; `start` is the slot of the first token of the caller's
`input_ids` (slots before it are bucket padding that Hugging Face never sees) and `cur` the slot
the next token will be written to, so Hugging Face's `input_ids.shape[-1]` is `cur - start`.

`process` and then (when sampling) `warp` apply them in the order of transformers'
`_get_logits_processor`: repetition penalty, no-repeat n-grams, minimum length; temperature,
top-k, top-p.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


def _scatter_rows(shape, ids, values, init):
    """out[r, ids[r, j]] = values[r, j] on an array of `shape` filled with `init`."""
    rows = jnp.arange(ids.shape[0])[:, None]
    return jnp.full(shape, init, values.dtype).at[rows, ids].set(values)


def repetition_penalty(scores, tokens, counted, penalty):
    """RepetitionPenaltyLogitsProcessor: divide positive / multiply negative scores of seen tokens.

    counted: [rows, cache_len] bool, the slots whose tokens count (HF skips the prompt's left
    padding and, of course, slots not generated yet).
    """
    vocab = scores.shape[-1]
    ids = jnp.where(counted, jnp.clip(tokens, 0, vocab), vocab)  # uncounted -> spare column
    padded = jnp.pad(scores, ((0, 0), (0, 1)))
    seen = jnp.take_along_axis(padded, ids, axis=1)
    seen = jnp.where(seen < 0, seen * penalty, seen / penalty)
    rows = jnp.arange(ids.shape[0])[:, None]
    return padded.at[rows, ids].set(seen)[:, :vocab]


def no_repeat_ngram(scores, tokens, start, cur, n, max_n: int):
    """NoRepeatNGramLogitsProcessor: ban every token that would complete an n-gram seen before.

    An n-gram window starting at slot i (start <= i, its last token i+n-1 < cur) whose first n-1
    tokens equal the last n-1 tokens bans its own last token. n is traced (0: off) and at most
    the static max_n, so changing it does not recompile.
    """
    rows, length = tokens.shape
    vocab = scores.shape[-1]
    padded = jnp.pad(tokens, ((0, 0), (max_n, max_n)), constant_values=-1)
    windows = jnp.stack([padded[:, max_n + j:max_n + j + length] for j in range(max_n)], -1)
    prefix = jax.lax.dynamic_slice_in_dim(padded, cur - (n - 1) + max_n, max_n, axis=1)
    j = jnp.arange(max_n)
    match = jnp.all((windows == prefix[:, None, :]) | (j >= n - 1), axis=-1)
    first = jnp.arange(length)
    match &= (first >= start) & (first + n - 1 < cur) & (n > 0)
    last = jnp.take_along_axis(windows, jnp.broadcast_to(jnp.maximum(n - 1, 0),
                                                         (rows, length, 1)), axis=2)[..., 0]
    banned_ids = jnp.where(match, jnp.clip(last, 0, vocab), vocab)
    banned = _scatter_rows((rows, vocab + 1), banned_ids, jnp.ones_like(match), False)
    return jnp.where(banned[:, :vocab], NEG_INF, scores)


def min_length(scores, eos_ids, length, min_len):
    """MinLengthLogitsProcessor / MinNewTokensLengthLogitsProcessor: no eos before min_len."""
    is_eos = jnp.isin(jnp.arange(scores.shape[-1]), eos_ids)
    return jnp.where(is_eos & (length < min_len), NEG_INF, scores)


def _order_keys(x):
    """uint32 keys that sort like the float32 values x (so thresholds can be bisected)."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    negative = (bits >> 31) == 1
    return jnp.where(negative, ~bits, bits | jnp.uint32(0x80000000))


def _bisect(keys, enough):
    """Per row, the largest uint32 threshold t with enough(keys >= t) true ([rows, 1]).

    enough(mask [rows, vocab]) -> [rows] bool must be monotone (true for t=0). 32 halvings of
    the key range find it exactly, with no sort of the vocabulary.
    """
    rows = keys.shape[0]

    def halve(_, bounds):
        lo, hi = bounds  # enough(lo) holds; the answer is in [lo, hi]
        mid = hi - (hi - lo) // 2  # in (lo, hi] while lo < hi; no uint32 overflow
        ok = enough(keys >= mid[:, None])
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)

    lo = jnp.zeros((rows,), jnp.uint32)
    hi = jnp.full((rows,), 0xFFFFFFFF, jnp.uint32)
    return jax.lax.fori_loop(0, 32, halve, (lo, hi))[0][:, None]


def warp(scores, values, min_tokens_to_keep: int = 1):
    """Sampling's warpers, in HF's order: TemperatureLogitsWarper, TopKLogitsWarper (top_k 0:
    off), TopPLogitsWarper (top_p 1.0: off). All three values are traced, so changing them does
    not recompile. Both cut-offs are thresholds on the scores, found by bisection rather than by
    sorting the vocabulary (a sort of 50k scores costs ~10 ms a row on CPU).
    """
    vocab, rows = scores.shape[-1], scores.shape[0]
    scores = scores / values["temperature"]
    keys = _order_keys(scores)
    k = values["top_k"]
    k = jnp.clip(jnp.maximum(k, min_tokens_to_keep), 1, vocab)
    kth = jax.lax.cond(  # the k-th largest score, or no cut-off
        (values["top_k"] > 0) & (k < vocab),
        lambda: _bisect(keys, lambda kept: jnp.sum(kept, axis=-1) >= k),
        lambda: jnp.zeros((rows, 1), jnp.uint32))
    keys = jnp.where(keys < kth, jnp.uint32(0), keys)
    scores = jnp.where(keys == 0, NEG_INF, scores)

    def top_p():
        # Drop the lowest scores while the probability they hold stays <= 1 - top_p, keeping
        # at least min_tokens_to_keep: a threshold on the scores.
        probs = jax.nn.softmax(scores, axis=-1)
        limit = 1.0 - values["top_p"]
        cut = _bisect(keys, lambda kept: jnp.sum(jnp.where(kept, 0.0, probs), axis=-1) <= limit)
        if min_tokens_to_keep == 1:
            keep = jnp.max(keys, axis=-1, keepdims=True)
        else:
            keep = _bisect(keys, lambda kept: jnp.sum(kept, axis=-1) >= min_tokens_to_keep)
        return jnp.where(keys < jnp.minimum(cut, keep), NEG_INF, scores)

    return jax.lax.cond(values["top_p"] < 1.0, top_p, lambda: scores)


@dataclasses.dataclass(frozen=True)
class Processors:
    """The static part of the processors (the compiled program); their values are traced.

    Repetition penalty, no-repeat n-grams and minimum length are always in the program (their
    values are traced, so changing them never recompiles); the sampling warpers run only on the
    sampling branch.
    """

    max_ngram: int = 4  # no_repeat_ngram_size up to this share one program
    min_tokens_to_keep: int = 1  # sampling warpers (beam sampling keeps 1 + number of eos ids)


def process(p: Processors, scores, *, tokens, start, cur, counted, eos_ids, values):
    """The logits processors, in Hugging Face's order (sampling's warpers come after, in warp).

    values: dict of traced scalars: repetition_penalty, no_repeat_ngram_size, min_length (in
    tokens, as HF counts them: the whole padded prompt included).
    """
    # Each runs only when its value asks for it (a cond, not a recompile).
    penalty, n = values["repetition_penalty"], values["no_repeat_ngram_size"]
    scores = jax.lax.cond(penalty != 1.0, lambda: repetition_penalty(scores, tokens, counted,
                                                                     penalty), lambda: scores)
    scores = jax.lax.cond(n > 0, lambda: no_repeat_ngram(scores, tokens, start, cur, n,
                                                         p.max_ngram), lambda: scores)
    return min_length(scores, eos_ids, cur - start, values["min_length"])
