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

import jax
import jax.numpy as jnp

from gptjax.generation import processors as procs
from gptjax.generation.decoding import TRACES, Spec, decode_step, prefill

BIG = 1.0e9


def _gather(x, idx):
    """x: [batch, beams, ...], idx: [batch, k] -> [batch, k, ...]."""
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


def beam_search_loop(graphdef, params, prompt, valid, start, max_slot, eos_ids, pad_id, key,
                     values, *, spec: Spec):
    """Returns (sequences [batch, num_beams, cache_len] best first, generated lengths
    [batch, num_beams]): hypothesis j of prompt i is sequences[i, j, start:P + length[i, j]]."""
    TRACES[spec.strategy] += 1
    batch, p = prompt.shape
    k, length = spec.num_beams, spec.cache_len
    rows = batch * k
    width = max(2, 1 + spec.num_eos) * k  # continuations kept per step
    early_true, early_never = values["early_stopping_true"], values["early_stopping_never"]
    max_new = max_slot - p  # Hugging Face's max_length - decoder_prompt_len
    denom = values["length_denominators"]  # [cache_len + 1]: float32(n ** length_penalty)

    logits, cache, kv_valid, num_pad = prefill(graphdef, params, prompt, valid, length)
    # Every beam of a prompt starts from the same prefill: repeat it num_beams times.
    logits, kv_valid, num_pad = (jnp.repeat(x, k, axis=0) for x in (logits, kv_valid, num_pad))
    cache = jax.tree.map(lambda c: jnp.repeat(c, k, axis=0), cache)

    fill = pad_id  # where sequences end: transformers' `pad_token_id or eos_token_id[0]`
    running = jnp.full((batch, k, length), fill, jnp.int32).at[:, :, :p].set(prompt[:, None])
    slots = jnp.arange(length)
    top_mask = jnp.arange(width) < k
    state = dict(
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

    def step(logits, s):
        cur = s["cur"]
        flat = s["running"].reshape(rows, length)
        counted = (slots[None] >= num_pad[:, None]) & (slots[None] < cur)
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        log_probs = procs.process(spec.processors, log_probs, tokens=flat, start=start, cur=cur,
                                  counted=counted, eos_ids=eos_ids, values=values)
        if spec.beam_sample:
            log_probs = procs.warp(log_probs, values, spec.processors.min_tokens_to_keep)
        vocab = log_probs.shape[-1]
        log_probs = log_probs.reshape(batch, k, vocab) + s["running_scores"][:, :, None]
        log_probs = log_probs.reshape(batch, k * vocab)

        # 2. the top `width` continuations
        if spec.beam_sample:
            # multinomial without replacement == top-k of Gumbel-perturbed scores
            gumbel = jax.random.gumbel(jax.random.fold_in(key, cur), log_probs.shape)
            idx = jax.lax.top_k(log_probs + gumbel, width)[1]
            top_lp = jnp.take_along_axis(log_probs, idx, axis=1)
            order = jnp.argsort(-top_lp, axis=1, stable=True)
            top_lp, idx = (jnp.take_along_axis(x, order, axis=1) for x in (top_lp, idx))
        else:
            top_lp, idx = jax.lax.top_k(log_probs, width)
        beam, token = idx // vocab, (idx % vocab).astype(jnp.int32)
        top_seq = _gather(s["running"], beam)
        top_seq = jax.lax.dynamic_update_slice(top_seq, token[:, :, None], (0, 0, cur))

        # d. which continuations stop here: eos, or max_length reached
        hits = (cur + 1 >= max_slot) | jnp.isin(token, eos_ids)

        # e. the best unfinished continuations keep running
        run_lp = top_lp + hits.astype(jnp.float32) * -BIG
        nxt = jax.lax.top_k(run_lp, k)[1]
        running = _gather(top_seq, nxt)
        running_scores = _gather(run_lp, nxt)
        source = _gather(beam, nxt)

        # f. finished continuations among the first k may replace worse finished hypotheses
        just_finished = hits & top_mask[None]
        fin_lp = top_lp / denom[cur + 1 - p]
        full = jnp.all(s["finished"], axis=-1, keepdims=True) & early_true
        fin_lp = fin_lp + full.astype(jnp.float32) * -BIG
        fin_lp = fin_lp + (~s["can_improve"]).astype(jnp.float32) * -BIG
        fin_lp = fin_lp + (~just_finished).astype(jnp.float32) * -BIG
        merged_scores = jnp.concatenate([s["scores"], fin_lp], axis=1)
        best = jax.lax.top_k(merged_scores, k)[1]
        sequences = _gather(jnp.concatenate([s["sequences"], top_seq], axis=1), best)
        scores = _gather(merged_scores, best)
        new_len = jnp.broadcast_to(cur + 1 - p, just_finished.shape).astype(jnp.int32)
        lengths = _gather(jnp.concatenate([s["lengths"], new_len], axis=1), best)
        finished = _gather(jnp.concatenate([s["finished"], just_finished], axis=1), best)

        # g. can a running beam still beat the worst finished hypothesis?
        cur = cur + 1
        best_len = jnp.where(early_never & values["length_penalty_positive"], max_new, cur - p)
        best_running = running_scores[:, :1] / denom[best_len]
        worst = jnp.where(finished, jnp.min(scores, axis=1, keepdims=True), -BIG)
        can_improve = s["can_improve"] & jnp.any(best_running > worst, axis=-1, keepdims=True)
        open_beam = ~(jnp.all(finished) & early_true)
        done = ~(jnp.any(can_improve) & open_beam & ~jnp.all(hits))
        return dict(running=running, running_scores=running_scores, sequences=sequences,
                    scores=scores, lengths=lengths, finished=finished, can_improve=can_improve,
                    cur=cur, done=done, source=source)

    def body(carry):
        s, logits, cache, rows_of = carry
        s = step(logits, s)
        # The KV cache follows the beams without a full gather: see `place`.
        rows_of, dst, src, copies = place(rows_of, s["source"])
        cache = copy_rows(cache, dst, src, copies)
        # Physical row r holds the logical beam inverse[r]; feed it that beam's last token.
        inverse = jnp.argsort(rows_of, axis=1)
        last = jnp.take_along_axis(s["running"][:, :, s["cur"] - 1], inverse, axis=1)
        logits, cache = decode_step(graphdef, params, last.reshape(rows), s["cur"] - 1, num_pad,
                                    kv_valid, cache)
        # The last iteration's forward is wasted (one step in N) but keeps a single copy of
        # `step` in the program, which halves compile time; skipping it with a lax.cond would
        # make XLA copy the whole KV cache on every step.
        logits = jnp.take_along_axis(logits.reshape(batch, k, -1), rows_of[:, :, None], axis=1)
        return s, logits.reshape(rows, -1), cache, rows_of

    identity = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (batch, k))
    carry = (state, logits, cache, identity)
    state = jax.lax.while_loop(lambda c: ~c[0]["done"], body, carry)[0]
    return state["sequences"], state["lengths"]


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


def copy_rows(cache, dst, src, n):
    """cache rows dst[i] <- src[i] for i < n, in place (no destination is also a source)."""

    def one(i, cache):
        return jax.tree.map(lambda c: jax.lax.dynamic_update_slice_in_dim(
            c, jax.lax.dynamic_slice_in_dim(c, src[i], 1, axis=0), dst[i], axis=0), cache)

    return jax.lax.fori_loop(0, n, one, cache)
