"""Position encodings, one registered object each: learned (GPT-2), sinusoidal (the article's
formula), RoPE, ALiBi, none.

The model calls every encoding's hooks and never asks which one it has:

    table(cfg, rngs)             parameters it needs (learned: the [max_len, d_model] table)
    embed(model, x, positions)   added to the token embeddings (learned, sinusoidal)
    rotate(cfg, q, k, positions) applied to queries and keys (RoPE)
    slopes(cfg)                  a per-head score bias -slope * distance (ALiBi), or None
    max_positions(cfg)           how many positions it can tell apart (None: any number)
    check(cfg)                   shapes it cannot take, as a ConfigError

Adding one is a subclass of Position with the hooks it changes, `@register("name")`, and a test.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from flax import nnx

from gptjax.config import ConfigError, ModelConfig
from gptjax.model.layers import EMBED_STD, embedding, lookup


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


class Position:
    """No position information ('none'): the base every encoding changes some hooks of."""

    name = "none"

    def table(self, cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Embed | None:
        return None

    def embed(self, model, x, positions):
        return x

    def rotate(self, cfg: ModelConfig, q, k, positions):
        return q, k

    def slopes(self, cfg: ModelConfig):
        return None

    def max_positions(self, cfg: ModelConfig) -> int | None:
        return None

    def check(self, cfg: ModelConfig) -> None:
        pass


POSITIONS: dict[str, Position] = {}


def register(name: str):
    """Add a Position subclass to the registry under `name` (what `model.position` selects)."""

    def add(cls: type[Position]) -> type[Position]:
        instance = cls()
        instance.name = name
        POSITIONS[name] = instance
        return cls

    return add


def get(name: str) -> Position:
    if name not in POSITIONS:
        raise ConfigError(f"model.position={name!r} is invalid: choose one of "
                          f"{list(POSITIONS)}")
    return POSITIONS[name]


def check(cfg: ModelConfig) -> None:
    """Raise ConfigError if cfg.position is unknown or cannot take cfg's shapes."""
    get(cfg.position).check(cfg)


def check_length(cfg: ModelConfig, length: int, what: str = "sequence length") -> None:
    """Raise ConfigError if `length` tokens cannot be positioned by this model."""
    limit = get(cfg.position).max_positions(cfg)
    if limit is not None and length > limit:
        raise ConfigError(
            f"{what} {length} exceeds model.max_len={limit}, the number of {cfg.position} "
            "positions; shorten the input or raise model.max_len")


@register("learned")
class Learned(Position):
    """GPT-2's: a trained [max_len, d_model] table, added to the token embeddings."""

    def table(self, cfg, rngs):
        return embedding(cfg, cfg.max_len, (None, "embed"), rngs)

    def embed(self, model, x, positions):
        return x + lookup(model.wpe, positions, (None, None))

    def max_positions(self, cfg):
        return cfg.max_len


@register("sinusoidal")
class Sinusoidal(Position):
    """The article's fixed sin/cos table, added to the token embeddings.

    The formula's amplitude is 1 and GPT-2's token embeddings start at std 0.02: unscaled, the
    encoding drowns the tokens (nanoGPT's CPU recipe stalled at the unigram loss, 3.33 after 500
    steps). Scaled by the embeddings' init std, the two start in Vaswani et al.'s proportion
    (embeddings * sqrt(d_model) at std d^-1/2).
    """

    def embed(self, model, x, positions):
        return x + EMBED_STD * sinusoidal(positions, model.cfg.d_model, x.dtype)

    def check(self, cfg):
        if cfg.d_model % 2:
            raise ConfigError(f"model.d_model={cfg.d_model!r} is invalid: sinusoidal positions "
                              "need an even d_model")


@register("rope")
class Rotary(Position):
    """RoPE: queries and keys rotated by their positions."""

    def rotate(self, cfg, q, k, positions):
        return rope(q, positions, cfg.rope_theta), rope(k, positions, cfg.rope_theta)

    def check(self, cfg):
        if cfg.head_dim % 2:
            raise ConfigError(f"model.d_model={cfg.d_model!r} is invalid: RoPE needs an even "
                              f"head_dim; d_model/num_heads={cfg.head_dim}")


@register("alibi")
class ALiBi(Position):
    """ALiBi: a per-head penalty on the scores, proportional to the query-key distance."""

    def slopes(self, cfg):
        return jnp.asarray(alibi_slopes(cfg.num_heads))


register("none")(Position)
