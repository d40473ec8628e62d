"""jax.nn.dot_product_attention as kernels: `xla` (any backend; on CPUs,
gptjax.model.kernels.xla_cpu) and `cudnn` (NVIDIA's fused kernel, GPU only)."""

from __future__ import annotations

import functools

import jax

from gptjax.config import ConfigError, ModelConfig
from gptjax.model import cpu
from gptjax.model.kernels.reference import reference_attention
from gptjax.model.kernels.registry import check_available, register
from gptjax.model.kernels.xla_cpu import xla_cpu, xla_cpu_decode


def _dot_product_attention(q, k, v, mask=None, *, dropout_rate=0.0, dropout_rng=None,
                           implementation=None):
    if dropout_rate > 0.0 and dropout_rng is not None:
        # jax.nn.dot_product_attention has no attention-weight dropout: train through the oracle.
        return reference_attention(q, k, v, mask, dropout_rate=dropout_rate,
                                   dropout_rng=dropout_rng)
    dense = bias = None
    if mask is not None:
        dense, bias = mask.dense(), mask.bias()
    if implementation == "xla" and cpu.on_cpu():
        return (xla_cpu if q.shape[1] > 1 else xla_cpu_decode)(q, k, v, dense, bias)
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=dense,
                                        implementation=implementation)


register("xla", segments=True)(functools.partial(_dot_product_attention, implementation="xla"))


CUDNN_MAX_HEAD_DIM = 256  # jax's cuDNN flash attention: <= 256 on Hopper and later, 128 before


def _cudnn_rules(cfg: ModelConfig, seq_len: int | None) -> None:
    """cuDNN's head shapes, and its fused backward's even training lengths (with a mask bias)."""
    if cfg.head_dim % 8 or cfg.head_dim > CUDNN_MAX_HEAD_DIM:
        raise ConfigError(
            f"model.num_heads={cfg.num_heads!r} is invalid: model.attention='cudnn' needs "
            f"head_dim = d_model/num_heads a multiple of 8 and at most {CUDNN_MAX_HEAD_DIM} (128 "
            f"before Hopper GPUs), but {cfg.d_model}/{cfg.num_heads}={cfg.head_dim}; change "
            "model.num_heads or model.d_model, or choose model.attention='xla'")
    if seq_len is not None and seq_len % 2:
        raise ConfigError(f"data.seq_len={seq_len!r} is invalid: model.attention='cudnn' trains "
                          "on even sequence lengths only; use an even data.seq_len or choose "
                          "model.attention='xla'")


# jax's cuDNN path (jax/_src/cudnn/fused_attention_stablehlo.py) rejects other dtypes.
# Segment ids join the boolean mask, which jax hands cuDNN as a [batch, 1, T, T] score bias
# (fused_attention_stablehlo.combine_bias_and_mask): O(T^2) memory per row, as the causal mask
# here already costs, not cuDNN's packed-sequence (THD) path.
@register("cudnn", backends=("gpu",), dtypes=("bfloat16", "float16"), dropout=False,
          segments=True, rules=_cudnn_rules)
def cudnn_attention(q, k, v, mask=None, *, dropout_rate=0.0, dropout_rng=None):
    """jax.nn.dot_product_attention's cuDNN fused kernel (GPU only, fp16/bf16)."""
    check_available("cudnn", dtype=q.dtype)  # direct callers get the message, not jax's
    return _dot_product_attention(q, k, v, mask, dropout_rate=dropout_rate,
                                  dropout_rng=dropout_rng, implementation="cudnn")
