"""Looking inside a GPT: the attention weights of every layer and head."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gptjax.model import positions
from gptjax.model.gpt import GPT
from gptjax.model.masks import causal


def attention_weights(model: GPT, tokens) -> jax.Array:
    """Softmax attention weights [layers, batch, heads, seq, seq] for `tokens` [batch, seq].

    Runs the model block by block and recomputes each layer's softmax(QK^T/sqrt(d_k) + bias)
    from that layer's queries and keys, whichever kernel the model trains with.
    """
    cfg = model.cfg
    tokens = jnp.asarray(tokens)
    b, t = tokens.shape
    cfg.check_length(t, "prompt length")
    pos = jnp.broadcast_to(jnp.arange(t), (b, t))
    x = model.wte(tokens)
    if cfg.position == "learned":
        x = x + model.wpe(pos)
    elif cfg.position == "sinusoidal":
        x = x + positions.sinusoidal(pos, cfg.d_model, x.dtype)
    slopes = jnp.asarray(positions.alibi_slopes(cfg.num_heads)) \
        if cfg.position == "alibi" else None
    mask = causal(t, window=cfg.window, alibi_slopes=slopes)
    weights = []
    for block in model.blocks:
        q, k, _ = block.attn.project(block.ln_1(x), pos)
        k = jnp.repeat(k, cfg.num_heads // cfg.num_kv_heads, axis=2)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / jnp.sqrt(
            jnp.float32(cfg.head_dim))
        if slopes is not None:
            scores = scores + mask.bias()
        scores = jnp.where(mask.dense(), scores, jnp.finfo(jnp.float32).min)
        weights.append(jax.nn.softmax(scores, axis=-1))
        x, _ = block(x, positions_=pos, mask=mask)
    return jnp.stack(weights)
