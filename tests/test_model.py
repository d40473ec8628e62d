"""The GPT: causality, padding, the KV cache, GPT-2's shape and initialisation, purity."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gptjax import GPT, ModelConfig
from gptjax.model import apply, split


def tiny(**kw):
    base = dict(vocab_size=97, max_len=32, num_layers=2, num_heads=4, d_model=32)
    base.update(kw)
    return ModelConfig(**base)


POSITIONS = ["learned", "sinusoidal", "rope", "alibi", "none"]


@pytest.mark.parametrize("position", POSITIONS)
def test_causal_future_tokens_do_not_change_the_past(position):
    model = GPT(tiny(position=position), rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 10), 0, 97)
    changed = tokens.at[:, 6:].set((tokens[:, 6:] + 1) % 97)
    a, b = model(tokens), model(changed)
    np.testing.assert_allclose(a[:, :6], b[:, :6], atol=1e-6)
    assert not np.allclose(a[:, 6:], b[:, 6:])


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("kv_heads", [4, 1])
def test_kv_cache_decoding_equals_full_forward(position, kv_heads):
    model = GPT(tiny(position=position, num_kv_heads=kv_heads), rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(2), (2, 9), 0, 97)
    full = model(tokens)
    cache_len = 16
    cache = model.init_cache(2, cache_len)
    assert cache[0]["k"].shape == (2 * kv_heads, cache_len, 8)  # MQA: one K/V head cached
    valid = lambda n: jnp.broadcast_to(jnp.arange(cache_len) < n, (2, cache_len))  # noqa: E731
    logits, cache = model.forward(tokens[:, :5], cache=cache, cache_index=0, kv_valid=valid(5))
    np.testing.assert_allclose(logits, full[:, :5], atol=1e-5)
    for t in range(5, 9):
        step, cache = model.forward(tokens[:, t:t + 1], cache=cache, cache_index=t,
                                    kv_valid=valid(t + 1))
        np.testing.assert_allclose(step[:, 0], full[:, t], atol=1e-5)


def test_left_padding_with_position_ids_matches_unpadded():
    model = GPT(tiny(), rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(3), (1, 6), 0, 97)
    padded = jnp.concatenate([jnp.zeros((1, 3), tokens.dtype), tokens], axis=1)
    mask = jnp.array([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    pos = jnp.clip(jnp.cumsum(mask, -1) - 1, 0)
    out = model(padded, positions_=pos, attention_mask_=mask)
    np.testing.assert_allclose(out[:, 3:], model(tokens), atol=1e-5)


def test_sliding_window_limits_what_a_token_sees():
    model = GPT(tiny(window=3, position="none"), rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(4), (1, 12), 0, 97)
    # With 2 layers and window 3, token 11 sees back to token 11 - 2*2 = 7 at most.
    changed = tokens.at[:, :7].set((tokens[:, :7] + 5) % 97)
    np.testing.assert_allclose(model(tokens)[:, 11], model(changed)[:, 11], atol=1e-6)
    changed = tokens.at[:, 8].set((tokens[:, 8] + 5) % 97)
    assert not np.allclose(model(tokens)[:, 11], model(changed)[:, 11])


def test_gpt2_small_shape_and_parameter_count():
    cfg = ModelConfig()  # defaults are GPT-2 small
    model = nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0)))
    assert model.num_params() == 124_439_808  # Hugging Face's gpt2 count (tied head)
    untied = nnx.eval_shape(lambda: GPT(ModelConfig(tie_embeddings=False), rngs=nnx.Rngs(0)))
    assert untied.num_params() == 124_439_808 + 50257 * 768


def test_gpt2_initialisation():
    cfg = tiny(num_layers=8, d_model=128, vocab_size=2000)
    model = GPT(cfg, rngs=nnx.Rngs(0))
    std = lambda x: float(jnp.std(x))  # noqa: E731
    assert abs(std(model.wte.embedding.value) - 0.02) < 0.002
    assert abs(std(model.blocks[0].mlp.fc.kernel.value) - 0.02) < 0.002
    residual = 0.02 / math.sqrt(2 * cfg.num_layers)
    assert abs(std(model.blocks[0].attn.out.kernel.value) - residual) < 0.1 * residual
    assert abs(std(model.blocks[3].mlp.proj.kernel.value) - residual) < 0.1 * residual
    assert float(jnp.abs(model.blocks[0].attn.query.bias.value).max()) == 0.0
    np.testing.assert_array_equal(model.ln_f.scale.value, 1.0)


def test_tied_head_is_the_embedding_and_untied_is_not():
    model = GPT(tiny(), rngs=nnx.Rngs(0))
    assert not hasattr(model, "lm_head")
    untied = GPT(tiny(tie_embeddings=False), rngs=nnx.Rngs(0))
    assert untied.lm_head.kernel.value.shape == (32, 97)


def test_pure_apply_under_jit_equals_the_module():
    model = GPT(tiny(position="rope", num_kv_heads=2), rngs=nnx.Rngs(0))
    graphdef, params = split(model)
    tokens = jnp.arange(20).reshape(2, 10) % 97
    jitted = jax.jit(lambda p, t: apply(graphdef, p, t))
    np.testing.assert_allclose(jitted(params, tokens), model(tokens), atol=1e-6)


def test_dropout_is_active_only_in_training():
    model = GPT(tiny(dropout=0.3), rngs=nnx.Rngs(0))
    tokens = jnp.arange(20).reshape(2, 10)
    eval_a, eval_b = model(tokens), model(tokens)
    np.testing.assert_array_equal(eval_a, eval_b)
    train_a = model(tokens, deterministic=False, rngs=nnx.Rngs(dropout=1))
    train_b = model(tokens, deterministic=False, rngs=nnx.Rngs(dropout=2))
    again_a = model(tokens, deterministic=False, rngs=nnx.Rngs(dropout=1))
    assert not np.allclose(train_a, eval_a) and not np.allclose(train_a, train_b)
    np.testing.assert_array_equal(train_a, again_a)


def test_remat_gives_the_same_gradients():
    tokens = jnp.arange(20).reshape(2, 10)

    def grads(remat):
        graphdef, params = split(GPT(tiny(remat=remat), rngs=nnx.Rngs(0)))
        loss = lambda p: jnp.mean(apply(graphdef, p, tokens) ** 2)  # noqa: E731
        return jax.grad(loss)(params)

    for a, b in zip(jax.tree.leaves(grads(False)), jax.tree.leaves(grads(True))):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_bfloat16_compute_with_float32_params():
    model = GPT(tiny(dtype="bfloat16"), rngs=nnx.Rngs(0))
    assert model.wte.embedding.value.dtype == jnp.float32
    logits = model(jnp.arange(8)[None])
    assert logits.dtype == jnp.float32
    ref = GPT(tiny(), rngs=nnx.Rngs(0))(jnp.arange(8)[None])
    np.testing.assert_allclose(logits, ref, atol=0.1)


def test_parameters_carry_logical_axis_names():
    model = GPT(tiny(), rngs=nnx.Rngs(0))
    assert model.wte.embedding.get_metadata()["out_sharding"] == ("vocab", "embed")
    assert model.blocks[0].attn.query.kernel.get_metadata()["out_sharding"] == ("embed", "heads")
    assert model.blocks[0].mlp.proj.kernel.get_metadata()["out_sharding"] == ("mlp", "embed")


def test_a_padded_vocabulary_is_the_same_model():
    """vocab 97 padded to 104 rows: the real logits are the unpadded model's (the same init on
    the real rows), the padded ones are never predicted, sampled or given a gradient."""
    plain = GPT(tiny(tie_embeddings=False), rngs=nnx.Rngs(0))
    padded = GPT(tiny(tie_embeddings=False, vocab_multiple=8), rngs=nnx.Rngs(0))
    assert padded.cfg.padded_vocab == 104 and padded.wte.embedding[...].shape == (104, 32)
    tokens = jax.random.randint(jax.random.key(4), (2, 10), 0, 97)
    a, b = plain(tokens), padded(tokens)
    np.testing.assert_allclose(b[..., :97], a, atol=1e-6, rtol=0)
    assert np.all(np.asarray(b[..., 97:]) == np.finfo(np.float32).min)
    graphdef, params = split(padded)

    def loss(p):
        return jax.nn.log_softmax(apply(graphdef, p, tokens))[..., :97].mean()

    grads = jax.grad(loss)(params)
    assert not np.any(np.asarray(grads["wte"]["embedding"][...])[97:])
    assert not np.any(np.asarray(grads["lm_head"]["kernel"][...])[:, 97:])
    out = padded.generate(np.asarray(tokens[:1]), max_new_tokens=22, do_sample=True,
                          temperature=50.0, seed=0)  # nearly uniform over what can be drawn
    assert out.max() < 97
