"""Attention kernels: softmax(QK^T / sqrt(d_k)) V, several ways.

Every kernel has one signature so the model, the benchmarks and the tests can swap them by name:

    kernel(q, k, v, mask, *, dropout_rate=0.0, dropout_rng=None) -> out
    q: [batch, q_len, heads, head_dim]     k, v: [batch, kv_len, kv_heads, head_dim]
    mask: a gptjax.model.masks.Mask (causal, window, padding, ALiBi), or None for full attention
    dropout_rate, dropout_rng: dropout on the attention weights (training only)
    out: [batch, q_len, heads, head_dim]

`heads` is a multiple of `kv_heads` (MHA when equal, MQA when kv_heads == 1, GQA otherwise).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from gptjax.model.masks import Mask


class Kernel(Protocol):
    def __call__(self, q, k, v, mask: Mask | None = None, *, dropout_rate=0.0,
                 dropout_rng=None) -> jax.Array: ...


KERNELS: dict[str, Kernel] = {}


@dataclasses.dataclass(frozen=True)
class Requirements:
    """Where a kernel runs: JAX backends ('cpu', 'gpu', 'tpu') and compute dtypes (None: any),
    what to use elsewhere, and whether it applies attention-weight dropout."""

    backends: tuple[str, ...] | None = None
    dtypes: tuple[str, ...] | None = None
    instead: str = "'xla'"
    dropout: bool = True


REQUIREMENTS: dict[str, Requirements] = {}


def register(name: str, *, backends=None, dtypes=None, instead: str = "'xla'",
             dropout: bool = True) -> Callable[[Kernel], Kernel]:
    """Add a kernel to the registry under `name` (what `model.attention` selects).

    backends, dtypes: what it runs on, when not everything (checked before any data or compile);
    instead: the kernel(s) its error names for other backends; dropout: False if it has no
    attention-weight dropout (the config then refuses model.dropout > 0).
    """

    def add(fn: Kernel) -> Kernel:
        KERNELS[name] = fn
        REQUIREMENTS[name] = Requirements(backends and tuple(backends), dtypes and tuple(dtypes),
                                          instead, dropout)
        return fn

    return add


def get_kernel(name: str) -> Kernel:
    if name not in KERNELS:
        raise ValueError(f"unknown attention kernel {name!r}; choose one of {sorted(KERNELS)}")
    return KERNELS[name]


def check_available(name: str, backend: str | None = None, *, dtype=None) -> None:
    """Raise ValueError, naming the fix, if kernel `name` cannot run on `backend` (default: JAX's
    current one) or in compute `dtype` (when given)."""
    get_kernel(name)
    needs = REQUIREMENTS.get(name, Requirements())
    if needs.backends is not None:
        backend = backend or jax.default_backend()
        if backend not in needs.backends:
            raise ValueError(
                f"model.attention={name!r} needs a {' or '.join(b.upper() for b in needs.backends)}"
                f", but JAX's backend is {backend!r}; use model.attention={needs.instead} here "
                f"(a saved model: GPT.from_pretrained(path, attention='xla'))")
    if dtype is not None and needs.dtypes is not None and jnp.dtype(dtype).name not in needs.dtypes:
        raise ValueError(f"model.attention={name!r} computes in {list(needs.dtypes)} only, not "
                         f"{jnp.dtype(dtype).name!r}; set model.dtype={needs.dtypes[0]!r} or use "
                         "model.attention='xla'")


def refuse_dropout(name: str, dropout_rate, dropout_rng) -> None:
    """For kernels registered with dropout=False, called directly with dropout asked for (the
    config refuses it before a run)."""
    if dropout_rate > 0.0 and dropout_rng is not None:
        raise ValueError(f"model.attention={name!r} has no attention-weight dropout; set "
                         "model.dropout=0 or use model.attention='xla'")


def _repeat_kv(q, k, v):
    """Multi-head with shared K/V heads (MQA/GQA): each K/V head serves heads // kv_heads
    queries, so it is repeated that many times."""
    group = q.shape[2] // k.shape[2]
    return jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)


def _attention_weights(q, k, dense, bias, subscripts="bqhd,bkhd->bhqk"):
    """Steps 2 and 3 of the article: float32 weights [batch, heads, queries, keys]. k has q's
    heads; dense, bias: the mask's boolean matrix and ALiBi bias, or None. subscripts: the
    scores' einsum, for callers that lay q and k out otherwise (_xla_cpu)."""
    d_k = q.shape[-1]
    # 2. attention scores: every query against every key, in parallel for each head.
    scores = jnp.einsum(subscripts, q, k).astype(jnp.float32)
    scores = scores / jnp.sqrt(jnp.float32(d_k))
    if bias is not None:
        scores = scores + bias
    if dense is not None:
        scores = jnp.where(dense, scores, jnp.finfo(jnp.float32).min)
    # 3. normalise: softmax over the keys gives each query's attention weights.
    return jax.nn.softmax(scores, axis=-1)


@register("reference")
def reference_attention(q, k, v, mask=None, *, dropout_rate=0.0, dropout_rng=None):
    """The oracle, written step by step as the background article describes (sections 3.1, 4.2).

    Per head: scores = Q K^T / sqrt(d_k); softmax over keys; context = weights V.
    """
    k, v = _repeat_kv(q, k, v)
    dense, bias = (None, None) if mask is None else (mask.dense(), mask.bias())
    weights = _attention_weights(q, k, dense, bias)
    if dropout_rate > 0.0 and dropout_rng is not None:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
        weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
    weights = weights.astype(v.dtype)
    # 4. weighted sum of the values: each token's context representation.
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def _dot_product_attention(q, k, v, mask=None, *, dropout_rate=0.0, dropout_rng=None,
                           implementation=None):
    if dropout_rate > 0.0 and dropout_rng is not None:
        # jax.nn.dot_product_attention has no attention-weight dropout: train through the oracle.
        return reference_attention(q, k, v, mask, dropout_rate=dropout_rate,
                                   dropout_rng=dropout_rng)
    dense = bias = None
    if mask is not None:
        dense, bias = mask.dense(), mask.bias()
    if implementation == "xla" and q.shape[1] > 1 and jax.default_backend() == "cpu":
        return _xla_cpu(q, k, v, dense, bias)
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=dense,
                                        implementation=implementation)


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
def _xla_cpu(q, k, v, dense, bias):
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
    Other backends, and a decode step (one query, read from the cache in place), keep
    jax.nn.dot_product_attention. Known cost: folding a head-sharded axis into the batch axis
    doubles a TP step's time and XLA temporaries on CPU meshes (docs/bench_scaling.md); a
    [batch, heads, T, d] layout avoids that but measured as slow as the reference at 1k."""
    return _xla_cpu_fwd(q, k, v, dense, bias)[0]


def _xla_cpu_fwd(q, k, v, dense, bias):
    batch, heads = q.shape[0], q.shape[2]
    qh, kh, vh = (_heads_first(x) for x in (q, *_repeat_kv(q, k, v)))
    weights = _attention_weights(qh, kh, _per_head(dense, batch, heads),
                                 _per_head(bias, batch, heads), subscripts="nqd,nkd->nqk")
    out = jnp.einsum("nqk,nkd->nqd", weights.astype(v.dtype), vh)
    return _heads_back(out, batch), (qh, kh, vh, dense, bias, weights, out, k.shape[2])


def _xla_cpu_bwd(res, dout):
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


_xla_cpu.defvjp(_xla_cpu_fwd, _xla_cpu_bwd)

register("xla")(functools.partial(_dot_product_attention, implementation="xla"))


# jax's cuDNN path (jax/_src/cudnn/fused_attention_stablehlo.py) rejects other dtypes; the
# config also checks its head_dim, dropout and training lengths (gptjax.config).
@register("cudnn", backends=("gpu",), dtypes=("bfloat16", "float16"), dropout=False)
def cudnn_attention(q, k, v, mask=None, *, dropout_rate=0.0, dropout_rng=None):
    """jax.nn.dot_product_attention's cuDNN fused kernel (GPU only, fp16/bf16)."""
    check_available("cudnn", dtype=q.dtype)  # direct callers get the message, not jax's
    return _dot_product_attention(q, k, v, mask, dropout_rate=dropout_rate,
                                  dropout_rng=dropout_rng, implementation="cudnn")


# Kernels in their own files register themselves on import.
from gptjax.model import blockwise, pallas  # noqa: E402,F401
