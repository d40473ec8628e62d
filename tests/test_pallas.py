"""The Pallas flash-attention kernel equals the reference, in Pallas interpret mode on a CPU."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax.bench import attention as bench
from gptjax.config import ConfigError, ModelConfig
from gptjax.model import check_config
from gptjax.model import kernels
from gptjax.model.kernels import pallas
from gptjax.model.masks import Mask, causal
from gptjax.model.positions import alibi_slopes

# T=40 with 16-wide tiles: three query and key blocks, the last one half tile padding.
B, T, H, D = 2, 40, 4, 16
LAYOUTS = {"mha": 4, "gqa": 2, "mqa": 1}
kernel = functools.partial(pallas.pallas_attention, block_q=16, block_k=16, interpret=True)


def _inputs(kv_heads, t=T, seed=0):
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(kq, (B, t, H, D)), jax.random.normal(kk, (B, t, kv_heads, D)),
            jax.random.normal(kv, (B, t, kv_heads, D)))


def _assert_matches_reference(q, k, v, mask, rows):
    """Outputs and gradients of q, k, v on `rows` ([batch, q_len] bool), float32, tight."""
    cot = jax.random.normal(jax.random.key(9), q.shape) * rows[:, :, None, None]

    def loss(fn, q, k, v):
        return jnp.sum(fn(q, k, v, mask) * cot)

    # Eagerly: the op's own jit then compiles each interpreted kernel once for all layouts.
    out = kernel(q, k, v, mask)
    ref = kernels.reference_attention(q, k, v, mask)
    np.testing.assert_allclose(np.asarray(out)[rows], np.asarray(ref)[rows], atol=1e-5, rtol=1e-5)
    grads = jax.grad(functools.partial(loss, kernel), argnums=(0, 1, 2))(q, k, v)
    ref_grads = jax.grad(functools.partial(loss, kernels.reference_attention),
                         argnums=(0, 1, 2))(q, k, v)
    for g, rg in zip(grads, ref_grads):
        np.testing.assert_allclose(g, rg, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_pallas_matches_reference_causal(layout):
    q, k, v = _inputs(LAYOUTS[layout])
    _assert_matches_reference(q, k, v, causal(T), np.ones((B, T), bool))


def test_pallas_padding_and_full_attention():
    q, k, v = _inputs(2, seed=1)
    # Left padding on the first row, right padding on the second: real tokens' rows must match
    # (a padding position's output is meaningless in every kernel).
    valid = np.stack([np.arange(T) >= 5, np.arange(T) < T - 7])
    _assert_matches_reference(q, k, v, causal(T, kv_valid=jnp.asarray(valid)), valid)
    _assert_matches_reference(q, k, v, None, np.ones((B, T), bool))  # full attention


@pytest.mark.parametrize("mask, options, match", [
    (causal(T, window=8), {}, r"no sliding window \(model.window=8\).*'blockwise' or 'xla'"),
    (causal(T, alibi_slopes=jnp.asarray(alibi_slopes(H))), {},
     r"no ALiBi.*model.position='alibi'.*'blockwise' or 'xla'"),
    (causal(T), dict(dropout_rate=0.1, dropout_rng=jax.random.key(0)),
     r"no attention-weight dropout.*model.dropout=0.*'xla'"),
    (Mask(jnp.arange(T) + 3, jnp.arange(T)), {}, r"q_slots = 0..T-1.*'blockwise' or 'xla'"),
])
def test_pallas_refuses_what_the_ops_cannot_do(mask, options, match):
    q, k, v = _inputs(4)
    with pytest.raises(ValueError, match=match):
        kernel(q, k, v, mask, **options)


def test_pallas_refuses_a_kv_cache_step():
    q, k = jnp.zeros((B, 1, H, D)), jnp.zeros((B, 32, H, D))
    mask = Mask(jnp.array([5]), jnp.arange(32), jnp.ones((B, 32), bool))
    with pytest.raises(ValueError, match=r"q_len=1, kv_len=32.*'blockwise' or 'xla' to decode"):
        kernel(q, k, k, mask)


def test_pallas_off_accelerator_names_the_fix(monkeypatch):
    if jax.default_backend() in ("gpu", "tpu"):
        pytest.skip("an accelerator is present")
    q, k, v = _inputs(4, t=16)
    with pytest.raises(ValueError, match=r"needs a GPU or TPU.*'cpu'.*'blockwise' or 'xla'"):
        kernels.get_kernel("pallas")(q, k, v, causal(16))
    monkeypatch.setattr(pallas, "INTERPRET", True)  # what model.attention='pallas' then runs
    # Under jit the mask's slots are traced, as in the model.
    np.testing.assert_allclose(jax.jit(kernels.get_kernel("pallas"))(q, k, v, causal(16)),
                               kernels.reference_attention(q, k, v, causal(16)), atol=1e-5)
    monkeypatch.undo()
    kernels.check_available("pallas", "tpu")  # what runs check before reading data
    with pytest.raises(ValueError, match=r"'pallas' needs a GPU or TPU, but JAX's backend is 'cpu"):
        kernels.check_available("pallas", "cpu")
    # The attention benchmark records it as unavailable instead of crashing.
    case = bench.measure("pallas", 32, "mha", "fwd", heads=2, head_dim=8)
    assert case.status == "unavailable" and "needs a GPU or TPU" in case.note


@pytest.mark.parametrize("kwargs, match", [
    (dict(window=64), r"model.window=64 .*attention='pallas'.*'blockwise'"),
    (dict(position="alibi"), r"model.position='alibi' .*attention='pallas'.*'blockwise'"),
    (dict(dropout=0.1), r"model.dropout=0.1 .*attention='pallas'.*model.dropout=0"),
])
def test_config_rejects_what_pallas_cannot_do(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        check_config(ModelConfig(attention="pallas", **kwargs))
    check_config(ModelConfig(attention="pallas", num_kv_heads=4))  # causal GQA is fine
