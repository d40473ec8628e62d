"""Packed fine-tuning rows (data.pack=True): several examples per row, each attending only to
itself, scored as one example per row would be, every example once per epoch."""

import collections
import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from gptjax import Tokenizer
from gptjax.config import Config, ConfigError, ModelConfig
from gptjax.data import build_data, tasks
from gptjax.model import GPT, apply, kernels
from gptjax.training import loop
from gptjax.training import start as run_start

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def examples(n=30):
    """QA examples of varied lengths (so rows hold different counts of them)."""
    return [{"question": f"What comes after {' '.join(WORDS[:i % 7 + 1])}?",
             "answer": " ".join(WORDS[i % 7 + 1:i % 7 + 1 + i % 3 + 1])} for i in range(n)]


def rendered(n=30):
    return [tasks.render("qa", e) for e in examples(n)]


def char_tokenizer(segments):
    return Tokenizer.from_name("char", corpus="".join(t for ex in segments for t, _ in ex))


@functools.partial(jax.jit, static_argnums=0)
def _logits(graphdef, params, inputs, segment_ids, positions):
    return apply(graphdef, params, inputs, segment_ids_=segment_ids, positions_=positions)


def per_token_losses(model, rows):
    """Cross-entropy of every position (0 where not scored): float32 [rows, seq_len]."""
    graphdef, params = nnx.split(model, nnx.Param)
    logits = _logits(graphdef, params, rows["inputs"], rows.get("segment_ids"),
                     rows.get("positions"))
    targets = jnp.asarray(rows["targets"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(targets, 0))
    return np.asarray(jnp.where(targets >= 0, ce, 0.0))


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_packed_rows_give_each_example_the_loss_it_has_alone(position):
    segments = rendered()
    tok = char_tokenizer(segments)
    seq_len = 160
    single = tasks.to_rows(segments, tok, seq_len, "test")
    packed = tasks.pack_rows(segments, tok, seq_len, "test")  # the files' order
    assert len(packed["inputs"]) < len(single["inputs"]) / 2  # packing did pack
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, max_len=seq_len, num_layers=1,
                            num_heads=2, d_model=32, position=position), rngs=nnx.Rngs(0))
    alone = per_token_losses(model, single).sum(axis=1)
    together = per_token_losses(model, packed)
    lengths = [len(x) for x, _ in tasks.encode_rows(segments, tok, seq_len, "test")]
    got = np.zeros(len(segments))
    for r, items in enumerate(tasks.first_fit(lengths, seq_len, range(len(segments)))):
        for k, item in enumerate(items):
            got[item] = together[r][packed["segment_ids"][r] == k].sum()
    assert (alone > 1.0).all()  # every example is scored
    np.testing.assert_allclose(got, alone, rtol=1e-5, atol=1e-4)
    # Each row: its examples as segments 0..k-1, then (if room is left) padding as segment k.
    for r, items in enumerate(tasks.first_fit(lengths, seq_len, range(len(segments)))):
        used = sum(lengths[i] for i in items)
        assert (packed["segment_ids"][r, used:] == len(items)).all()
        assert (packed["targets"][r, used:] == -1).all()


def spans(rows):
    """Every (row, segment id, start, end) of packed rows, in row order."""
    out = []
    for r, ids in enumerate(rows["segment_ids"]):
        cuts = np.flatnonzero(np.diff(ids)) + 1
        for start, end in zip([0, *cuts], [*cuts, len(ids)]):
            out.append((r, int(ids[start]), int(start), int(end)))
    return out


def test_rows_hold_every_example_once_whole_and_from_position_0():
    segments = rendered(40)
    tok = char_tokenizer(segments)
    encoded = tasks.encode_rows(segments, tok, 128, "test")
    rows = tasks.pack_rows(segments, tok, 128, "test", seed=3)
    assert tasks.pack_rows(segments, tok, 128, "test", seed=3)["inputs"].tobytes() == \
        rows["inputs"].tobytes()  # deterministic for a seed
    assert tasks.pack_rows(segments, tok, 128, "test", seed=4)["inputs"].tobytes() != \
        rows["inputs"].tobytes()
    found, padding = [], 0
    for r, k, start, end in spans(rows):
        assert (rows["positions"][r, start:end] == np.arange(end - start)).all()
        if (rows["targets"][r, start:end] == -1).all():  # padding: every example scores a token
            assert end == 128 and k == rows["segment_ids"][r, start - 1] + 1
            padding += 1
        else:
            found.append((tuple(rows["inputs"][r, start:end]),
                          tuple(rows["targets"][r, start:end])))
    want = [(tuple(x), tuple(y)) for x, y in encoded]
    assert collections.Counter(found) == collections.Counter(want)  # each once, none split
    assert padding >= len(rows["inputs"]) - 1  # first fit: at most the rows that are full lack it


def write_jsonl(path, items):
    path.write_text("".join(json.dumps(e) + "\n" for e in items))
    return str(path)


def task_config(tmp_path, **data):
    return Config.from_dict({
        "model": dict(vocab_size=0, max_len=128, num_layers=1, num_heads=2, d_model=32),
        "data": dict(dataset="task", task="qa", seq_len=128, batch_size=8, tokenizer="char",
                     text_file=write_jsonl(tmp_path / "train.jsonl", examples(30)),
                     val_text_file=write_jsonl(tmp_path / "val.jsonl", examples(13)), **data),
        "train": dict(num_steps=1, eval_every=1, eval_steps=1, checkpoint_every=1,
                      sample_tokens=0, log_every=1)})


def examples_in(batches):
    """The (inputs, targets) of each example of packed batches."""
    out = []
    for b in batches:
        for r, k, start, end in spans(b):
            if (b["targets"][r, start:end] >= 0).any():
                out.append((tuple(b["inputs"][r, start:end]), tuple(b["targets"][r, start:end])))
    return out


def test_an_epoch_and_the_eval_split_hold_every_example_once(tmp_path):
    data = build_data(task_config(tmp_path, pack=True), process_index=0, process_count=1)
    plain = build_data(task_config(tmp_path), process_index=0, process_count=1)
    assert (data.train_examples, data.val_examples) == (30, 13)
    assert data.train_rows < 30 and data.val_rows < 13
    assert data.train_tokens == plain.train_tokens  # the same examples, fewer padding tokens
    epoch = [next(data.train) for _ in range(-(-data.train_rows // 8))]
    assert set(epoch[0]) == {"inputs", "targets", "segment_ids", "positions"}
    rows = {k: np.concatenate([b[k] for b in epoch])[:data.train_rows] for k in epoch[0]}
    want = [(tuple(x), tuple(y)) for x, y in tasks.encode_rows(
        rendered(30), data.tokenizer, 128, "test")]
    assert collections.Counter(examples_in([rows])) == collections.Counter(want)
    # The eval split packs the same way, in the files' order.
    val = list(data.val_batches(-(-data.val_rows // 8)))
    val = {k: np.concatenate([b[k] for b in val])[:data.val_rows] for k in val[0]}
    expected = tasks.pack_rows(rendered(13), data.tokenizer, 128, "test")
    for key in expected:
        np.testing.assert_array_equal(val[key], expected[key])
    assert set(next(plain.train)) == {"inputs", "targets"}  # the default is unchanged


def test_a_packed_run_trains_and_evaluates(tmp_path):
    final = loop.train(task_config(tmp_path, pack=True).to_dict(), tmp_path / "run")
    assert np.isfinite(final["val_loss"]) and np.isfinite(final["train_loss"])


def test_pack_outside_task_data_is_refused():
    with pytest.raises(ConfigError, match=r"data.pack=True is invalid: .*data.dataset='task'.*"
                                          r"'text_file'.*set data.pack=False"):
        Config.from_dict({"data": dict(dataset="text_file", pack=True)})


@pytest.fixture
def kernel_without_segments():
    kernels.register("no_segments_pack_test")(kernels.reference_attention)
    yield "no_segments_pack_test"
    del kernels.KERNELS["no_segments_pack_test"], kernels.REQUIREMENTS["no_segments_pack_test"]


def test_a_kernel_without_segment_ids_is_refused(tmp_path, kernel_without_segments):
    cfg = task_config(tmp_path, pack=True)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, vocab_size=40, attention=kernel_without_segments))
    with pytest.raises(ConfigError, match=r"data.pack=True is invalid: model.attention="
                       r"'no_segments_pack_test' cannot take segment ids.*'xla'.*"
                       r"set data.pack=False"):
        run_start.check_config(cfg)
    run_start.check_config(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, pack=False)))
