"""Prefill, decode step and the compiled greedy / sampling loop.

Slots: every sequence lives in a fixed buffer of `cache_len` slots (the KV cache's length). The
prompt batch, left-padded to a bucketed width P, fills slots [0, P); token number P + i is
generated into slot P + i. Bucketing P and cache_len means prompts and max_lengths within a bucket
reuse one compiled program; the few extra left slots are masked out and never seen by the logits
processors (`start` is the slot of the caller's first input token).
"""

from __future__ import annotations

import collections
import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx
from jax.experimental import io_callback

from gptjax.generation.processors import Processors, process, warp

# How many times each decoding program was traced (== compiled, in-process); tests read it.
TRACES: collections.Counter = collections.Counter()


@dataclasses.dataclass(frozen=True)
class Spec:
    """Everything static about one generate call: it selects the compiled program."""

    strategy: str  # "sample" (greedy or sampling, chosen by values["do_sample"]) | "beam"
    cache_len: int
    beam_sample: bool = False  # beam search samples its continuations (greedy/sampling: traced)
    num_beams: int = 1
    num_eos: int = 1  # length of the eos id array (padded with -1, which matches nothing)
    processors: Processors = Processors()
    stream: bool = False


def prefill(graphdef, params, prompt, valid, cache_len: int):
    """Run the prompt [batch, P] (left-padded, `valid` False on padding) through the model.

    Returns (logits of the last position [batch, vocab], KV cache with slots [0, P) filled,
    kv_valid [batch, cache_len], the number of padding slots per row [batch]).
    """
    model = nnx.merge(graphdef, params)
    b, p = prompt.shape
    kv_valid = jnp.concatenate([valid, jnp.ones((b, cache_len - p), bool)], axis=1)
    positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)  # HF's position_ids
    cache = model.init_cache(b, cache_len)
    hidden, cache = model.forward(prompt, positions_=positions, kv_valid=kv_valid, cache=cache,
                                  cache_index=0, logits=False)
    # The LM head on the last position only (left padding: it is a real token).
    logits = model.lm_head_logits(hidden[:, -1:])[:, 0]
    return logits, cache, kv_valid, p - valid.sum(axis=1)


def decode_step(graphdef, params, tokens, slot, num_pad, kv_valid, cache):
    """One token per row: tokens [rows] written at `slot` -> (next logits [rows, vocab], cache)."""
    model = nnx.merge(graphdef, params)
    vocab = model.cfg.vocab_size
    positions = (slot - num_pad)[:, None]
    logits, cache = model.forward(jnp.clip(tokens, 0, vocab - 1)[:, None], positions_=positions,
                                  kv_valid=kv_valid, cache=cache, cache_index=slot)
    return logits[:, -1], cache


def _stream(spec: Spec, tokens):
    if spec.stream:
        io_callback(_STREAM_SINK.put, None, tokens, ordered=True)


class _Sink:
    """Where streamed tokens go: the streamer of the generate call that is running."""

    streamer = None

    def put(self, tokens):
        if self.streamer is not None:
            self.streamer.put(jax.device_get(tokens))


_STREAM_SINK = _Sink()


def sample_loop(graphdef, params, prompt, valid, start, max_slot, eos_ids, pad_id, key, values,
                *, spec: Spec):
    """Greedy (argmax) or sampling, all steps inside one lax.while_loop.

    Returns (tokens [batch, cache_len], end slot): row r's output is tokens[r, start:end].
    Rows that met an eos are padded with pad_id afterwards, as Hugging Face does.
    """
    TRACES[spec.strategy] += 1
    b, p = prompt.shape
    length = spec.cache_len
    logits, cache, kv_valid, num_pad = prefill(graphdef, params, prompt, valid, length)
    slots = jnp.arange(length)
    tokens = jnp.zeros((b, length), jnp.int32).at[:, :p].set(prompt)

    def choose(logits, tokens, cur, unfinished):
        counted = (slots[None] >= num_pad[:, None]) & (slots[None] < cur)
        scores = process(spec.processors, logits, tokens=tokens, start=start, cur=cur,
                         counted=counted, eos_ids=eos_ids, values=values)
        nxt = jax.lax.cond(
            values["do_sample"],
            lambda: jax.random.categorical(jax.random.fold_in(key, cur),
                                           warp(scores, values), axis=-1),
            lambda: jnp.argmax(scores, axis=-1))
        # Without an eos id (eos_ids == [-1]) every row stays unfinished and nothing is padded.
        nxt = jnp.where(unfinished, nxt.astype(jnp.int32), pad_id)
        unfinished = unfinished & ~jnp.isin(nxt, eos_ids)
        _stream(spec, nxt)
        tokens = jax.lax.dynamic_update_slice(tokens, nxt[:, None], (0, cur))
        return tokens, cur + 1, unfinished

    def body(state):
        tokens, cur, unfinished, _, logits, cache = state
        tokens, cur, unfinished = choose(logits, tokens, cur, unfinished)
        done = (cur >= max_slot) | ~jnp.any(unfinished)
        # The last iteration's forward is wasted (one step in N) but keeps a single copy of
        # `choose` in the program, which roughly halves compile time; skipping it with a
        # lax.cond would make XLA copy the whole KV cache on every step.
        logits, cache = decode_step(graphdef, params, tokens[jnp.arange(b), cur - 1], cur - 1,
                                    num_pad, kv_valid, cache)
        return tokens, cur, unfinished, done, logits, cache

    state = (tokens, jnp.int32(p), jnp.ones((b,), bool), jnp.bool_(False), logits, cache)
    tokens, cur = jax.lax.while_loop(lambda s: ~s[3], body, state)[:2]
    return tokens, cur
