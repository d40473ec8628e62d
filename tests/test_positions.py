"""Position encodings against their defining formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax.model import positions


@pytest.mark.parametrize("d_model", [8, 64])
def test_sinusoidal_is_the_article_formula(d_model):
    pos = np.arange(50)
    pe = np.asarray(positions.sinusoidal(jnp.asarray(pos), d_model))
    expected = np.zeros((50, d_model))
    for p in pos:
        for i in range(d_model // 2):
            expected[p, 2 * i] = math.sin(p / 10000 ** (2 * i / d_model))
            expected[p, 2 * i + 1] = math.cos(p / 10000 ** (2 * i / d_model))
    np.testing.assert_allclose(pe, expected, atol=2e-5)


def test_rope_scores_depend_only_on_relative_position():
    kq, kk = jax.random.split(jax.random.key(0))
    q = jax.random.normal(kq, (1, 1, 2, 16))
    k = jax.random.normal(kk, (1, 1, 2, 16))

    def score(m, n):
        qr = positions.rope(q, jnp.array([[m]]))
        kr = positions.rope(k, jnp.array([[n]]))
        return jnp.sum(qr * kr, axis=-1)

    for m, n, shift in [(5, 2, 7), (9, 9, 100), (3, 0, 31)]:
        np.testing.assert_allclose(score(m, n), score(m + shift, n + shift), atol=1e-4)
    assert not np.allclose(score(5, 2), score(5, 4), atol=1e-3)  # and do depend on distance
    # rotation preserves norms
    np.testing.assert_allclose(jnp.linalg.norm(positions.rope(q, jnp.array([[37]]))),
                               jnp.linalg.norm(q), rtol=1e-5)


def test_alibi_slopes_are_the_papers():
    # Press et al.: for 8 heads the slopes are 1/2, 1/4, ..., 1/256.
    np.testing.assert_allclose(positions.alibi_slopes(8), [2.0 ** -(i + 1) for i in range(8)])
    # 16 heads: 2^-0.5, 2^-1, ..., 2^-8
    np.testing.assert_allclose(positions.alibi_slopes(16), [2.0 ** -(0.5 * (i + 1))
                                                            for i in range(16)], rtol=1e-6)
    # 12 heads (not a power of two): the 8-head slopes, then every other 16-head slope.
    expected = [2.0 ** -(i + 1) for i in range(8)] + [2.0 ** -x for x in (0.5, 1.5, 2.5, 3.5)]
    np.testing.assert_allclose(positions.alibi_slopes(12), expected, rtol=1e-6)


def test_alibi_bias_is_minus_slope_times_distance():
    from gptjax.model.masks import causal

    bias = causal(5, alibi_slopes=jnp.asarray(positions.alibi_slopes(4))).bias()
    slopes = positions.alibi_slopes(4)
    assert bias.shape == (1, 4, 5, 5)
    np.testing.assert_allclose(bias[0, 2, 4, 1], -slopes[2] * 3)
    np.testing.assert_allclose(bias[0, :, 3, 3], 0.0)
