"""The reference kernel: attention written step by step, as the background article describes it
(sections 3.1 and 4.2). It is the oracle the fast kernels are tested against."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gptjax.model.kernels.registry import register


def repeat_kv(q, k, v):
    """Multi-head with shared K/V heads (MQA/GQA): each K/V head serves heads // kv_heads
    queries, so it is repeated that many times."""
    group = q.shape[2] // k.shape[2]
    return jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)


def attention_weights(q, k, dense, bias, subscripts="bqhd,bkhd->bhqk"):
    """Steps 2 and 3 of the article: float32 weights [batch, heads, queries, keys]. k has q's
    heads; dense, bias: the mask's boolean matrix and ALiBi bias, or None. subscripts: the
    scores' einsum, for callers that lay q and k out otherwise (xla_cpu)."""
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


@register("reference", segments=True)
def reference_attention(q, k, v, mask=None, *, dropout_rate=0.0, dropout_rng=None):
    """The oracle, written step by step as the background article describes (sections 3.1, 4.2).

    Per head: scores = Q K^T / sqrt(d_k); softmax over keys; context = weights V.
    """
    k, v = repeat_kv(q, k, v)
    dense, bias = (None, None) if mask is None else (mask.dense(), mask.bias())
    weights = attention_weights(q, k, dense, bias)
    if dropout_rate > 0.0 and dropout_rng is not None:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
        weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
    weights = weights.astype(v.dtype)
    # 4. weighted sum of the values: each token's context representation.
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)
