"""Perplexity on a text (gptjax.perplexity, experiments.perplexity): Hugging Face's windows, the
batched loss against a window-by-window forward, bits per byte by formula, the tokenized prefix,
the command end to end, and transformers' own model where it is installed."""

import functools
import json
import math
import os
import pathlib
import pydoc_data.topics
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from gptjax import GPT, ModelConfig, Tokenizer
from gptjax import perplexity as ppl
from gptjax.model import apply, split

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "golden" / "tiny-gpt2"  # a random GPT-2: 2 layers, 64 wide, 128 positions
TEXT = pydoc_data.topics.topics["if"] + pydoc_data.topics.topics["while"]  # English and code


@pytest.fixture(scope="module")
def tiny():
    return GPT.from_pretrained(TINY), Tokenizer.from_pretrained(TINY)


def hugging_face_loop(n, context, stride):
    """(begin_loc, end_loc, trg_len) of each window, as the guide's loop computes them."""
    out, prev_end_loc = [], 0
    for begin_loc in range(0, n, stride):
        end_loc = min(begin_loc + context, n)
        out.append((begin_loc, end_loc, end_loc - prev_end_loc))
        prev_end_loc = end_loc
        if end_loc == n:
            break
    return out


@pytest.mark.parametrize("n,context,stride", [(2, 8, 4), (7, 8, 4), (8, 8, 7), (50, 8, 4),
                                              (50, 8, 1), (51, 16, 15), (1000, 128, 64)])
def test_windows_score_every_token_once_as_hugging_faces_loop_does(n, context, stride):
    spans = ppl.windows(n, context, stride)
    assert [(w.begin, w.end) for w in spans] == [(b, e) for b, e, _ in
                                                 hugging_face_loop(n, context, stride)]
    # the guide masks all but the last trg_len labels; the first window's first has no label
    assert [w.end - w.scored for w in spans] == [t - (i == 0) for i, (_, _, t) in
                                                 enumerate(hugging_face_loop(n, context, stride))]
    scored = [t for w in spans for t in range(w.scored, w.end)]
    assert scored == list(range(1, n))  # each token but the first, once, in order
    for i, w in enumerate(spans):
        assert w.end - w.begin <= context and w.begin < w.scored < w.end + 1
        if i:  # a token scored after the first window sees context - stride tokens or more
            assert w.scored - w.begin >= context - stride


@functools.partial(jax.jit, static_argnums=0)
def forward(graphdef, params, tokens):
    """The model's logits, compiled once per length (run eagerly, each op compiled alone for
    every length: 11 s against 2 on a cold cache)."""
    return apply(graphdef, params, tokens)


def reference_loss(model, ids, context, stride):
    """(mean loss, count): one unpadded forward per window, its log-softmax in float64."""
    graphdef, params = split(model)
    total, count = 0.0, 0
    for w in ppl.windows(len(ids), context, stride):
        logits = np.asarray(forward(graphdef, params, np.asarray([ids[w.begin:w.end]])),
                            np.float64)[0, :, :model.cfg.vocab_size]
        top = logits.max(-1, keepdims=True)
        logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
        for t in range(w.scored, w.end):
            total -= logp[t - w.begin - 1, ids[t]]
            count += 1
    return total / count, count


@pytest.mark.parametrize("context,stride,batch_size,max_tokens", [
    (128, 64, 8, None), (128, 127, 3, None), (32, 5, 4, 300), (128, 64, 2, 90)])
def test_loss_equals_a_forward_per_window(tiny, context, stride, batch_size, max_tokens):
    model, tok = tiny
    result = ppl.perplexity(model, tok, TEXT, context=context, stride=stride,
                            batch_size=batch_size, max_tokens=max_tokens)
    ids = tok.encode(TEXT)[:max_tokens]
    loss, count = reference_loss(model, ids, context, stride)
    assert result["tokens"] == count == len(ids) - 1
    assert result["text_tokens"] == len(ids)
    assert result["windows"] == len(ppl.windows(len(ids), context, stride))
    assert result["loss"] == pytest.approx(loss, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(loss), rel=1e-4)


def test_defaults_are_the_models_context_and_half_of_it(tiny):
    model, tok = tiny
    result = ppl.perplexity(model, tok, TEXT, max_tokens=400)
    assert (result["context"], result["stride"]) == (128, 64)


def test_bits_per_byte_count_the_scored_texts_utf8_bytes():
    text = "naïve café, déjà vu — " * 20  # multi-byte characters: bytes differ from tokens
    tok = Tokenizer.char(text)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, max_len=64, num_layers=1, num_heads=2,
                            d_model=16), rngs=nnx.Rngs(0))
    result = ppl.perplexity(model, tok, text, context=64, stride=32)
    assert result["bytes"] == len(text[1:].encode("utf-8")) > result["tokens"] == len(text) - 1
    bits = result["loss"] * result["tokens"] / math.log(2)
    assert result["bits_per_byte"] == pytest.approx(bits / result["bytes"], rel=1e-9)
    ascii_result = ppl.perplexity(model, tok, "na caf, d vu " * 10, context=64, stride=32)
    assert ascii_result["bits_per_byte"] == pytest.approx(ascii_result["loss"] / math.log(2))


def test_a_prefix_is_tokenized_as_the_whole_text_tokenizes_it(tiny):
    _, tok = tiny
    whole = tok.encode(TEXT)
    for k in (2, 10, 57, 400, len(whole), len(whole) + 10):
        assert ppl.encode_prefix(tok, TEXT, k).tolist() == whole[:k]
    # a character the vocabulary lacks after the tokens asked for does not stop a char model
    char = Tokenizer.char("abc ")
    assert ppl.encode_prefix(char, "abc " * 500 + "$", 100).tolist() == char.encode(
        ("abc " * 25))


@pytest.mark.parametrize("kwargs,pattern", [
    ({"context": 129}, r"context=129: give 2 to the model's 128 positions"),
    ({"context": 1}, r"context=1"),
    ({"context": 16, "stride": 16}, r"stride=16 with context=16: give 1 to 15"),
    ({"stride": 0}, r"stride=0"),
    ({"batch_size": 0}, r"batch_size=0"),
])
def test_a_context_or_stride_that_does_not_fit_is_refused(tiny, kwargs, pattern):
    model, tok = tiny
    with pytest.raises(ppl.PerplexityError, match=pattern):
        ppl.perplexity(model, tok, TEXT, **kwargs)


def test_a_one_token_text_and_an_empty_file_are_refused(tiny, tmp_path):
    model, tok = tiny
    with pytest.raises(ppl.PerplexityError, match="1 token"):
        ppl.perplexity(model, tok, "a")
    (tmp_path / "blank.txt").write_text(" \n\n")
    with pytest.raises(ppl.PerplexityError, match="blank.txt holds no text"):
        ppl.perplexity_of_file(TINY, tmp_path / "blank.txt")


def test_the_command_prints_and_writes_the_librarys_result(tiny, tmp_path):
    (tmp_path / "text.txt").write_text(TEXT)
    out = tmp_path / "ppl.json"
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.perplexity", f"--checkpoint={TINY}",
         f"--text_file={tmp_path / 'text.txt'}", "--stride=100", "--max_tokens=500",
         f"--out={out}"], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == printed
    model, tok = tiny
    expected = ppl.perplexity(model, tok, TEXT, stride=100, max_tokens=500)
    assert printed["tokens"] == expected["tokens"] == 499 and printed["stride"] == 100
    assert printed["loss"] == pytest.approx(expected["loss"], rel=1e-6)


def test_against_transformers_own_model(tiny):
    """The guide's loop on transformers' GPT2LMHeadModel, every scored token weighted once."""
    torch = pytest.importorskip("torch")
    os.environ["HF_HUB_OFFLINE"] = "1"
    transformers = pytest.importorskip("transformers")
    model, tok = tiny
    hf = transformers.GPT2LMHeadModel.from_pretrained(TINY).eval()
    ids = torch.tensor([tok.encode(TEXT)])
    for context, stride in [(128, 64), (100, 99)]:
        total, count = 0.0, 0
        for begin, end, trg_len in hugging_face_loop(ids.size(1), context, stride):
            labels = ids[:, begin:end].clone()
            labels[:, :-trg_len] = -100
            with torch.no_grad():
                loss = hf(ids[:, begin:end], labels=labels).loss.item()
            n = int((labels[:, 1:] != -100).sum())  # the labels the shifted loss averaged
            total, count = total + loss * n, count + n
        result = ppl.perplexity(model, tok, TEXT, context=context, stride=stride)
        assert result["tokens"] == count
        assert result["loss"] == pytest.approx(total / count, rel=1e-5)
