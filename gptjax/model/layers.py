"""Building blocks with GPT-2's initialisation and logical axis names for sharding: Linear
layers, LayerNorm and embedding lookups. gptjax.parallel maps the axis names to a mesh."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from gptjax.config import ModelConfig
from gptjax.model import cpu, lora
from gptjax.parallel.rules import with_logical_constraint as constrain  # no-op off a mesh

EMBED_STD = 0.02  # GPT-2's initial std of the token (and learned position) embeddings


def dense(cfg: ModelConfig, d_in: int, d_out: int, axes, *, std: float, rngs: nnx.Rngs,
          use_bias: bool = True, used_out: int | None = None,
          path: str | None = None) -> nnx.Linear:
    """A Linear with GPT-2 init (normal(std), zero bias) and logical axis names for sharding;
    output columns past `used_out` (a padded vocabulary's) start at zero. A projection at
    `path` ('blocks/0/attn/query') that cfg's LoRA targets gets an adapter (lora.LoRALinear)."""
    init = nnx.initializers.normal(std)
    if used_out is not None and used_out < d_out:
        init = zero_padded(init, used_out, axis=1)
    kind, extra = nnx.Linear, {}
    if path is not None and lora.is_target(cfg, path):
        kind, extra = lora.LoRALinear, {"cfg": cfg, "axes": axes}
    return kind(
        d_in, d_out, **extra, use_bias=use_bias, dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype),
        kernel_init=nnx.with_partitioning(init, axes),
        bias_metadata={"out_sharding": (axes[1],)}, rngs=rngs)


def layer_norm(cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """nnx.LayerNorm over d_model (on CPUs with gptjax.model.cpu's backward: same parameters)."""
    return cpu.layer_norm_class()(
        cfg.d_model, epsilon=cfg.layer_norm_epsilon, dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype), scale_metadata={"out_sharding": ("norm",)},
        bias_metadata={"out_sharding": ("norm",)}, rngs=rngs)


def embedding(cfg: ModelConfig, rows: int, axes, rngs: nnx.Rngs, *,
              used_rows: int | None = None) -> nnx.Embed:
    """An embedding table [rows, d_model], GPT-2's init (normal(0.02)); rows past `used_rows`
    (a padded vocabulary's) start at zero."""
    init = nnx.initializers.normal(EMBED_STD)
    if used_rows is not None and used_rows < rows:
        init = zero_padded(init, used_rows, axis=0)
    return nnx.Embed(rows, cfg.d_model, dtype=jnp.dtype(cfg.dtype),
                     param_dtype=jnp.dtype(cfg.param_dtype),
                     embedding_init=nnx.with_partitioning(init, axes), rngs=rngs)


def zero_padded(init, used: int, axis: int):
    """`init` drawn for the first `used` entries along `axis` (the numbers an unpadded array
    gets from the same key), zeros after them."""

    def padded(key, shape, dtype=jnp.float32):
        inner = list(shape)
        inner[axis] = used
        pad = [(0, 0)] * len(shape)
        pad[axis] = (0, shape[axis] - used)
        return jnp.pad(init(key, tuple(inner), dtype), pad)

    return padded


def mask_padded_vocab(cfg: ModelConfig, logits):
    """Logits [..., padded_vocab] with the padded entries at float32's lowest: never predicted,
    sampled or scored, and no gradient reaches their weights."""
    if cfg.padded_vocab == cfg.vocab_size:
        return logits
    real = jnp.arange(cfg.padded_vocab) < cfg.vocab_size
    return jnp.where(real, logits, jnp.finfo(logits.dtype).min)


def tied_logits(embed: nnx.Embed, x):
    """x [..., d_model] against every row of the table: [..., rows] (a tied LM head).

    Contracting the table's own d_model axis, not `x @ table.T`: for one decoded token XLA's
    CPU backend materialised that transpose (the whole table, every step) before its gemv.
    """
    x, table = embed.promote_dtype((x, embed.embedding[...]), dtype=embed.dtype)
    return jnp.einsum("...d,vd->...v", x, table)


def lookup(embed: nnx.Embed, ids, table_axes):
    """embed(ids), with the table read whole along d_model: FSDP gathers it before the lookup
    (a no-op off a mesh), so the output splits by batch like every activation, not by feature."""
    table = constrain(embed.embedding[...], table_axes)
    return jnp.take(table.astype(embed.dtype or table.dtype), ids, axis=0)
