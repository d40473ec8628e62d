"""gptjax.model.cpu: LayerNorm and GELU with hand-written backward passes equal flax's and jax's
functions and their automatic derivatives."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gptjax.model.cpu import LayerNorm, gelu_tanh


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 5e-2)])
def test_layer_norm_matches_flax(dtype, tol):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 5, 32)) * 3 + 1, dtype)
    w = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    ref = nnx.LayerNorm(32, epsilon=1e-5, dtype=dtype, rngs=nnx.Rngs(0))
    new = LayerNorm(32, epsilon=1e-5, dtype=dtype, rngs=nnx.Rngs(0))
    for m in (ref, new):
        m.scale[...] = jnp.linspace(0.5, 1.5, 32)
        m.bias[...] = jnp.linspace(-1.0, 1.0, 32)
    a, b = ref(x), new(x)
    assert a.dtype == b.dtype == dtype
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=tol)

    def loss(m, x):
        return jnp.sum(m(x).astype(jnp.float32) * w)

    for ga, gb in zip(jax.tree.leaves(nnx.grad(loss, argnums=(0, 1))(ref, x)),
                      jax.tree.leaves(nnx.grad(loss, argnums=(0, 1))(new, x))):
        scale = float(jnp.max(jnp.abs(ga.astype(jnp.float32))))
        np.testing.assert_allclose(np.asarray(ga, np.float32), np.asarray(gb, np.float32),
                                   atol=tol * scale)


def test_layer_norm_keeps_flax_parameters():
    new = LayerNorm(16, rngs=nnx.Rngs(0))
    ref = nnx.LayerNorm(16, rngs=nnx.Rngs(0))
    assert jax.tree.structure(nnx.state(new)) == jax.tree.structure(nnx.state(ref))


def test_gelu_matches_jax():
    x = jnp.linspace(-6.0, 6.0, 1001)
    np.testing.assert_array_equal(gelu_tanh(x), jax.nn.gelu(x, approximate=True))
    ga = jax.grad(lambda x: jnp.sum(jnp.sin(x) * jax.nn.gelu(x, approximate=True)))(x)
    gb = jax.grad(lambda x: jnp.sum(jnp.sin(x) * gelu_tanh(x)))(x)
    np.testing.assert_allclose(ga, gb, atol=1e-6)
