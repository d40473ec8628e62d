"""Pallas flash attention: a thin adapter over the kernels JAX maintains.

On a GPU, jax.experimental.pallas.ops.gpu.attention.mha (Triton; forward and backward are Pallas
kernels behind a custom VJP); on a TPU, jax.experimental.pallas.ops.tpu.flash_attention. Both
take one K/V head per query head, a causal flag and segment ids, and nothing else this codebase's
Mask describes, so:

- supported: causal self-attention over the whole sequence (the training case: q_slots ==
  kv_slots == 0..T-1), full attention (mask=None), padding (kv_valid) and packed documents
  (the mask's segment ids) as the ops' segment ids, MHA, and GQA/MQA by repeating the K/V heads
  (the repeat's VJP sums their gradients back);
- refused with a ValueError naming the fix: sliding window, ALiBi, attention-weight dropout and
  a KV-cache step (q_len != kv_len); `blockwise` or `xla` do those.

Padding as segment ids: a real token attends exactly as in the reference; a padding position
attends to other padding positions only (never to real ones), so its output -- meaningless in
every kernel -- differs from the reference's, and no real token's output or gradient depends on it.

Off GPU/TPU the kernel refuses to run unless `interpret=True` (or the module's INTERPRET is set):
then the GPU op runs in Pallas interpret mode, which is how the tests check it on a CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gptjax.model.kernels.registry import check_available, refuse_dropout, register
from gptjax.model.masks import Mask

# True: run the GPU op in Pallas interpret mode on any backend (slow; for tests on a CPU).
INTERPRET = False
# Triton's tl.dot needs tiles of at least 16 rows and columns.
MIN_BLOCK = 16
# The segment id of padding: no document's (ids are document indices, never this negative).
PAD = -(2 ** 31)


# Runs start only on a GPU/TPU (kernels.check_available); interpret mode is for direct calls.
@register("pallas", backends=("gpu", "tpu"), instead="'blockwise' or 'xla'", dropout=False,
          window=False, alibi=False, segments=True)
def pallas_attention(q, k, v, mask: Mask | None = None, *, dropout_rate=0.0, dropout_rng=None,
                     block_q: int = 128, block_k: int = 128, block_bwd: int = 32,
                     interpret: bool | None = None):
    """Same contract as the other kernels (see kernels.py), within the limits above.

    block_q, block_k: forward tiles (the ops' defaults); block_bwd: the GPU backward's tiles.
    The sequence is zero-padded to a multiple of the tiles; the padding is hidden from real keys.
    """
    interpret = INTERPRET if interpret is None else interpret
    if not interpret:
        check_available("pallas")  # a GPU or TPU
    backend = jax.default_backend()
    causal = _check(q, k, mask, dropout_rate, dropout_rng)
    b, t, h, d = q.shape
    # Power-of-two tiles no larger than the (padded) sequence; pad T to a multiple of both.
    fit = max(MIN_BLOCK, _next_pow2(t))
    bq, bk = min(_next_pow2(block_q), fit), min(_next_pow2(block_k), fit)
    tp = -(-t // max(bq, bk)) * max(bq, bk)
    segments = _segment_ids(mask, b, t, tp, causal)
    group = h // k.shape[2]
    k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)  # one K/V head per query
    q, k, v = (jnp.pad(x, ((0, 0), (0, tp - t), (0, 0), (0, 0))) for x in (q, k, v))
    scale = 1.0 / float(np.sqrt(d))  # both ops default to sm_scale=1
    if interpret or backend == "gpu":
        out = _gpu(q, k, v, segments, scale, causal, bq, bk, min(block_bwd, bq, bk), interpret)
    else:
        out = _tpu(q, k, v, segments, scale, causal, bq, bk)
    return out[:, :t]


def _check(q, k, mask, dropout_rate, dropout_rng) -> bool:
    """Refuse what the ops cannot do; return whether the mask is causal."""
    refuse_dropout("pallas", dropout_rate, dropout_rng)
    if k.shape[1] != q.shape[1]:
        raise ValueError(
            f"model.attention='pallas' attends over the whole sequence only (q_len == kv_len), "
            f"got q_len={q.shape[1]}, kv_len={k.shape[1]} (a KV-cache step); use "
            "model.attention='blockwise' or 'xla' to decode, e.g. "
            "GPT.from_pretrained(path, attention='xla')")
    if mask is None:
        return False
    if mask.kv_segments is not None:
        raise ValueError("model.attention='pallas' takes one array of segment ids for queries "
                         "and keys (self-attention); use model.attention='blockwise' or 'xla'")
    if mask.window is not None:
        raise ValueError(f"model.attention='pallas' has no sliding window (model.window="
                         f"{mask.window}); use model.attention='blockwise' or 'xla'")
    if mask.alibi_slopes is not None:
        raise ValueError("model.attention='pallas' has no ALiBi bias (model.position='alibi'); "
                         "use model.attention='blockwise' or 'xla'")
    # Under jit the slots are traced; equal lengths then imply slots 0..T-1 in this codebase.
    for name, slots in (("q_slots", mask.q_slots), ("kv_slots", mask.kv_slots)):
        if not isinstance(slots, jax.core.Tracer) and not np.array_equal(
                np.asarray(slots), np.arange(slots.shape[0])):
            raise ValueError(
                f"model.attention='pallas' needs mask.{name} = 0..T-1 (causal self-attention "
                "from slot 0); use model.attention='blockwise' or 'xla' for a KV-cache step")
    return True


def _segment_ids(mask, b, t, tp, causal):
    """The ops' segment ids [batch, tp], or None if every key may be seen: the mask's (or 1 for
    every real token), PAD for padding and for the tile padding at the end (which causality
    hides anyway, but full attention would not)."""
    padded = mask is not None and mask.kv_valid is not None
    documents = mask is not None and mask.q_segments is not None
    if not (padded or documents or (tp > t and not causal)):
        return None
    ids = mask.q_segments.astype(jnp.int32) if documents else jnp.ones((1, t), jnp.int32)
    if padded:
        ids = jnp.where(mask.kv_valid.astype(bool), ids, PAD)
    return jnp.pad(jnp.broadcast_to(ids, (b, t)), ((0, 0), (0, tp - t)), constant_values=PAD)


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _gpu(q, k, v, segments, scale, causal, bq, bk, bb, interpret):
    """q, k, v: [batch, seq, heads, head_dim] (the GPU op's layout)."""
    from jax.experimental.pallas.ops.gpu import attention

    blocks = attention.BlockSizes(block_q=bq, block_k=bk, block_q_dkv=bb, block_kv_dkv=bb,
                                  block_q_dq=bb, block_kv_dq=bb)
    return attention.mha(q, k, v, segments, sm_scale=scale, causal=causal, block_sizes=blocks,
                         interpret=interpret)


def _tpu(q, k, v, segments, scale, causal, bq, bk):
    """The TPU op takes [batch, heads, seq, head_dim]."""
    from jax.experimental.pallas.ops.tpu import flash_attention as fa

    blocks = fa.BlockSizes(block_q=bq, block_k_major=bk, block_k=bk, block_b=1,
                           block_q_major_dkv=bq, block_k_major_dkv=bk, block_k_dkv=bk,
                           block_q_dkv=bq, block_k_major_dq=bk, block_k_dq=bk, block_q_dq=bq)
    q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
    segment_ids = None if segments is None else fa.SegmentIds(q=segments, kv=segments)
    out = fa.flash_attention(q, k, v, segment_ids=segment_ids, causal=causal, sm_scale=scale,
                             block_sizes=blocks)
    return out.transpose(0, 2, 1, 3)
