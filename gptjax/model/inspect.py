"""Looking inside a GPT: the attention weights of every layer and head."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from gptjax.model import positions
from gptjax.model.gpt import GPT


def attention_weights(model: GPT, tokens) -> jax.Array:
    """Softmax attention weights [layers, batch, heads, seq, seq] for `tokens` [batch, seq].

    The model's own forward pass sows them (CausalSelfAttention.sow_weights): each layer's
    softmax(QK^T/sqrt(d_k) + bias) from the queries, keys and mask that pass used, whichever
    kernel the model computes its output with.
    """
    tokens = jnp.asarray(tokens)
    positions.check_length(model.cfg, tokens.shape[1], "prompt length")
    model.set_attributes(sow_weights=True, raise_if_not_found=False)
    try:
        model(tokens)
        sown = nnx.pop(model, nnx.Intermediate)
    finally:
        model.set_attributes(sow_weights=False, raise_if_not_found=False)
    per_layer = [sown["blocks"][i]["attn"]["attention_weights"].get_value()[0]
                 for i in range(model.cfg.num_layers)]
    return jnp.stack(per_layer)
