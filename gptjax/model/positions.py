"""Position encodings: learned (GPT-2), sinusoidal (the article's formula), RoPE, ALiBi, none.

Learned and sinusoidal encodings are added to the token embeddings; RoPE rotates queries and keys;
ALiBi adds a distance penalty to the attention scores.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np


def sinusoidal(positions, d_model: int, dtype=jnp.float32):
    """The background article's section 3.3 formula, for integer `positions` [...]:

        PE(pos, 2i)   = sin(pos / 10000^(2i / d_model))
        PE(pos, 2i+1) = cos(pos / 10000^(2i / d_model))

    Returns [..., d_model].
    """
    two_i = jnp.arange(0, d_model, 2, dtype=jnp.float32)  # the even dimensions 2i
    angle = positions[..., None].astype(jnp.float32) / jnp.power(10000.0, two_i / d_model)
    pe = jnp.stack([jnp.sin(angle), jnp.cos(angle)], axis=-1)  # [..., d_model/2, 2]
    return pe.reshape(*positions.shape, d_model).astype(dtype)


def rope(x, positions, theta: float = 10000.0):
    """Rotary embedding (Su et al. 2021), rotate-half layout as GPT-NeoX and Llama.

    x: [batch, seq, heads, head_dim]; positions: [batch, seq]. Rotating q and k by angles
    proportional to their positions makes q.k depend only on the distance between them.
    """
    half = x.shape[-1] // 2
    inv_freq = 1.0 / (theta ** (jnp.arange(half, dtype=jnp.float32) / half))
    angle = positions[..., None].astype(jnp.float32) * inv_freq  # [batch, seq, half]
    cos, sin = jnp.cos(angle)[:, :, None, :], jnp.sin(angle)[:, :, None, :]
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def alibi_slopes(num_heads: int) -> np.ndarray:
    """Per-head slopes of ALiBi (Press et al. 2022, and their reference code).

    For n heads, n a power of two, the slopes are the geometric sequence 2^(-8/n), 2^(-16/n), ...
    Otherwise take the power of two below n, then every other slope of twice that many.
    """

    def power_of_two(n):
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(num_heads).is_integer():
        return np.asarray(power_of_two(num_heads), np.float32)
    closest = 2 ** math.floor(math.log2(num_heads))
    extra = power_of_two(2 * closest)[0::2][: num_heads - closest]
    return np.asarray(power_of_two(closest) + extra, np.float32)

