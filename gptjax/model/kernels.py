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


def _attention_weights(q, k, dense, bias):
    """Steps 2 and 3 of the article: float32 weights [batch, heads, queries, keys]. k has q's
    heads; dense, bias: the mask's boolean matrix and ALiBi bias, or None."""
    d_k = q.shape[-1]
    # 2. attention scores: every query against every key, in parallel for each head.
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
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
        if 1 < k.shape[2] < q.shape[2]:
            return _grouped_xla(q, k, v, dense, bias)
        return _xla_stored_weights(q, k, v, dense, bias)
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=dense,
                                        implementation=implementation)


def _xla(q, k, v, dense, bias):
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=dense, implementation="xla")


@jax.custom_vjp
def _grouped_xla(q, k, v, dense, bias):
    """GQA over many queries (training, evaluation, prefill) in the layout each pass is fastest
    in. jax's grouped path (a vmap over the query heads that share a K/V head) lays the
    [queries, keys] scores out group-major; on XLA:CPU transposing them makes the forward pass
    1.25x slower than repeating K/V at 1k tokens, while its backward, which contracts over the
    groups directly, makes forward+backward 1.1-2.2x faster than the reference (256-8k tokens;
    docs/bench_attention) and than _xla_stored_weights' backward (1.3x at 4k). So a forward
    pass alone repeats the K/V heads (the MHA program) and a differentiated call runs jax's
    grouped path forward and backward. Measured on CPUs only, so other backends keep jax's
    path; a decode step (one query) keeps it too, reading the cache in place rather than
    copying it per query head."""
    return _xla(q, *_repeat_kv(q, k, v), dense, bias)


def _grouped_xla_fwd(q, k, v, dense, bias):
    return jax.vjp(_xla, q, k, v, dense, bias)


def _grouped_xla_bwd(vjp, dout):
    return vjp(dout)


_grouped_xla.defvjp(_grouped_xla_fwd, _grouped_xla_bwd)


@jax.custom_vjp
def _xla_stored_weights(q, k, v, dense, bias):
    """MHA and MQA over many queries on CPUs: jax's forward, and the backward FlashAttention
    derives, from the stored weights P = softmax(S):

        dV = P^T dO    dP = dO V^T    dS = P * (dP - rowsum(dO * O))    dQ = dS K / sqrt(d_k)
        dK = dS^T Q / sqrt(d_k)

    rowsum(dO * O) equals the softmax backward's rowsum(P * dP) (O = P V) but costs O(T d),
    not a pass over the [queries, keys] matrices; the scale moves onto the [T, d] products and
    masked weights are already zero, so autodiff's two other passes over them go too. Measured
    on XLA:CPU against autodiff's backward (same process, rounds taken together): 1.2-1.3x
    faster forward+backward at 4k tokens for MHA (1.05x for MQA), 1.5x at 8k for both, equal at
    1k where the products dominate. GQA keeps jax's grouped backward, faster still. MQA's K/V
    head is repeated for the products and its gradients summed back."""
    return _xla(q, *_repeat_kv(q, k, v), dense, bias)


def _xla_stored_weights_fwd(q, k, v, dense, bias):
    rk, rv = _repeat_kv(q, k, v)
    weights = _attention_weights(q, rk, dense, bias)  # the reference's
    out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), rv)
    return out, (q, k, v, dense, bias, weights, out)


def _xla_stored_weights_bwd(res, dout):
    q, k, v, dense, bias, weights, out = res
    kv_heads = k.shape[2]
    k, v = _repeat_kv(q, k, v)
    scale = 1.0 / math.sqrt(q.shape[-1])
    dv = jnp.einsum("bhqk,bqhd->bkhd", weights.astype(dout.dtype), dout)
    dp = jnp.einsum("bqhd,bkhd->bhqk", dout, v).astype(jnp.float32)
    delta = jnp.einsum("bqhd,bqhd->bhq", dout.astype(jnp.float32), out.astype(jnp.float32))
    ds = weights * (dp - delta[..., None])
    if dense is not None:  # a row with every key masked has uniform weights, not zeros
        ds = jnp.where(dense, ds, 0.0)
    dbias = None
    if bias is not None:  # summed over the axes bias was broadcast along
        dbias = jnp.sum(ds, axis=tuple(i for i, n in enumerate(bias.shape) if n < ds.shape[i]),
                        keepdims=True).astype(bias.dtype)
    ds = ds.astype(q.dtype)
    dq = jnp.einsum("bhqk,bkhd->bqhd", ds, k) * scale
    dk = jnp.einsum("bhqk,bqhd->bkhd", ds, q) * scale
    if kv_heads < q.shape[2]:  # MQA: the repeated heads' gradients, summed back
        dk = dk.sum(axis=2, keepdims=True)
        dv = dv.sum(axis=2, keepdims=True)
    ddense = None if dense is None else np.zeros(dense.shape, jax.dtypes.float0)
    return dq, dk, dv, ddense, dbias


_xla_stored_weights.defvjp(_xla_stored_weights_fwd, _xla_stored_weights_bwd)

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
