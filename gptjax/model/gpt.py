"""The GPT: token embedding, positions, N pre-LayerNorm decoder blocks, final LayerNorm, LM head.

GPT-2's architecture (Radford et al. 2019). Read top to bottom: MLP, Block, GPT.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from gptjax.config import ConfigError, ModelConfig
from gptjax.model import cpu, kernels, lora, positions
from gptjax.model.attention import CausalSelfAttention
from gptjax.model.layers import (dense, embedding, layer_norm, lookup, mask_padded_vocab,
                                 tied_logits)
from gptjax.model.masks import Mask
from gptjax.parallel.rules import with_logical_constraint as constrain  # no-op off a mesh


def check_config(cfg: ModelConfig, seq_len: int | None = None, *,
                 segments: bool | str = False) -> None:
    """Raise ConfigError if the registries cannot build cfg: its position encoding and its
    attention kernel (with that kernel's limits; seq_len: a training length; segments: batches
    carry segment ids, data.document_mask, or the field that asks, 'data.pack'). Reads nothing."""
    positions.check(cfg)
    kernels.check(cfg, seq_len, segments=segments)
    lora.check(cfg)
    limit = positions.get(cfg.position).max_positions(cfg)
    if seq_len is not None and limit is not None and seq_len > limit:
        raise ConfigError(f"data.seq_len={seq_len} is invalid: must not exceed model.max_len="
                          f"{limit}, the number of {cfg.position} positions")


class MLP(nnx.Module):
    """Position-wise feed-forward: d_model -> d_ff -> GELU (tanh, as GPT-2) -> d_model."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, path: str | None = None):
        at = (lambda name: None) if path is None else (lambda name: f"{path}/{name}")
        self.fc = dense(cfg, cfg.d_model, cfg.d_ff, ("embed", "mlp"), std=0.02, rngs=rngs,
                        path=at("fc"))
        self.proj = dense(cfg, cfg.d_ff, cfg.d_model, ("mlp", "embed"),
                          std=0.02 / math.sqrt(2 * cfg.num_layers), rngs=rngs, path=at("proj"))
        self.dropout = nnx.Dropout(cfg.dropout)

    def __call__(self, x, *, deterministic=True, rngs=None):
        kw = dict(deterministic=deterministic, rngs=rngs)  # for LoRA's dropout, if any
        h = constrain(cpu.gelu(lora.project(self.fc, x, **kw)), ("batch", "seq", "mlp"))
        return self.dropout(lora.project(self.proj, h, **kw), **kw)


class Block(nnx.Module):
    """x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, index: int | None = None):
        """index: the block's place in the stack (LoRA's targets may name blocks)."""
        path = None if index is None else f"blocks/{index}"
        self.ln_1 = layer_norm(cfg, rngs)
        self.attn = CausalSelfAttention(cfg, rngs=rngs, path=path and f"{path}/attn")
        self.ln_2 = layer_norm(cfg, rngs)
        self.mlp = MLP(cfg, rngs=rngs, path=path and f"{path}/mlp")

    def __call__(self, x, *, positions_, mask, cache=None, cache_index=None,
                 deterministic=True, rngs=None):
        a, cache = self.attn(self.ln_1(x), positions_=positions_, mask=mask,
                             cache=cache, cache_index=cache_index, deterministic=deterministic,
                             rngs=rngs)
        x = x + a
        x = x + self.mlp(self.ln_2(x), deterministic=deterministic, rngs=rngs)
        return constrain(x, ("batch", "seq", "embed")), cache


class GPT(nnx.Module):
    """A decoder-only Transformer language model. `GPT(ModelConfig(...), rngs=nnx.Rngs(0))`."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        check_config(cfg)
        self.cfg = cfg
        # Parameters carry logical axis names; gptjax.parallel maps them to a mesh later.
        with nnx.use_eager_sharding(False):
            self.wte = embedding(cfg, cfg.padded_vocab, ("vocab", "embed"), rngs,
                                 used_rows=cfg.vocab_size)
            table = positions.get(cfg.position).table(cfg, rngs)
            if table is not None:  # learned positions: GPT-2's wpe
                self.wpe = table
            self.embed_dropout = nnx.Dropout(cfg.dropout)
            self.blocks = nnx.List([Block(cfg, rngs=rngs, index=i)
                                    for i in range(cfg.num_layers)])
            self.ln_f = layer_norm(cfg, rngs)
            if not cfg.tie_embeddings:
                self.lm_head = dense(cfg, cfg.d_model, cfg.padded_vocab, ("embed", "vocab"),
                                     std=0.02, rngs=rngs, use_bias=False,
                                     used_out=cfg.vocab_size)

    def __call__(self, tokens, *, positions_=None, attention_mask_=None, segment_ids_=None,
                 deterministic=True, rngs: nnx.Rngs | None = None):
        """tokens: [batch, seq] int -> logits [batch, seq, vocab] (float32).

        positions_: [batch, seq] position ids (default 0..seq-1); attention_mask_: [batch, seq],
        0 for padding; segment_ids_: [batch, seq] int, packed documents (a token attends only
        to earlier tokens with its own id); rngs: an nnx.Rngs with a 'dropout' stream when
        deterministic=False.
        """
        logits, _ = self.forward(tokens, positions_=positions_, kv_valid=attention_mask_,
                                 segment_ids_=segment_ids_, deterministic=deterministic,
                                 rngs=rngs)
        return logits

    def forward(self, tokens, *, positions_=None, kv_valid=None, segment_ids_=None, cache=None,
                cache_index=0, deterministic=True, rngs=None, logits=True):
        """The full pass, with an optional KV cache (a list with one {'k','v'} per layer).

        With a cache, tokens are written at slots cache_index.. and kv_valid: [batch, cache_len]
        marks which slots hold real tokens. segment_ids_: [batch, seq], no cache (see __call__).
        Returns (logits, cache); with logits=False, (the final LayerNorm's output
        [batch, seq, d_model], cache), for callers that apply the LM head (`lm_head_logits`) to
        some positions only, as decoding does to the last.
        """
        cfg = self.cfg
        b, t = tokens.shape
        if segment_ids_ is not None and cache is not None:
            raise ValueError("GPT.forward: segment_ids_ (packed documents) is for a pass over "
                             "whole sequences; decode one document per row with a cache instead")
        if positions_ is None:
            positions_ = jnp.broadcast_to(jnp.arange(t) + cache_index, (b, t))
        position = positions.get(cfg.position)
        x = position.embed(self, lookup(self.wte, tokens, ("vocab", None)), positions_)
        x = constrain(self.embed_dropout(x, deterministic=deterministic, rngs=rngs),
                      ("batch", "seq", "embed"))

        q_slots = jnp.arange(t) + cache_index
        kv_slots = jnp.arange(t if cache is None else cache[0]["k"].shape[1])
        mask = Mask(q_slots, kv_slots, kv_valid, position.slopes(cfg), cfg.window, segment_ids_)

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
        """The LM head: final hidden states [batch, seq, d_model] -> float32 logits
        [batch, seq, padded_vocab], the padding masked."""
        if self.cfg.tie_embeddings:
            logits = tied_logits(self.wte, x)
        else:
            logits = self.lm_head(x)
        logits = constrain(logits, ("batch", "seq", "vocab"))
        return mask_padded_vocab(self.cfg, logits.astype(jnp.float32))

    def init_cache(self, batch_size: int, cache_len: int, dtype=None) -> list[dict[str, Any]]:
        """Zeroed KV cache, [batch * kv_heads, cache_len, head_dim] per layer for k and v: row
        r * kv_heads + h holds K/V head h of sequence r. Each head's keys lie contiguous and the
        products of a decode step read and update the cache in place; on XLA:CPU a [batch,
        cache_len, kv_heads, head_dim] cache, or any 4-D one, was copied whole every step."""
        cfg = self.cfg
        shape = (batch_size * cfg.num_kv_heads, cache_len, cfg.head_dim)
        dtype = dtype or jnp.dtype(cfg.dtype)
        return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
                for _ in range(cfg.num_layers)]

    def num_params(self, exclude_embeddings: bool = False) -> int:
        params = nnx.state(self, nnx.Param)
        n = sum(x.size for x in jax.tree.leaves(params))
        if exclude_embeddings and hasattr(self, "wpe"):
            n -= self.wpe.embedding.value.size
        return n

    # Hugging Face-style conveniences. Their work is done by layers above the model, which
    # provide it here when imported (`from gptjax import GPT` imports them): gptjax.interop
    # reads and writes folders, gptjax.generation decodes.
    @classmethod
    def from_pretrained(cls, path, **kwargs) -> "GPT":
        """Load a Hugging Face GPT-2 folder (config.json + model.safetensors), a hub repo id, or
        a gptjax run's workdir. The folder's generation defaults (generation_config.json:
        eos/pad ids...) become `model.generation_config`, which `generate` reads."""
        return _provided("from_pretrained")(path, **kwargs)

    def save_pretrained(self, path) -> None:
        """Write a folder that transformers' GPT2LMHeadModel.from_pretrained loads."""
        _provided("save_pretrained")(self, path)

    def generate(self, input_ids, **kwargs):
        """Hugging Face `generate` semantics: greedy, sampling, beam search (gptjax.generation)."""
        return _provided("generate")(self, input_ids, **kwargs)


# name -> function, filled by the layers above: 'from_pretrained' and 'save_pretrained'
# (gptjax.interop), 'generate' (gptjax.generation).
PROVIDERS: dict[str, Callable] = {}
_PROVIDER_HOMES = {"from_pretrained": "gptjax.interop", "save_pretrained": "gptjax.interop",
                   "generate": "gptjax.generation"}


def provide(name: str, fn: Callable) -> None:
    """Let GPT.<name> call `fn` (a layer above the model registers its work here)."""
    if name not in _PROVIDER_HOMES:
        raise ValueError(f"GPT has no provided method {name!r}; known: {list(_PROVIDER_HOMES)}")
    PROVIDERS[name] = fn


def _provided(name: str) -> Callable:
    if name not in PROVIDERS:
        raise RuntimeError(f"GPT.{name} is provided by {_PROVIDER_HOMES[name]}, which is not "
                           f"imported; use `from gptjax import GPT` (or import "
                           f"{_PROVIDER_HOMES[name]}) first")
    return PROVIDERS[name]


def _run_block(block, x, positions_, mask, deterministic, rngs):
    return block(x, positions_=positions_, mask=mask, deterministic=deterministic, rngs=rngs)


def repad_vocab(params, cfg: ModelConfig, multiple: int):
    """(params of GPT(cfg) with the vocabulary padded to `multiple` instead, the cfg to match):
    padded rows cut or added as zeros, the real rows untouched."""
    new = dataclasses.replace(cfg, vocab_multiple=multiple)
    rows = new.padded_vocab
    if rows == cfg.padded_vocab:
        return params, new

    def fit(x, axis):
        x = jax.lax.slice_in_dim(x, 0, min(rows, x.shape[axis]), axis=axis)
        pad = [(0, 0)] * x.ndim
        pad[axis] = (0, rows - x.shape[axis])
        return jnp.pad(x, pad)

    pure = params.to_pure_dict()
    pure["wte"]["embedding"] = fit(pure["wte"]["embedding"], 0)
    if "lm_head" in pure:
        pure["lm_head"]["kernel"] = fit(pure["lm_head"]["kernel"], 1)
    _, resized = split(nnx.eval_shape(lambda: GPT(new, rngs=nnx.Rngs(0))))
    resized.replace_by_pure_dict(pure)
    return resized, new


def merge_lora(model: GPT) -> GPT:
    """The plain GPT (no adapter modules) computing what `model` computes: every kernel with an
    adapter becomes W + (alpha / r) A B. A model without adapters comes back as it is."""
    cfg = model.cfg
    if not cfg.lora_rank:
        return model
    pure = nnx.state(model, nnx.Param).to_pure_dict()

    def fold(tree):
        if not isinstance(tree, dict):
            return tree
        if "lora_a" in tree:
            tree = dict(tree)
            a, b = tree.pop("lora_a"), tree.pop("lora_b")
            tree["kernel"] = lora.merged_kernel(tree["kernel"], a, b, cfg.lora_scale)
        return {k: fold(v) for k, v in tree.items()}

    plain_cfg = dataclasses.replace(cfg, **{f: getattr(ModelConfig, f) for f in LORA_FIELDS})
    graphdef, params = split(nnx.eval_shape(lambda: GPT(plain_cfg, rngs=nnx.Rngs(0))))
    params.replace_by_pure_dict(fold(pure))
    return nnx.merge(graphdef, params)


LORA_FIELDS = ("lora_rank", "lora_alpha", "lora_dropout", "lora_targets")


def split(model: GPT):
    """(graphdef, params): the static structure and the parameter pytree."""
    return nnx.split(model, nnx.Param)


def apply(graphdef, params, tokens, **kwargs):
    """Pure forward pass: logits = apply(graphdef, params, tokens). Safe to jit, shard, pmap."""
    return nnx.merge(graphdef, params)(tokens, **kwargs)
