"""Multi-head causal self-attention (MHA / MQA / GQA) with an optional KV cache.

Section 3.2 of the background article: project the input to queries, keys and values, split them
into heads, attend in every head in parallel, concatenate the heads and project back.
"""

from __future__ import annotations

import math

import jax
from flax import nnx

from gptjax.config import ModelConfig
from gptjax.model import kernels, positions
from gptjax.model.lora import project
from gptjax.model.kernels.reference import attention_weights, repeat_kv
from gptjax.model.layers import dense
from gptjax.parallel.rules import with_logical_constraint as constrain  # no-op off a mesh


class CausalSelfAttention(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, path: str | None = None):
        """path: the module's place ('blocks/0/attn'), which LoRA's targets may name."""
        self.cfg = cfg
        d, hd = cfg.d_model, cfg.head_dim
        residual_std = 0.02 / math.sqrt(2 * cfg.num_layers)  # GPT-2: scale residual projections
        at = (lambda name: None) if path is None else (lambda name: f"{path}/{name}")
        self.query = dense(cfg, d, cfg.num_heads * hd, ("embed", "heads"), std=0.02, rngs=rngs,
                           path=at("query"))
        self.key = dense(cfg, d, cfg.num_kv_heads * hd, ("embed", "kv_heads"), std=0.02,
                         rngs=rngs, path=at("key"))
        self.value = dense(cfg, d, cfg.num_kv_heads * hd, ("embed", "kv_heads"), std=0.02,
                           rngs=rngs, path=at("value"))
        self.out = dense(cfg, cfg.num_heads * hd, d, ("heads", "embed"), std=residual_std,
                         rngs=rngs, path=at("out"))
        self.resid_dropout = nnx.Dropout(cfg.dropout)
        # True: each call also sows its attention weights (nnx.Intermediate 'attention_weights',
        # [batch, heads, q, k]); gptjax.model.inspect turns it on.
        self.sow_weights = False

    def project(self, x, positions_, *, deterministic: bool = True, rngs=None):
        """1. Queries, keys and values, split into heads: [batch, seq, (kv_)heads, head_dim]."""
        cfg = self.cfg
        b, t, _ = x.shape
        kw = dict(deterministic=deterministic, rngs=rngs)  # for LoRA's dropout, if any
        q = project(self.query, x, **kw).reshape(b, t, cfg.num_heads, cfg.head_dim)
        k = project(self.key, x, **kw).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
        v = project(self.value, x, **kw).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
        q = constrain(q, ("batch", "seq", "heads", "head_dim"))
        k = constrain(k, ("batch", "seq", "kv_heads", "head_dim"))
        v = constrain(v, ("batch", "seq", "kv_heads", "head_dim"))
        q, k = positions.get(cfg.position).rotate(cfg, q, k, positions_)
        return q, k, v

    def __call__(self, x, *, positions_, mask, cache=None, cache_index=None,
                 deterministic: bool = True, rngs: nnx.Rngs | None = None):
        """x: [batch, seq, d_model] -> ([batch, seq, d_model], updated cache or None).

        cache: {'k', 'v': [batch * kv_heads, cache_len, head_dim]} (see GPT.init_cache); this
        call's keys and values are written at slot `cache_index` and the queries attend over the
        whole cache (`mask` hides the slots not yet written).
        """
        cfg = self.cfg
        b, t, _ = x.shape
        q, k, v = self.project(x, positions_, deterministic=deterministic, rngs=rngs)
        if cache is not None:
            cache = {name: jax.lax.dynamic_update_slice(
                cache[name], _to_cache(new).astype(cache[name].dtype), (0, cache_index, 0))
                for name, new in (("k", k), ("v", v))}
            k, v = (_from_cache(cache[name], b).astype(q.dtype) for name in ("k", "v"))
        if self.sow_weights:  # the weights of this very q, k and mask, as the reference forms them
            self.sow(nnx.Intermediate, "attention_weights",
                     attention_weights(q, repeat_kv(q, k, v)[0], mask.dense(), mask.bias()))
        training = not deterministic and cfg.dropout > 0.0
        dropout_rng = rngs.dropout() if training and rngs is not None else None
        # 2-4. scaled dot-product attention in every head at once
        y = kernels.get_kernel(cfg.attention)(
            q, k, v, mask, dropout_rate=cfg.dropout if training else 0.0, dropout_rng=dropout_rng)
        y = constrain(y, ("batch", "seq", "heads", "head_dim"))
        # concatenate the heads and project back to d_model
        y = project(self.out, y.reshape(b, t, cfg.num_heads * cfg.head_dim),
                    deterministic=deterministic, rngs=rngs)
        return self.resid_dropout(y, deterministic=deterministic, rngs=rngs), cache


def _to_cache(x):
    """[batch, seq, kv_heads, head_dim] -> the cache's [batch * kv_heads, seq, head_dim]."""
    b, t, h, d = x.shape
    return x.swapaxes(1, 2).reshape(b * h, t, d)


def _from_cache(c, batch: int):
    """The cache's [batch * kv_heads, cache_len, head_dim] -> [batch, cache_len, kv_heads,
    head_dim], as kernels take keys and values (a view: XLA folds it into their reads)."""
    n, t, d = c.shape
    return c.reshape(batch, n // batch, t, d).swapaxes(1, 2)
