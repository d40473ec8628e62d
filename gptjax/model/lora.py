"""LoRA (Hu et al. 2021): a frozen projection W plus a trainable low-rank update,
y = x W + b + dropout(x) A B * alpha / r, with A [d_in, r] random and B [r, d_out] zero, so a
model with fresh adapters computes exactly what its base computes.

ModelConfig.lora_rank > 0 puts adapters beside the projections ModelConfig.lora_targets names
(the finetune section sets these fields); gptjax.model.gpt.merge_lora folds them back into
plain kernels. The base's parameters keep their paths ('blocks/0/attn/query/kernel'); the
adapters sit beside them ('.../query/lora_a', '.../query/lora_b').
"""

from __future__ import annotations

import re

import jax.numpy as jnp
from flax import nnx

from gptjax.config import LORA_GROUPS, LORA_PROJECTIONS, ConfigError, ModelConfig, \
    lora_target_items

# A's init: PyTorch's kaiming_uniform(a=sqrt(5)) as peft draws it, uniform(+-1/sqrt(d_in)).
A_INIT = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def projection_paths(cfg: ModelConfig) -> list[str]:
    """Every projection an adapter may sit beside: 'blocks/<i>/attn/query', .../mlp/fc, ..."""
    return [f"blocks/{i}/{part}/{name}" for i in range(cfg.num_layers)
            for part, names in (("attn", LORA_GROUPS["attention"]), ("mlp", LORA_GROUPS["mlp"]))
            for name in names]


def is_target(cfg: ModelConfig, path: str) -> bool:
    """Whether the projection at `path` ('blocks/3/attn/query') gets an adapter under cfg."""
    if not cfg.lora_rank:
        return False
    name = path.rsplit("/", 1)[-1]
    for item in lora_target_items(cfg.lora_targets):
        if item in LORA_PROJECTIONS or item in LORA_GROUPS:
            if name in LORA_GROUPS.get(item, (item,)):
                return True
        elif re.search(item, path):
            return True
    return False


def check(cfg: ModelConfig) -> None:
    """ConfigError if LoRA is on and its targets match no projection of this model."""
    if cfg.lora_rank and not any(is_target(cfg, p) for p in projection_paths(cfg)):
        paths = projection_paths(cfg)
        raise ConfigError(f"finetune.lora_targets={cfg.lora_targets!r} matches no projection of "
                          f"this model; paths look like {paths[:4] + paths[-2:]}")


class LoRALinear(nnx.Linear):
    """nnx.Linear plus an adapter: x W + b + dropout(x) A B * scale (A: lora_a, B: lora_b)."""

    def __init__(self, d_in: int, d_out: int, *, cfg: ModelConfig, axes, rngs: nnx.Rngs,
                 **linear):
        super().__init__(d_in, d_out, rngs=rngs, **linear)
        r, dtype = cfg.lora_rank, jnp.dtype(cfg.param_dtype)
        # A keeps the kernel's input axis, B its output axis; the rank axis is never split.
        self.lora_a = nnx.Param(A_INIT(rngs.params(), (d_in, r), dtype),
                                out_sharding=(axes[0], "lora_rank"))
        self.lora_b = nnx.Param(jnp.zeros((r, d_out), dtype), out_sharding=("lora_rank", axes[1]))
        self.lora_scale = cfg.lora_scale
        self.lora_dropout = nnx.Dropout(cfg.lora_dropout)

    def __call__(self, x, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        y = super().__call__(x)
        h = self.lora_dropout(x, deterministic=deterministic, rngs=rngs)
        dtype = self.dtype or x.dtype
        update = (h.astype(dtype) @ self.lora_a[...].astype(dtype)) @ self.lora_b[...].astype(dtype)
        return y + (self.lora_scale * update).astype(y.dtype)


def project(linear: nnx.Linear, x, *, deterministic: bool = True, rngs=None):
    """linear(x), passing the dropout switches to an adapter that has them (a plain Linear's
    graph is the one it always had)."""
    if isinstance(linear, LoRALinear):
        return linear(x, deterministic=deterministic, rngs=rngs)
    return linear(x)


def merged_kernel(kernel, a, b, scale: float):
    """W + scale * A B in float32, returned in the kernel's dtype: the adapter folded in."""
    update = jnp.asarray(a, jnp.float32) @ jnp.asarray(b, jnp.float32)
    return (jnp.asarray(kernel, jnp.float32) + scale * update).astype(jnp.asarray(kernel).dtype)
