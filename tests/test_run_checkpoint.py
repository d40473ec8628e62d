"""A training run's workdir is a model folder: GPT.from_pretrained and Tokenizer.from_pretrained
read its latest checkpoint and tokenizer."""

import logging

import jax
import numpy as np

from gptjax import GPT, Tokenizer
from gptjax.config import default_config
from gptjax.model import split
from gptjax.training import train
from gptjax.training.checkpoint import load_params


def test_from_pretrained_on_a_run_workdir(tmp_path, caplog):
    text = tmp_path / "t.txt"
    text.write_text("abcdefgh " * 400)
    c = default_config()
    c.model.update(vocab_size=0, num_layers=1, num_heads=2, d_model=16, max_len=16)
    c.data.update(dataset="text_file", text_file=str(text), tokenizer="char", seq_len=16,
                  batch_size=8, data_dir=str(tmp_path / "data"))
    c.train.update(num_steps=4, eval_every=4, eval_steps=1, log_every=2, checkpoint_every=2,
                   sample_tokens=0)
    workdir = tmp_path / "run"
    train(c, workdir)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        model = GPT.from_pretrained(workdir)
    # Loading reads the state only, without orbax's warnings of the checkpoint's other items
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    cfg, params = load_params(workdir)
    assert cfg.model.vocab_size == 9  # resolved from the char tokenizer: 8 letters + space
    for a, b in zip(jax.tree.leaves(split(model)[1]), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    _, step2 = load_params(workdir, step=2)
    assert not np.array_equal(step2["wte"]["embedding"].value, params["wte"]["embedding"].value)
    tok = Tokenizer.from_pretrained(workdir)
    assert tok.decode(tok.encode("hag bed")) == "hag bed"
    assert model(np.array([tok.encode("abc")])).shape == (1, 3, 9)
