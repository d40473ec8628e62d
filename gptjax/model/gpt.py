"""The GPT: token embedding, positions, N pre-LayerNorm decoder blocks, final LayerNorm, LM head.

GPT-2's architecture (Radford et al. 2019). Read top to bottom: MLP, Block, GPT.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gptjax.config import ModelConfig
from gptjax.model import ops, positions
from gptjax.model.attention import CausalSelfAttention, dense
from gptjax.model.masks import Mask
from gptjax.parallel.rules import with_logical_constraint as constrain  # no-op off a mesh

EMBED_STD = 0.02  # GPT-2's initial std of the token (and learned position) embeddings


def layer_norm(cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return ops.LayerNorm(cfg.d_model, epsilon=cfg.layer_norm_epsilon,
                         dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
                         scale_metadata={"out_sharding": ("norm",)},
                         bias_metadata={"out_sharding": ("norm",)}, rngs=rngs)


class MLP(nnx.Module):
    """Position-wise feed-forward: d_model -> d_ff -> GELU (tanh, as GPT-2) -> d_model."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.fc = dense(cfg, cfg.d_model, cfg.d_ff, ("embed", "mlp"), std=0.02, rngs=rngs)
        self.proj = dense(cfg, cfg.d_ff, cfg.d_model, ("mlp", "embed"),
                          std=0.02 / math.sqrt(2 * cfg.num_layers), rngs=rngs)
        self.dropout = nnx.Dropout(cfg.dropout)

    def __call__(self, x, *, deterministic=True, rngs=None):
        h = constrain(ops.gelu_tanh(self.fc(x)), ("batch", "seq", "mlp"))
        return self.dropout(self.proj(h), deterministic=deterministic, rngs=rngs)


class Block(nnx.Module):
    """x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.ln_1 = layer_norm(cfg, rngs)
        self.attn = CausalSelfAttention(cfg, rngs=rngs)
        self.ln_2 = layer_norm(cfg, rngs)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x, *, positions_, mask, cache=None, cache_index=None,
                 deterministic=True, rngs=None):
        a, cache = self.attn(self.ln_1(x), positions_=positions_, mask=mask,
                             cache=cache, cache_index=cache_index, deterministic=deterministic,
                             rngs=rngs)
        x = x + a
        x = x + self.mlp(self.ln_2(x), deterministic=deterministic, rngs=rngs)
        return constrain(x, ("batch", "seq", "embed")), cache


def lookup(embed: nnx.Embed, ids, table_axes):
    """embed(ids), with the table read whole along d_model: FSDP gathers it before the lookup
    (a no-op off a mesh), so the output splits by batch like every activation, not by feature."""
    table = constrain(embed.embedding[...], table_axes)
    return jnp.take(table.astype(embed.dtype or table.dtype), ids, axis=0)


class GPT(nnx.Module):
    """A decoder-only Transformer language model. `GPT(ModelConfig(...), rngs=nnx.Rngs(0))`."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        # Parameters carry logical axis names; gptjax.parallel maps them to a mesh later.
        with nnx.use_eager_sharding(False):
            pdtype, dtype = jnp.dtype(cfg.param_dtype), jnp.dtype(cfg.dtype)
            embed_init = nnx.with_partitioning(nnx.initializers.normal(EMBED_STD),
                                               ("vocab", "embed"))
            self.wte = nnx.Embed(cfg.vocab_size, cfg.d_model, dtype=dtype, param_dtype=pdtype,
                                 embedding_init=embed_init, rngs=rngs)
            if cfg.position == "learned":
                self.wpe = nnx.Embed(
                    cfg.max_len, cfg.d_model, dtype=dtype, param_dtype=pdtype,
                    embedding_init=nnx.with_partitioning(nnx.initializers.normal(EMBED_STD),
                                                         (None, "embed")), rngs=rngs)
            self.embed_dropout = nnx.Dropout(cfg.dropout)
            self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
            self.ln_f = layer_norm(cfg, rngs)
            if not cfg.tie_embeddings:
                self.lm_head = dense(cfg, cfg.d_model, cfg.vocab_size, ("embed", "vocab"),
                                     std=0.02, rngs=rngs, use_bias=False)

    def __call__(self, tokens, *, positions_=None, attention_mask_=None, deterministic=True,
                 rngs: nnx.Rngs | None = None):
        """tokens: [batch, seq] int -> logits [batch, seq, vocab] (float32).

        positions_: [batch, seq] position ids (default 0..seq-1); attention_mask_: [batch, seq],
        0 for padding; rngs: an nnx.Rngs with a 'dropout' stream when deterministic=False.
        """
        logits, _ = self.forward(tokens, positions_=positions_, kv_valid=attention_mask_,
                                 deterministic=deterministic, rngs=rngs)
        return logits

    def forward(self, tokens, *, positions_=None, kv_valid=None, cache=None, cache_index=0,
                deterministic=True, rngs=None, logits=True):
        """The full pass, with an optional KV cache (a list with one {'k','v'} per layer).

        With a cache, tokens are written at slots cache_index.. and kv_valid: [batch, cache_len]
        marks which slots hold real tokens. Returns (logits, cache); with logits=False, (the
        final LayerNorm's output [batch, seq, d_model], cache), for callers that apply the LM
        head (`lm_head_logits`) to some positions only, as decoding does to the last.
        """
        cfg = self.cfg
        b, t = tokens.shape
        if positions_ is None:
            positions_ = jnp.broadcast_to(jnp.arange(t) + cache_index, (b, t))
        x = lookup(self.wte, tokens, ("vocab", None))
        if cfg.position == "learned":
            x = x + lookup(self.wpe, positions_, (None, None))
        elif cfg.position == "sinusoidal":
            # The formula's amplitude is 1 and GPT-2's token embeddings start at std 0.02:
            # unscaled, the encoding drowns the tokens (nanoGPT's CPU recipe stalled at the
            # unigram loss, 3.33 after 500 steps). Scaled by the embeddings' init std, the two
            # start in Vaswani et al.'s proportion (embeddings * sqrt(d_model) at std d^-1/2).
            x = x + EMBED_STD * positions.sinusoidal(positions_, cfg.d_model, x.dtype)
        x = constrain(self.embed_dropout(x, deterministic=deterministic, rngs=rngs),
                      ("batch", "seq", "embed"))

        q_slots = jnp.arange(t) + cache_index
        kv_slots = jnp.arange(t if cache is None else cache[0]["k"].shape[1])
        slopes = jnp.asarray(positions.alibi_slopes(cfg.num_heads)) \
            if cfg.position == "alibi" else None
        mask = Mask(q_slots, kv_slots, kv_valid, slopes, cfg.window)

        new_cache = []
        for i, block in enumerate(self.blocks):
            layer_cache = None if cache is None else cache[i]
            if cfg.remat and cache is None:
                x, _ = nnx.remat(_run_block, static_argnums=(4,))(
                    block, x, positions_, mask, deterministic, rngs)
            else:
                x, layer_cache = block(x, positions_=positions_, mask=mask,
                                       cache=layer_cache, cache_index=cache_index,
                                       deterministic=deterministic, rngs=rngs)
            new_cache.append(layer_cache)
        x = self.ln_f(x)
        new_cache = new_cache if cache is not None else None
        return (self.lm_head_logits(x) if logits else x), new_cache

    def lm_head_logits(self, x):
        """The LM head: final hidden states [batch, seq, d_model] -> float32 logits."""
        if self.cfg.tie_embeddings:
            logits = self.wte.attend(x)
        else:
            logits = self.lm_head(x)
        logits = constrain(logits, ("batch", "seq", "vocab"))
        return logits.astype(jnp.float32)

    def init_cache(self, batch_size: int, cache_len: int, dtype=None) -> list[dict[str, Any]]:
        """Zeroed KV cache, [batch, cache_len, kv_heads, head_dim] per layer for k and v."""
        cfg = self.cfg
        shape = (batch_size, cache_len, cfg.num_kv_heads, cfg.head_dim)
        dtype = dtype or jnp.dtype(cfg.dtype)
        return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
                for _ in range(cfg.num_layers)]

    def num_params(self, exclude_embeddings: bool = False) -> int:
        params = nnx.state(self, nnx.Param)
        n = sum(x.size for x in jax.tree.leaves(params))
        if exclude_embeddings and self.cfg.position == "learned":
            n -= self.wpe.embedding.value.size
        return n

    # Hugging Face-style conveniences; the work is done in gptjax.interop and gptjax.generation.
    @classmethod
    def from_pretrained(cls, path, **kwargs) -> "GPT":
        """Load a Hugging Face GPT-2 folder (config.json + model.safetensors) or hub repo id.

        The folder's generation defaults (generation_config.json: eos/pad ids...) become
        `model.generation_config`, which `generate` reads as transformers does.
        """
        from gptjax.generation import GenerationConfig, load_generation_defaults
        from gptjax.interop import hf

        folder = hf.resolve_folder(path)  # a hub id's snapshot is a folder too
        model = hf.load_gpt(folder, **kwargs)
        if isinstance(model, GPT):
            model.generation_config = GenerationConfig.build(load_generation_defaults(folder), {})
        return model

    def save_pretrained(self, path) -> None:
        """Write a folder that transformers' GPT2LMHeadModel.from_pretrained loads."""
        from gptjax.interop import hf

        hf.save_gpt(self, path)

    def generate(self, input_ids, **kwargs):
        """Hugging Face `generate` semantics: greedy, sampling, beam search (gptjax.generation)."""
        from gptjax import generation

        return generation.generate(self, input_ids, **kwargs)


def _run_block(block, x, positions_, mask, deterministic, rngs):
    return block(x, positions_=positions_, mask=mask, deterministic=deterministic, rngs=rngs)


def split(model: GPT):
    """(graphdef, params): the static structure and the parameter pytree."""
    return nnx.split(model, nnx.Param)


def apply(graphdef, params, tokens, **kwargs):
    """Pure forward pass: logits = apply(graphdef, params, tokens). Safe to jit, shard, pmap."""
    return nnx.merge(graphdef, params)(tokens, **kwargs)
