"""The xla kernel's CPU paths: what `xla` runs over many queries (training, evaluation, prefill)
and for one query per row (decoding) when JAX computes on CPUs. gptjax.model.kernels.xla chooses
them; other backends never see them."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from gptjax.model.kernels.reference import attention_weights, repeat_kv


def _heads_first(x):
    """[batch, seq, heads, d] -> [batch * heads, seq, d]."""
    b, t, h, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b * h, t, d)


def _heads_back(x, batch):
    """[batch * heads, seq, d] -> [batch, seq, heads, d]."""
    n, t, d = x.shape
    return x.reshape(batch, n // batch, t, d).transpose(0, 2, 1, 3)


def _per_head(x, batch, heads):
    """A mask or bias [batch|1, heads|1, q, k] as [batch * heads, q, k] (None stays None)."""
    if x is None:
        return None
    return jnp.broadcast_to(x, (batch, heads, *x.shape[2:])).reshape(batch * heads,
                                                                    *x.shape[2:])


@jax.custom_vjp
def xla_cpu(q, k, v, dense, bias):
    """The xla kernel over many queries (training, evaluation, prefill) on CPUs: the reference's
    arithmetic with the heads folded into the products' batch axis, [batch * heads, seq, d]
    (K/V heads repeated for MQA/GQA), and the backward FlashAttention derives from the stored
    weights P = softmax(S):

        dV = P^T dO    dP = dO V^T    dS = P * (dP - rowsum(dO * O))    dQ = dS K / sqrt(d_k)
        dK = dS^T Q / sqrt(d_k)

    Why, measured on XLA:CPU (docs/bench_attention):
    - jax.nn.dot_product_attention's and the reference's [batch, seq, heads, d] einsums make
      XLA compute the weighted sum transposed, (P V)^T = V^T P^T, which copies the [T, T]
      weights into P^T first; with the heads first the weights feed their products as they
      lie. Forward 1.3-1.5x the reference, forward+backward 1.1-2.3x (256 to 8k tokens), with
      a third to a half less memory planned.
    - rowsum(dO * O) equals the softmax backward's rowsum(P * dP) (O = P V) but costs O(T d),
      not a pass over the [T, T] matrices; the scale moves onto the [T, d] products and the
      mask joins the one pass that forms dS.
    - Repeating the K/V heads costs O(T d); jax's grouped path (a vmap over the query heads
      that share a K/V head) held 2x the temporaries for the same time.
    Other backends keep jax.nn.dot_product_attention; a decode step (one query) is
    xla_cpu_decode's. Known cost: folding a head-sharded axis into the batch axis
    doubles a TP step's time and XLA temporaries on CPU meshes (docs/bench_scaling.md); a
    [batch, heads, T, d] layout avoids that but measured as slow as the reference at 1k."""
    return xla_cpu_fwd(q, k, v, dense, bias)[0]


def xla_cpu_fwd(q, k, v, dense, bias):
    batch, heads = q.shape[0], q.shape[2]
    qh, kh, vh = (_heads_first(x) for x in (q, *repeat_kv(q, k, v)))
    weights = attention_weights(qh, kh, _per_head(dense, batch, heads),
                                 _per_head(bias, batch, heads), subscripts="nqd,nkd->nqk")
    out = jnp.einsum("nqk,nkd->nqd", weights.astype(v.dtype), vh)
    return _heads_back(out, batch), (qh, kh, vh, dense, bias, weights, out, k.shape[2])


def xla_cpu_bwd(res, dout):
    qh, kh, vh, dense, bias, weights, out, kv_heads = res
    batch, heads = dout.shape[0], dout.shape[2]
    scale = 1.0 / math.sqrt(qh.shape[-1])
    doh = _heads_first(dout)
    dv = jnp.einsum("nqk,nqd->nkd", weights.astype(doh.dtype), doh)
    dp = jnp.einsum("nqd,nkd->nqk", doh, vh).astype(jnp.float32)
    delta = jnp.einsum("nqd,nqd->nq", doh.astype(jnp.float32), out.astype(jnp.float32))
    dp = dp - delta[..., None]
    if dense is not None:  # a row with every key masked has uniform weights, not zeros
        dp = jnp.where(_per_head(dense, batch, heads), dp, 0.0)
    ds = weights * dp
    dbias = None
    if bias is not None:  # summed over the axes bias was broadcast along
        full = ds.reshape(batch, heads, *ds.shape[1:])
        dbias = jnp.sum(full, axis=tuple(i for i, n in enumerate(bias.shape)
                                         if n < full.shape[i]), keepdims=True).astype(bias.dtype)
    ds = ds.astype(qh.dtype)
    dq = jnp.einsum("nqk,nkd->nqd", ds, kh) * scale
    dk = jnp.einsum("nqk,nqd->nkd", ds, qh) * scale
    dq, dk, dv = (_heads_back(x, batch) for x in (dq, dk, dv))
    if kv_heads < heads:  # MQA/GQA: each K/V head's repeats' gradients, summed back
        group_sum = lambda x: x.reshape(*x.shape[:2], kv_heads, heads // kv_heads,  # noqa: E731
                                        x.shape[-1]).sum(axis=3)
        dk, dv = group_sum(dk), group_sum(dv)
    ddense = None if dense is None else np.zeros(dense.shape, jax.dtypes.float0)
    return dq, dk, dv, ddense, dbias


xla_cpu.defvjp(xla_cpu_fwd, xla_cpu_bwd)


def xla_cpu_decode(q, k, v, dense, bias):
    """The xla kernel for one query per row (a decode step) on CPUs: q [batch, 1, heads, d]
    against the cache's k, v [batch, kv_len, kv_heads, d]; the reference's arithmetic as
    products over (sequence, K/V head) rows, [batch * kv_heads, ..., d].

    Those rows are how the KV cache lies (GPT.init_cache), so XLA reads and updates it in place;
    jax.nn.dot_product_attention's grouped einsum made XLA:CPU copy each layer's whole K cache
    transposed on every step (~10-20% of a 124M decode step at 256-1024 slots). The queries
    sharing a K/V head (MQA/GQA) are that row's queries, so K/V heads are never repeated."""
    batch, _, heads, d = q.shape
    kv_len, kv_heads = k.shape[1], k.shape[2]
    group = heads // kv_heads
    rows = lambda x: x.swapaxes(1, 2).reshape(batch * kv_heads, kv_len, d)  # noqa: E731
    qg = q.reshape(batch * kv_heads, group, d)
    scores = jnp.einsum("ngd,nsd->ngs", qg, rows(k)).astype(jnp.float32)
    scores = scores.reshape(batch, heads, 1, kv_len) / jnp.sqrt(jnp.float32(d))
    if bias is not None:
        scores = scores + bias
    if dense is not None:
        scores = jnp.where(dense, scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("ngs,nsd->ngd", weights.reshape(batch * kv_heads, group, kv_len), rows(v))
    return out.reshape(batch, 1, heads, d)
