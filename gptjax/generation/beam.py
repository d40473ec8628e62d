"""Beam search inside one lax.while_loop, step for step as transformers' `_beam_search`.

Hugging Face's (>= 4.50) vectorised beam search keeps, per prompt, `num_beams` running beams and
`num_beams` finished hypotheses, all in static shapes; this is the same algorithm in JAX:
  1. log_softmax, logits processors, add each beam's running score;
  2. the top W = max(2, 1 + num_eos) * num_beams continuations over all beams x vocab (sampled
     without replacement instead when do_sample);
  3. continuations that end in eos or reach max_length leave the running set (-1e9); the best
     num_beams others run on (their KV cache rows are gathered);
  4. finished continuations among the first num_beams enter the finished set with score
     sum_logprob / generated_len ** length_penalty, if they beat its worst member;
  5. stop when no running beam can improve the finished set (the early_stopping heuristics),
     or every continuation is finished.
Float32 scores and the exact -1e9 sentinels are kept so that ties resolve as in transformers.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from gptjax.generation.processors import process, warp
from gptjax.generation.decoding import TRACES, Spec, decode_step, prefill

BIG = 1.0e9


def _gather(x, idx):
    """x: [batch, beams, ...], idx: [batch, k] -> [batch, k, ...]."""
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


@dataclasses.dataclass(frozen=True)
class _Search:
    """What every step of one beam search shares: its static sizes and the call's inputs."""

    spec: Spec
    batch: int
    p: int  # the prompt bucket's width: generated token i goes to slot p + i
    start: jax.Array  # slot of the caller's first prompt token
    max_slot: jax.Array  # Hugging Face's max_length, in slots
    eos_ids: jax.Array
    key: jax.Array
    values: dict
    num_pad: jax.Array  # [batch * k] padding slots of each cache row
    slots: jax.Array  # [cache_len] 0, 1, ...
    top_mask: jax.Array  # [width] the first k continuations

    @property
    def k(self) -> int:
        return self.spec.num_beams

    @property
    def width(self) -> int:
        return self.top_mask.shape[0]


def beam_search_loop(graphdef, params, prompt, valid, start, max_slot, eos_ids, pad_id, key,
                     values, *, spec: Spec):
    """Returns (sequences [batch, num_beams, cache_len] best first, generated lengths
    [batch, num_beams]): hypothesis j of prompt i is sequences[i, j, start:P + length[i, j]]."""
    TRACES[spec.strategy] += 1
    batch, p = prompt.shape
    logits, cache, kv_valid, num_pad = _prefill_beams(graphdef, params, prompt, valid, spec)
    k = spec.num_beams
    rows = batch * k
    width = max(2, 1 + spec.num_eos) * k  # continuations kept per step
    search = _Search(spec=spec, batch=batch, p=p, start=start, max_slot=max_slot,
                     eos_ids=eos_ids, key=key, values=values, num_pad=num_pad,
                     slots=jnp.arange(spec.cache_len), top_mask=jnp.arange(width) < k)

    def body(carry):
        s, logits, cache, rows_of = carry
        s = _step(search, logits, s)
        rows_of, cache = _follow_beams(cache, rows_of, s["source"])
        # Physical row r holds the logical beam inverse[r]; feed it that beam's last token.
        inverse = jnp.argsort(rows_of, axis=1)
        last = jnp.take_along_axis(s["running"][:, :, s["cur"] - 1], inverse, axis=1)
        logits, cache = decode_step(graphdef, params, last.reshape(rows), s["cur"] - 1, num_pad,
                                    kv_valid, cache)
        # The last iteration's forward is wasted (one step in N) but keeps a single copy of
        # `_step` in the program, which halves compile time; skipping it with a lax.cond would
        # make XLA copy the whole KV cache on every step.
        logits = jnp.take_along_axis(logits.reshape(batch, k, -1), rows_of[:, :, None], axis=1)
        return s, logits.reshape(rows, -1), cache, rows_of

    identity = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (batch, k))
    carry = (_initial_state(prompt, pad_id, spec), logits, cache, identity)
    state = jax.lax.while_loop(lambda c: ~c[0]["done"], body, carry)[0]
    return state["sequences"], state["lengths"]


def _prefill_beams(graphdef, params, prompt, valid, spec: Spec):
    """prefill's outputs, each row repeated num_beams times: every beam of a prompt starts
    from the same prefill."""
    k = spec.num_beams
    logits, cache, kv_valid, num_pad = prefill(graphdef, params, prompt, valid, spec.cache_len)
    logits, kv_valid, num_pad = (jnp.repeat(x, k, axis=0) for x in (logits, kv_valid, num_pad))
    batch = prompt.shape[0]  # a cache row per (sequence, K/V head): repeat each sequence's rows
    cache = jax.tree.map(lambda c: jnp.repeat(c.reshape(batch, -1, *c.shape[1:]), k, axis=0)
                         .reshape(-1, *c.shape[1:]), cache)
    return logits, cache, kv_valid, num_pad


def _initial_state(prompt, pad_id, spec: Spec) -> dict:
    """The loop's state before the first step: k running beams (the first one live), no
    finished hypothesis yet."""
    batch, p = prompt.shape
    k, length = spec.num_beams, spec.cache_len
    fill = pad_id  # where sequences end: transformers' `pad_token_id or eos_token_id[0]`
    running = jnp.full((batch, k, length), fill, jnp.int32).at[:, :, :p].set(prompt[:, None])
    return dict(
        running=running,
        running_scores=jnp.zeros((batch, k), jnp.float32).at[:, 1:].set(-BIG),
        sequences=running,
        scores=jnp.full((batch, k), -BIG, jnp.float32),
        lengths=jnp.zeros((batch, k), jnp.int32),  # generated tokens of each finished hypothesis
        finished=jnp.zeros((batch, k), bool),
        can_improve=jnp.ones((batch, 1), bool),
        cur=jnp.int32(p),
        done=jnp.bool_(False),
        source=jnp.zeros((batch, k), jnp.int32),
    )


def _step(search: _Search, logits, s: dict) -> dict:
    """One token for every running beam: steps 1-5 of the module docstring."""
    cur = s["cur"]
    vocab = logits.shape[-1]
    log_probs = _scores(search, logits, s)
    top_lp, idx = _top_continuations(search, log_probs, cur)
    beam, token = idx // vocab, (idx % vocab).astype(jnp.int32)
    top_seq = _gather(s["running"], beam)
    top_seq = jax.lax.dynamic_update_slice(top_seq, token[:, :, None], (0, 0, cur))

    # d. which continuations stop here: eos, or max_length reached
    hits = (cur + 1 >= search.max_slot) | jnp.isin(token, search.eos_ids)

    # e. the best unfinished continuations keep running
    run_lp = top_lp + hits.astype(jnp.float32) * -BIG
    nxt = jax.lax.top_k(run_lp, search.k)[1]
    running = _gather(top_seq, nxt)
    running_scores = _gather(run_lp, nxt)
    source = _gather(beam, nxt)

    hyps = _finalize(search, s, top_lp, top_seq, hits, cur)
    cur = cur + 1
    can_improve, done = _stop(search, s, running_scores, hyps, hits, cur)
    return dict(running=running, running_scores=running_scores, **hyps,
                can_improve=can_improve, cur=cur, done=done, source=source)


def _scores(search: _Search, logits, s: dict):
    """1. log_softmax, the logits processors (and warpers when sampling), plus each beam's
    running score: [batch, k * vocab]."""
    spec, values, cur = search.spec, search.values, s["cur"]
    length = spec.cache_len
    flat = s["running"].reshape(search.batch * search.k, length)
    slots = search.slots
    counted = (slots[None] >= search.num_pad[:, None]) & (slots[None] < cur)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    log_probs = process(spec.processors, log_probs, tokens=flat, start=search.start, cur=cur,
                        counted=counted, eos_ids=search.eos_ids, values=values)
    if spec.beam_sample:
        log_probs = warp(log_probs, values, spec.processors.min_tokens_to_keep)
    vocab = log_probs.shape[-1]
    log_probs = log_probs.reshape(search.batch, search.k, vocab) + s["running_scores"][:, :, None]
    return log_probs.reshape(search.batch, search.k * vocab)


def _top_continuations(search: _Search, log_probs, cur):
    """2. the top `width` continuations, best first: (their scores, their indices into
    beams x vocab), both [batch, width]."""
    if not search.spec.beam_sample:
        return jax.lax.top_k(log_probs, search.width)
    # multinomial without replacement == top-k of Gumbel-perturbed scores
    gumbel = jax.random.gumbel(jax.random.fold_in(search.key, cur), log_probs.shape)
    idx = jax.lax.top_k(log_probs + gumbel, search.width)[1]
    top_lp = jnp.take_along_axis(log_probs, idx, axis=1)
    order = jnp.argsort(-top_lp, axis=1, stable=True)
    top_lp, idx = (jnp.take_along_axis(x, order, axis=1) for x in (top_lp, idx))
    return top_lp, idx


def _finalize(search: _Search, s: dict, top_lp, top_seq, hits, cur) -> dict:
    """f. the beam scorer: finished continuations among the first k may replace worse finished
    hypotheses. Returns the new sequences, scores, lengths and finished flags."""
    p, denom = search.p, search.values["length_denominators"]  # float32(n ** length_penalty)
    just_finished = hits & search.top_mask[None]
    fin_lp = top_lp / denom[cur + 1 - p]
    full = jnp.all(s["finished"], axis=-1, keepdims=True) & search.values["early_stopping_true"]
    fin_lp = fin_lp + full.astype(jnp.float32) * -BIG
    fin_lp = fin_lp + (~s["can_improve"]).astype(jnp.float32) * -BIG
    fin_lp = fin_lp + (~just_finished).astype(jnp.float32) * -BIG
    merged_scores = jnp.concatenate([s["scores"], fin_lp], axis=1)
    best = jax.lax.top_k(merged_scores, search.k)[1]
    new_len = jnp.broadcast_to(cur + 1 - p, just_finished.shape).astype(jnp.int32)
    return dict(
        sequences=_gather(jnp.concatenate([s["sequences"], top_seq], axis=1), best),
        scores=_gather(merged_scores, best),
        lengths=_gather(jnp.concatenate([s["lengths"], new_len], axis=1), best),
        finished=_gather(jnp.concatenate([s["finished"], just_finished], axis=1), best))


def _stop(search: _Search, s: dict, running_scores, hyps: dict, hits, cur):
    """g. (can a running beam still beat the worst finished hypothesis [batch, 1], is the
    search done): transformers' early_stopping heuristics. `cur` is the next slot."""
    values, p = search.values, search.p
    early_true, early_never = values["early_stopping_true"], values["early_stopping_never"]
    max_new = search.max_slot - p  # Hugging Face's max_length - decoder_prompt_len
    best_len = jnp.where(early_never & values["length_penalty_positive"], max_new, cur - p)
    best_running = running_scores[:, :1] / values["length_denominators"][best_len]
    finished, scores = hyps["finished"], hyps["scores"]
    worst = jnp.where(finished, jnp.min(scores, axis=1, keepdims=True), -BIG)
    can_improve = s["can_improve"] & jnp.any(best_running > worst, axis=-1, keepdims=True)
    open_beam = ~(jnp.all(finished) & early_true)
    done = ~(jnp.any(can_improve) & open_beam & ~jnp.all(hits))
    return can_improve, done


def _follow_beams(cache, rows_of, source):
    """The KV cache follows the reordered beams without a full gather (see `place`):
    (new rows_of, cache)."""
    rows_of, dst, src, copies = place(rows_of, source)
    return rows_of, copy_rows(cache, dst, src, copies, rows_of.size)


def place(rows_of, source):
    """Where each new running beam's KV cache lives, moving as few cache rows as possible.

    rows_of: [batch, k] the cache row (within its prompt's k rows) of each running beam;
    source: [batch, k] the running beam each new beam continues. Beam search reorders beams
    every step, but most new beams are the only continuation of their parent: those take over
    the parent's row where it is. Only a second child of a parent needs a copy of it, into the
    row of a parent that has no child. Returns (new rows_of, copy destinations, sources (both
    flat row indices, [batch * k], valid ones first), number of copies).
    """
    batch, k = source.shape
    parent = jnp.take_along_axis(rows_of, source, axis=1)  # [batch, k] row of each new beam
    earlier = jnp.tril(jnp.ones((k, k), bool), -1)  # earlier[i, j]: j < i
    same = parent[:, :, None] == parent[:, None, :]
    first = ~jnp.any(same & earlier, axis=-1)  # the first child keeps its parent's row
    free = ~jnp.any(parent[:, :, None] == jnp.arange(k)[None, None, :], axis=1)  # [batch, k]
    # the n-th extra child gets the n-th free row
    need_rank = jnp.cumsum(~first, axis=1) - 1
    free_rank = jnp.where(free, jnp.cumsum(free, axis=1) - 1, k)
    free_row = jnp.argmax(free_rank[:, None, :] == need_rank[:, :, None], axis=-1)
    new_rows = jnp.where(first, parent, free_row).astype(jnp.int32)
    offset = (jnp.arange(batch) * k)[:, None]
    copy = (~first).reshape(-1)
    order = jnp.argsort(~copy, stable=True)  # copies first
    dst = (new_rows + offset).reshape(-1)[order]
    src = (parent + offset).reshape(-1)[order]
    return new_rows, dst, src, jnp.sum(copy)


def copy_rows(cache, dst, src, n, rows: int):
    """Sequence rows dst[i] <- src[i] for i < n, in place (no destination is also a source).
    A cache of `rows` sequences holds c.shape[0] // rows consecutive rows for each."""

    def one(i, cache):
        def move(c):
            r = c.shape[0] // rows
            return jax.lax.dynamic_update_slice_in_dim(
                c, jax.lax.dynamic_slice_in_dim(c, src[i] * r, r, axis=0), dst[i] * r, axis=0)

        return jax.tree.map(move, cache)

    return jax.lax.fori_loop(0, n, one, cache)
