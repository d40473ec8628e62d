"""Attention weights drawn by experiments/attention_maps.py are the model's real ones."""

import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gptjax import GPT, ModelConfig
from gptjax.model import positions
from gptjax.model.inspect import attention_weights
from gptjax.model.masks import causal
from gptjax.plots import attention_heatmaps


def _model(**kw):
    cfg = dict(vocab_size=60, max_len=32, num_layers=2, num_heads=4, d_model=32)
    cfg.update(kw)
    return GPT(ModelConfig(**cfg), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("kw", [{}, {"position": "sinusoidal"}, {"position": "alibi"},
                                {"position": "rope", "num_kv_heads": 2},
                                {"window": 3, "position": "none"}, {"attention": "blockwise"}])
def test_weights_are_causal_distributions_that_reproduce_the_layer(kw):
    model = _model(**kw)
    tokens = jax.random.randint(jax.random.key(0), (1, 9), 0, 60)
    w = attention_weights(model, tokens)
    assert w.shape == (2, 1, 4, 9, 9)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(np.triu(np.asarray(w), 1), 0.0)
    if "window" in kw:
        np.testing.assert_array_equal(np.tril(np.asarray(w), -3), 0.0)
    # weights @ V, heads concatenated and projected, is exactly the first layer's attention output
    block = model.blocks[0]
    pos = jnp.arange(9)[None]
    position = positions.get(model.cfg.position)
    x = position.embed(model, model.wte(tokens), pos)
    _, _, v = block.attn.project(block.ln_1(x), pos)
    v = jnp.repeat(v, 4 // model.cfg.num_kv_heads, axis=2)
    context = jnp.einsum("bhqk,bkhd->bqhd", w[0], v).reshape(1, 9, 32)
    expected, _ = block.attn(block.ln_1(x), positions_=pos,
                             mask=causal(9, window=model.cfg.window,
                                         alibi_slopes=position.slopes(model.cfg)))
    np.testing.assert_allclose(block.attn.out(context), expected, atol=1e-5)


def test_weights_come_from_the_forward_pass_that_ran():
    """Sinusoidal positions are scaled in the forward; weights must carry that (a second copy of
    the forward once added them unscaled). Perturbing the model changes the maps; they are
    popped after each call, so the model is left as it was."""
    model = _model(position="sinusoidal")
    tokens = jnp.arange(9)[None] % 60
    w = attention_weights(model, tokens)
    assert model.blocks[0].attn.sow_weights is False
    assert not nnx.state(model, nnx.Intermediate)  # nothing left behind
    scaled = model.wte.embedding[...]
    model.wte.embedding[...] = scaled * 3.0
    assert not np.allclose(attention_weights(model, tokens), w, atol=1e-4)


def test_heatmaps_one_png_per_layer(tmp_path):
    w = attention_weights(_model(), jnp.arange(6)[None])[:, 0]
    paths = attention_heatmaps(w, list("abcdef"), tmp_path)
    assert [p.name for p in paths] == ["attention_layer00.png", "attention_layer01.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_the_command_draws_the_layers_asked_for(tmp_path):
    """experiments.attention_maps end to end on the README's tiny GPT-2: one PNG per layer
    asked for, named by the model's layer number."""
    root = pathlib.Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-m", "experiments.attention_maps",
         "--checkpoint=tests/golden/tiny-gpt2", "--prompt=To be, or not to be",
         f"--outdir={tmp_path}", "--layers=1"],
        cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(tmp_path / "attention_layer01.png")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attention_layer01.png"]
    assert (tmp_path / "attention_layer01.png").read_bytes()[:4] == b"\x89PNG"


def test_prompt_longer_than_learned_positions():
    with pytest.raises(ValueError, match="prompt length 40 exceeds model.max_len=32"):
        attention_weights(_model(), jnp.zeros((1, 40), jnp.int32))
