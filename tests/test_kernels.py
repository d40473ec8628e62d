"""Every attention kernel equals the reference (the article's step-by-step oracle)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax.model import kernels
from gptjax.model.masks import Mask, causal
from gptjax.model.positions import alibi_slopes

B, T, H, D = 2, 12, 4, 8
LAYOUTS = {"mha": 4, "gqa": 2, "mqa": 1}
# pallas runs on a CPU only in interpret mode: tests/test_pallas.py.
CPU_KERNELS = [k for k in kernels.KERNELS if k not in ("reference", "cudnn", "pallas")]
# Small tiles so the blockwise kernel crosses several query and key blocks (T=12).
TEST_OPTIONS = {"blockwise": dict(block_q=4, block_k=8)}


def _inputs(kv_heads, seed=0):
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(kq, (B, T, H, D))
    k = jax.random.normal(kk, (B, T, kv_heads, D))
    v = jax.random.normal(kv, (B, T, kv_heads, D))
    return q, k, v


def _masks(variant="causal"):
    slots = jnp.arange(T)
    valid = None
    if variant == "padded":  # left padding of 3 tokens on the second row
        valid = jnp.stack([jnp.ones(T, bool), jnp.arange(T) >= 3])
    slopes = jnp.asarray(alibi_slopes(H)) if variant == "alibi" else None
    return Mask(slots, slots, valid, slopes, 4 if variant == "window" else None)


def _naive(q, k, v, spec):
    """Numpy loops over batch and head: softmax(q k^T / sqrt(d) + bias) v."""
    q, k, v = map(np.asarray, (q, k, v))
    mask, bias = spec.dense(), spec.bias()
    out = np.zeros_like(q)
    group = q.shape[2] // k.shape[2]
    for b in range(q.shape[0]):
        for h in range(q.shape[2]):
            s = q[b, :, h] @ k[b, :, h // group].T / np.sqrt(q.shape[-1])
            if bias is not None:
                s = s + np.asarray(bias)[0, h]
            m = np.broadcast_to(np.asarray(mask), (q.shape[0], 1, T, T))[b, 0]
            s = np.where(m, s, -np.inf)
            live = m.any(-1)  # a padding query sees no key; its output is irrelevant
            w = np.exp(s[live] - s[live].max(-1, keepdims=True))
            w /= w.sum(-1, keepdims=True)
            out[b, live, h] = w @ v[b, :, h // group]
    return out


def _live_rows(mask):
    """[batch, q_len] rows with at least one visible key."""
    return np.broadcast_to(np.asarray(mask.dense()), (B, 1, T, T))[:, 0].any(-1)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("variant", ["causal", "window", "padded", "alibi"])
def test_reference_is_the_formula(layout, variant):
    q, k, v = _inputs(LAYOUTS[layout])
    mask = _masks(variant)
    out = kernels.reference_attention(q, k, v, mask)
    live = _live_rows(mask)
    np.testing.assert_allclose(np.asarray(out)[live], _naive(q, k, v, mask)[live],
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", CPU_KERNELS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("variant", ["causal", "window", "padded", "alibi"])
def test_kernel_matches_reference_forward_and_gradient(name, layout, variant):
    q, k, v = _inputs(LAYOUTS[layout], seed=1)
    mask = _masks(variant)
    kernel = functools.partial(kernels.get_kernel(name), **TEST_OPTIONS.get(name, {}))
    # Padding queries see no key; what a kernel outputs there is irrelevant, so compare
    # outputs and gradients on the live rows only.
    live = _live_rows(mask)
    cot = jax.random.normal(jax.random.key(9), q.shape) * live[:, :, None, None]

    def loss(fn, q, k, v):
        return jnp.sum(fn(q, k, v, mask) * cot)

    ref_out = kernels.reference_attention(q, k, v, mask)
    out = kernel(q, k, v, mask)
    np.testing.assert_allclose(np.asarray(out)[live], np.asarray(ref_out)[live], atol=2e-5,
                               rtol=2e-5)
    ref_grads = jax.grad(loss, argnums=(1, 2, 3))(kernels.reference_attention, q, k, v)
    grads = jax.grad(loss, argnums=(1, 2, 3))(kernel, q, k, v)
    for g, rg in zip(grads, ref_grads):
        np.testing.assert_allclose(g, rg, atol=5e-5, rtol=5e-5)


@pytest.mark.parametrize("layout", ["mha", "gqa", "mqa"])
def test_xla_cpu_backward_equals_autodiff_on_every_row(layout):
    """On CPUs the xla kernel's backward is written out (FlashAttention's rowsum(dO * O)
    form, heads folded into the batch axis, K/V gradients summed over their query heads).
    Beyond the live rows above: rows whose keys are all masked (uniform weights, which the
    softmax's own backward would spread into the masked scores), an ALiBi bias broadcast over
    the batch, and bfloat16 inputs keep their dtype."""
    q, k, v = _inputs(LAYOUTS[layout], seed=2)
    slots = jnp.arange(T)
    valid = jnp.stack([jnp.ones(T, bool), jnp.arange(T) >= 3])
    cot = jax.random.normal(jax.random.key(5), q.shape)
    xla = kernels.get_kernel("xla")

    def loss(fn, q, k, v, slopes):
        return jnp.sum(fn(q, k, v, Mask(slots, slots, valid, slopes)) * cot)

    args = (q, k, v, jnp.asarray(alibi_slopes(H)))
    grads = jax.grad(loss, argnums=(1, 2, 3, 4))(xla, *args)
    ref_grads = jax.grad(loss, argnums=(1, 2, 3, 4))(kernels.reference_attention, *args)
    assert float(jnp.abs(ref_grads[3]).max()) > 0  # the bias does reach the loss
    for g, rg in zip(grads, ref_grads):
        np.testing.assert_allclose(g, rg, atol=5e-5, rtol=5e-5)
    half = [a.astype(jnp.bfloat16) for a in (q, k, v)]
    out, vjp = jax.vjp(lambda *a: xla(*a, causal(T)), *half)
    assert out.dtype == jnp.bfloat16
    assert [g.dtype for g in vjp(cot.astype(jnp.bfloat16))] == [jnp.bfloat16] * 3


def test_attention_dropout_only_when_asked():
    q, k, v = _inputs(4)
    mask = _masks()
    plain = kernels.reference_attention(q, k, v, mask)
    same = kernels.reference_attention(q, k, v, mask, dropout_rate=0.5)  # no rng: no drop
    dropped = kernels.reference_attention(q, k, v, mask, dropout_rate=0.5,
                                          dropout_rng=jax.random.key(0))
    np.testing.assert_array_equal(plain, same)
    assert not np.allclose(plain, dropped)


def test_cudnn_off_gpu_names_the_fix():
    if jax.default_backend() == "gpu":
        pytest.skip("a GPU is present")
    q, k, v = _inputs(4)
    with pytest.raises(ValueError, match="needs a GPU.*attention='xla'"):
        kernels.get_kernel("cudnn")(q, k, v, _masks())


def test_unknown_kernel():
    with pytest.raises(ValueError, match=r"model.attention='flashy' is invalid: choose one of "
                                         r"\['blockwise', 'cudnn', 'pallas', 'reference', 'xla'\]"):
        kernels.get_kernel("flashy")


def _train_memory(name, seq_len):
    """Temporary bytes XLA plans for forward+backward of one attention call."""
    x = jax.ShapeDtypeStruct((1, seq_len, 4, 64), jnp.float32)
    kernel = kernels.get_kernel(name)
    loss = lambda q, k, v: jnp.sum(kernel(q, k, v, causal(seq_len)))  # noqa: E731
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(x, x, x).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_blockwise_memory_grows_linearly_with_length():
    small, mid, large = (_train_memory("blockwise", n) for n in (2048, 4096, 8192))
    # Linear memory: doubling the length adds about twice the previous increment (quadratic
    # memory would add four times as much, as the reference kernel does).
    assert (large - mid) / (mid - small) < 2.5
    ref_small, ref_mid, ref_large = (_train_memory("reference", n) for n in (2048, 4096, 8192))
    assert (ref_large - ref_mid) / (ref_mid - ref_small) > 3.5
    assert large < ref_large / 10


def test_blockwise_refuses_attention_dropout():
    q, k, v = _inputs(4)
    with pytest.raises(ValueError, match="blockwise.*no attention-weight dropout"):
        kernels.get_kernel("blockwise")(q, k, v, _masks(), dropout_rate=0.1,
                                        dropout_rng=jax.random.key(0))


# Where a kernel runs: declared at registration, checked before any data is read or compiled.
def test_register_declares_backends_and_dtypes(monkeypatch):
    monkeypatch.setattr(kernels, "KERNELS", dict(kernels.KERNELS))
    monkeypatch.setattr(kernels, "REQUIREMENTS", dict(kernels.REQUIREMENTS))
    kernels.register("plain")(kernels.reference_attention)  # the old form: runs anywhere
    kernels.check_available("plain", "cpu", dtype="float32")
    kernels.register("tpu_bf16", backends=("tpu",), dtypes=("bfloat16",))(
        kernels.reference_attention)
    kernels.check_available("tpu_bf16", "tpu", dtype=jnp.bfloat16)
    with pytest.raises(ValueError, match=r"'tpu_bf16' needs a TPU, but JAX's backend is 'gpu'; "
                                         r"use model.attention='xla'"):
        kernels.check_available("tpu_bf16", "gpu")
    with pytest.raises(ValueError, match=r"computes in \['bfloat16'\] only, not 'float32'; set "
                                         r"model.dtype='bfloat16'"):
        kernels.check_available("tpu_bf16", "tpu", dtype=jnp.float32)
    kernels.check_available("cudnn", "gpu", dtype="float16")
    with pytest.raises(ValueError, match="'cudnn' needs a GPU, but JAX's backend is 'cpu'"):
        kernels.check_available("cudnn", "cpu")


def _cudnn_model_config(**extra):
    return dict(attention="cudnn", dtype="bfloat16", max_len=16, num_layers=1, num_heads=2,
                d_model=32, **extra)


def test_training_refuses_cudnn_off_gpu_before_reading_data(tmp_path):
    if jax.default_backend() == "gpu":
        pytest.skip("a GPU is present")
    from gptjax.training.loop import train

    cfg = {"model": _cudnn_model_config(vocab_size=0),
           "data": dict(dataset="text_file", text_file=str(tmp_path / "missing.txt"),
                        seq_len=16, batch_size=8)}
    with pytest.raises(ValueError, match=r"'cudnn' needs a GPU.*attention='xla'"):
        train(cfg, tmp_path / "run")  # the missing text file would raise FileNotFoundError
    assert not (tmp_path / "run").exists()


def test_generation_refuses_cudnn_off_gpu_before_compiling():
    if jax.default_backend() == "gpu":
        pytest.skip("a GPU is present")
    from flax import nnx

    from gptjax.config import ModelConfig
    from gptjax.model import GPT

    model = GPT(ModelConfig(**_cudnn_model_config(vocab_size=16)), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"'cudnn' needs a GPU.*from_pretrained"):
        model.generate([1, 2, 3], max_new_tokens=2)
