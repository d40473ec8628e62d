"""Blockwise attention: online softmax over key/value blocks (FlashAttention's algorithm, pure JAX).

Memory is O(seq_len) in the forward and the backward pass: scores exist one
[block_q, block_k] tile at a time, and the backward recomputes them from the saved
log-sum-exp instead of storing the attention matrix (a custom VJP, as in Dao et al. 2022).
Tiles that the mask hides entirely (above the causal diagonal, outside the window, across
documents with segment ids) are skipped.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from gptjax.model.kernels.registry import refuse_dropout, register
from gptjax.model.masks import Mask

NEG = jnp.finfo(jnp.float32).min
FAR = 2.0 ** 30  # slot of a padding key: later than every query, so causality hides it


@register("blockwise", dropout=False, segments=True)
def blockwise_attention(q, k, v, mask: Mask | None = None, *, dropout_rate=0.0,
                        dropout_rng=None, block_q: int = 512, block_k: int = 512):
    """Same contract as the other kernels (see kernels.py); no attention-weight dropout."""
    refuse_dropout("blockwise", dropout_rate, dropout_rng)
    b, t, h, d = q.shape
    s, kv_heads = k.shape[1], k.shape[2]
    if mask is None:  # full (non-causal) attention: every query sees every key
        mask = Mask(jnp.full((t,), s, jnp.int32), jnp.arange(s))
    bq, bk = min(block_q, t), min(block_k, s)
    tp, sp = -(-t // bq) * bq, -(-s // bk) * bk
    # Slots, validity and slopes travel as float arrays so the custom VJP can treat them as
    # (non-differentiated) inputs.
    q_slots = jnp.pad(mask.q_slots.astype(jnp.float32), (0, tp - t))
    kv_slots = jnp.pad(mask.kv_slots.astype(jnp.float32), (0, sp - s), constant_values=FAR)
    valid = jnp.ones((1, s), jnp.float32) if mask.kv_valid is None \
        else mask.kv_valid.astype(jnp.float32)
    valid = jnp.pad(valid, ((0, 0), (0, sp - s)))
    has_alibi = mask.alibi_slopes is not None
    slopes = mask.alibi_slopes.astype(jnp.float32) if has_alibi else jnp.zeros((h,), jnp.float32)
    # Segment ids stay int32 (exact for any document index); their cotangents are float0.
    segs = None  # or (query ids [b|1, tp], key ids [b|1, sp])
    if mask.q_segments is not None:
        segs = (jnp.pad(mask.q_segments.astype(jnp.int32), ((0, 0), (0, tp - t))),
                jnp.pad(mask.key_segments.astype(jnp.int32), ((0, 0), (0, sp - s))))
    # Queries [batch, blocks, kv_heads, group, block, head_dim] (each K/V head serves `group`
    # query heads), keys and values [batch, blocks, kv_heads, block, head_dim]: every tile's
    # products are then batched over heads with rows in order, so no tile is transposed.
    qb = jnp.pad(q, ((0, 0), (0, tp - t), (0, 0), (0, 0)))
    qb = qb.reshape(b, tp // bq, bq, kv_heads, h // kv_heads, d).transpose(0, 1, 3, 4, 2, 5)

    def blocks(x):
        x = jnp.pad(x, ((0, 0), (0, sp - s), (0, 0), (0, 0)))
        return x.reshape(b, sp // bk, bk, kv_heads, d).transpose(0, 1, 3, 2, 4)

    out = _flash(qb, blocks(k), blocks(v), q_slots, kv_slots, valid, segs,
                 slopes.reshape(kv_heads, -1), mask.window, has_alibi)
    return out.transpose(0, 1, 4, 2, 3, 5).reshape(b, tp, h, d)[:, :t].astype(q.dtype)


def _tile(qi, kj, qs, ks, valid_j, segs_ij, slopes, window, has_alibi):
    """Scores [b, kv_heads, group, bq, bk] (float32) and the boolean mask of one tile."""
    scale = 1.0 / jnp.sqrt(jnp.float32(qi.shape[-1]))
    scores = jnp.einsum("bhgqd,bhkd->bhgqk", qi, kj, preferred_element_type=jnp.float32) * scale
    if has_alibi:
        scores = scores - slopes[None, :, :, None, None] * (qs[:, None] - ks[None, :])
    return scores, _tile_mask(qs, ks, valid_j, segs_ij, window)[:, None, None]


def _any(allowed):
    return jnp.any(allowed)


def _seg_blocks(segs, nq, bq, nk, bk):
    """The query and the key segment ids by block, [nq, b|1, bq] and [nk, b|1, bk]; (None,
    None) without segments."""
    if segs is None:
        return None, None
    q_seg, k_seg = segs
    return (jnp.moveaxis(q_seg.reshape(q_seg.shape[0], nq, bq), 1, 0),
            jnp.moveaxis(k_seg.reshape(k_seg.shape[0], nk, bk), 1, 0))


def _forward(qb, kb, vb, q_slots, kv_slots, valid, segs, slopes, window, has_alibi):
    b, nq, hk, g, bq, d = qb.shape
    nk, bk = kb.shape[1], kb.shape[3]
    q_segs, k_segs = _seg_blocks(segs, nq, bq, nk, bk)

    def one_q_block(args):
        qi, qs, q_seg = args  # [b, hk, g, bq, d], [bq], [b|1, bq] or None

        def step(carry, kv):
            o, m, l = carry
            kj, vj, ks, valid_j, k_seg = kv
            segs_ij = None if q_seg is None else (q_seg, k_seg)

            def update(carry):
                o, m, l = carry
                scores, allowed = _tile(qi, kj, qs, ks, valid_j, segs_ij, slopes, window,
                                        has_alibi)
                m_new = jnp.maximum(m, jnp.max(jnp.where(allowed, scores, NEG), axis=-1))
                p = jnp.where(allowed, jnp.exp(scores - m_new[..., None]), 0.0)
                correction = jnp.exp(m - m_new)
                l = l * correction + p.sum(-1)
                o = o * correction[..., None] + jnp.einsum(
                    "bhgqk,bhkd->bhgqd", p, vj, preferred_element_type=jnp.float32)
                return o, m_new, l

            visible = _any(_tile_mask(qs, ks, valid_j, segs_ij, window))
            return jax.lax.cond(visible, update, lambda c: c, (o, m, l)), None

        init = (jnp.zeros((b, hk, g, bq, d), jnp.float32), jnp.full((b, hk, g, bq), NEG),
                jnp.zeros((b, hk, g, bq), jnp.float32))
        (o, m, l), _ = jax.lax.scan(step, init, (jnp.moveaxis(kb, 1, 0), jnp.moveaxis(vb, 1, 0),
                                                 kv_slots.reshape(nk, bk),
                                                 jnp.moveaxis(valid.reshape(-1, nk, bk), 1, 0),
                                                 k_segs))
        live = l > 0  # a padding query that sees no key gets zeros, not NaN
        o = jnp.where(live[..., None], o / jnp.where(live, l, 1.0)[..., None], 0.0)
        lse = jnp.where(live, m + jnp.log(jnp.where(live, l, 1.0)), NEG)
        return o, lse

    out, lse = jax.lax.map(one_q_block, (jnp.moveaxis(qb, 1, 0), q_slots.reshape(nq, bq),
                                         q_segs))
    return jnp.moveaxis(out, 0, 1), lse  # out [b, nq, hk, g, bq, d]; lse [nq, b, hk, g, bq]


def _tile_mask(qs, ks, valid_j, segs_ij, window):
    """Boolean [b|1, bq, bk]: causal, in the window, a valid key, in the query's segment."""
    distance = qs[:, None] - ks[None, :]
    allowed = distance >= 0
    if window is not None:
        allowed &= distance < window
    allowed = allowed[None] & (valid_j[:, None, :] > 0)
    if segs_ij is not None:
        q_seg, k_seg = segs_ij
        allowed = allowed & (q_seg[:, :, None] == k_seg[:, None, :])
    return allowed


@functools.partial(jax.custom_vjp, nondiff_argnums=(8, 9))
def _flash(qb, kb, vb, q_slots, kv_slots, valid, segs, slopes, window, has_alibi):
    return _forward(qb, kb, vb, q_slots, kv_slots, valid, segs, slopes, window, has_alibi)[0]


def _flash_fwd(qb, kb, vb, q_slots, kv_slots, valid, segs, slopes, window, has_alibi):
    out, lse = _forward(qb, kb, vb, q_slots, kv_slots, valid, segs, slopes, window, has_alibi)
    return out, (qb, kb, vb, q_slots, kv_slots, valid, segs, slopes, out, lse)


def _flash_bwd(window, has_alibi, residuals, dout):
    qb, kb, vb, q_slots, kv_slots, valid, segs, slopes, out, lse = residuals
    b, nq, hk, g, bq, d = qb.shape
    nk, bk = kb.shape[1], kb.shape[3]
    scale = 1.0 / jnp.sqrt(jnp.float32(d))
    dout = dout.astype(jnp.float32)
    # D_i = rowsum(dO_i * O_i): [nq, b, hk, g, bq]
    delta = jnp.einsum("bnhgqd,bnhgqd->nbhgq", dout, out)
    qs_all, ks_all = q_slots.reshape(nq, bq), kv_slots.reshape(nk, bk)
    valid_all = jnp.moveaxis(valid.reshape(-1, nk, bk), 1, 0)
    q_segs, k_segs = _seg_blocks(segs, nq, bq, nk, bk)

    def segs_of(i_q, i_k):
        return None if segs is None else (q_segs[i_q], k_segs[i_k])

    def probs(i_q, i_k):
        """Recompute one tile's softmax weights from the saved log-sum-exp."""
        qi, kj = qb[:, i_q], kb[:, i_k]
        scores, allowed = _tile(qi, kj, qs_all[i_q], ks_all[i_k], valid_all[i_k],
                                segs_of(i_q, i_k), slopes, window, has_alibi)
        return jnp.where(allowed, jnp.exp(scores - lse[i_q][..., None]), 0.0)

    def dscores(i_q, i_k, p):
        dp = jnp.einsum("bhgqd,bhkd->bhgqk", dout[:, i_q], vb[:, i_k],
                        preferred_element_type=jnp.float32)
        return p * (dp - delta[i_q][..., None])

    def visible(i_q, i_k):
        return _any(_tile_mask(qs_all[i_q], ks_all[i_k], valid_all[i_k], segs_of(i_q, i_k),
                               window))

    def kv_block(dq, i_k):
        """dK, dV of key block i_k, adding its share of every dQ on the way (FlashAttention-2's
        loop order: each tile's weights and score gradients are recomputed once)."""
        kj = kb[:, i_k]

        def step(carry, i_q):
            def add(carry):
                dk, dv, dq = carry
                p = probs(i_q, i_k)
                dv = dv + jnp.einsum("bhgqk,bhgqd->bhkd", p, dout[:, i_q])
                ds = dscores(i_q, i_k, p) * scale
                dk = dk + jnp.einsum("bhgqk,bhgqd->bhkd", ds, qb[:, i_q])
                dq = dq.at[:, i_q].add(jnp.einsum("bhgqk,bhkd->bhgqd", ds, kj))
                return dk, dv, dq
            return jax.lax.cond(visible(i_q, i_k), add, lambda x: x, carry), None

        zeros = jnp.zeros((b, hk, bk, d), jnp.float32)
        (dk, dv, dq), _ = jax.lax.scan(step, (zeros, zeros, dq), jnp.arange(nq))
        return dq, (dk, dv)

    dq, (dk, dv) = jax.lax.scan(kv_block, jnp.zeros(qb.shape, jnp.float32), jnp.arange(nk))
    dk, dv = jnp.moveaxis(dk, 0, 1), jnp.moveaxis(dv, 0, 1)
    return (dq.astype(qb.dtype), dk.astype(kb.dtype), dv.astype(vb.dtype),
            jnp.zeros_like(q_slots), jnp.zeros_like(kv_slots), jnp.zeros_like(valid),
            jax.tree.map(lambda x: np.zeros(x.shape, jax.dtypes.float0), segs),
            jnp.zeros_like(slopes))


_flash.defvjp(_flash_fwd, _flash_bwd)
