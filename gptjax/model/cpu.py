"""The model's CPU speed paths, and the one place that chooses them: LayerNorm and GELU with
hand-written backward passes (jax.custom_vjp). Other backends get flax's and jax's own.

The same functions as flax's nnx.LayerNorm (statistics in at least float32, fast variance
E[x^2] - E[x]^2) and jax.nn.gelu(approximate=True); only the derivatives are written out, as the
textbook formulas over the saved normalised input (LayerNorm) and the saved tanh (GELU). JAX's
automatic derivatives of both make XLA materialise broadcasts and extra passes over the
activations, which on a CPU, where a small model's step is bound by elementwise work, costs a
few percent of the step. (The CPU attention path is gptjax.model.kernels.xla_cpu.)
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x, scale, bias, epsilon: float):
    """(x - mean) / sqrt(var + epsilon) * scale + bias over the last axis."""
    return _layer_norm_fwd(x, scale, bias, epsilon)[0]


def _layer_norm_fwd(x, scale, bias, epsilon):
    dtype = jnp.result_type(x, scale, bias)
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean = x32.mean(-1, keepdims=True)
    var = jnp.maximum(0.0, jnp.square(x32).mean(-1, keepdims=True) - jnp.square(mean))
    rstd = jax.lax.rsqrt(var + epsilon)
    xhat = (x32 - mean) * rstd
    y = xhat * scale + bias
    return y.astype(dtype), (xhat, rstd, scale, jnp.zeros((), x.dtype))


def _layer_norm_bwd(epsilon, res, g):
    del epsilon
    xhat, rstd, scale, x_dtype = res
    g = g.astype(xhat.dtype)
    rows = tuple(range(g.ndim - 1))
    dscale = jnp.sum(g * xhat, axis=rows).astype(scale.dtype)
    dbias = jnp.sum(g, axis=rows).astype(scale.dtype)
    dxhat = g * scale
    dx = rstd * (dxhat - dxhat.mean(-1, keepdims=True)
                 - xhat * (dxhat * xhat).mean(-1, keepdims=True))
    return dx.astype(x_dtype.dtype), dscale, dbias


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nnx.LayerNorm):
    """nnx.LayerNorm (same parameters, metadata and forward) with layer_norm's backward pass."""

    def __call__(self, x, *, mask=None):
        if mask is not None or self.scale is None or self.bias is None \
                or self.reduction_axes not in (-1, (-1,)) or self.feature_axes not in (-1, (-1,)):
            return super().__call__(x, mask=mask)
        y = layer_norm(x, self.scale[...], self.bias[...], self.epsilon)
        return y.astype(self.dtype) if self.dtype is not None else y


@jax.custom_vjp
def gelu_tanh(x):
    """GELU, tanh approximation (GPT-2): x * 0.5 * (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return _gelu_fwd(x)[0]


def _gelu_fwd(x):
    t = jnp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * (x ** 3)))
    return x * (0.5 * (1.0 + t)), (x, t)


def _gelu_bwd(res, g):
    x, t = res
    du = _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x)
    return (g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du),)


gelu_tanh.defvjp(_gelu_fwd, _gelu_bwd)


def on_cpu() -> bool:
    """Whether JAX computes on CPUs: the switch for every CPU speed path of the model."""
    return jax.default_backend() == "cpu"


def layer_norm_class() -> type[nnx.LayerNorm]:
    """LayerNorm's class for this backend (the same parameters either way)."""
    return LayerNorm if on_cpu() else nnx.LayerNorm


def gelu(x):
    """GELU, tanh approximation (GPT-2), with the CPU backward on CPUs."""
    return gelu_tanh(x) if on_cpu() else jax.nn.gelu(x, approximate=True)
