"""gptjax.generation: token-identical to Hugging Face generate, KV cache == recomputation,
no recompilation within a bucket, sampling behaviour, and a clear error for every bad input.

The golden outputs (tests/golden/generation.json) were made by tests/make_generation_golden.py
with transformers; these tests need neither torch nor transformers.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gptjax import GPT, ModelConfig
from gptjax import generation
from gptjax.generation import GenerationError, api, generate
from gptjax.model import apply, split

from conftest import GOLDEN

FOLDER = GOLDEN / "tiny-gpt2"
CASES = json.loads((GOLDEN / "generation.json").read_text())["cases"]
# In the goldens' prompt bucket (17..32 tokens) and with their max_length=50, so that most tests
# share the compiled programs of the golden cases.
PROMPT = list(range(65, 85))


@pytest.fixture(scope="module")
def gpt2():
    return GPT.from_pretrained(FOLDER)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_matches_transformers(gpt2, case):
    out = generate(gpt2, case["input_ids"], attention_mask=case["attention_mask"],
                   **case["kwargs"])
    expected = np.asarray(case["output"])
    assert out.shape == expected.shape, (out.tolist(), case["output"])
    np.testing.assert_array_equal(out, expected)


def test_model_generate_and_input_forms(gpt2):
    """model.generate == generate; a list, a list of lists, numpy and jax arrays agree."""
    kw = dict(max_length=50, eos_token_id=None)
    ref = gpt2.generate(PROMPT, **kw)
    assert ref.shape == (1, 50) and ref.dtype == np.int32
    for ids in ([PROMPT], np.asarray(PROMPT), jnp.asarray([PROMPT])):
        np.testing.assert_array_equal(generate(gpt2, ids, **kw), ref)


def test_ragged_batch_is_left_padded(gpt2):
    """Ragged lists are left-padded with a mask: each row equals its own single-prompt run."""
    short, long_ = PROMPT[:18], PROMPT + [70, 71]
    out = generate(gpt2, [short, long_], max_length=50, eos_token_id=None, pad_token_id=0)
    assert out.shape == (2, 50)
    np.testing.assert_array_equal(out[0, :4], [0, 0, 0, 0])
    single = generate(gpt2, short, max_length=46, eos_token_id=None)
    np.testing.assert_array_equal(out[0, 4:], single[0])


def test_no_recompile_within_a_bucket(gpt2):
    """Prompts of 17..32 tokens share one program, for a fixed max_length or max_new_tokens."""
    for kw in (dict(max_length=50), dict(max_new_tokens=30)):
        generate(gpt2, PROMPT, eos_token_id=None, **kw)
        before = dict(generation.TRACES)
        for n in (17, 24, 32):
            out = generate(gpt2, list(range(1, n + 1)), eos_token_id=None, **kw)
            assert out.shape[1] == kw.get("max_length", n + 30)
        # changing options is no new program either
        generate(gpt2, PROMPT, eos_token_id=5, repetition_penalty=1.2, no_repeat_ngram_size=3,
                 min_new_tokens=4, **kw)
        generate(gpt2, PROMPT, do_sample=True, top_k=3, top_p=0.5, temperature=0.7, **kw)
        assert dict(generation.TRACES) == before


@pytest.mark.parametrize("num_beams", [1, 3])
def test_decode_loop_never_copies_the_kv_cache(gpt2, monkeypatch, num_beams):
    """Performance guard: the compiled loop updates the cache in place (no per-step copy)."""
    import re

    captured = {}
    run = api._run

    def spy(*args, **kwargs):
        captured["call"] = (args, kwargs)
        return run(*args, **kwargs)

    monkeypatch.setattr(api, "_run", spy)
    generate(gpt2, PROMPT, max_length=50, num_beams=num_beams, eos_token_id=None)
    args, kwargs = captured["call"]
    hlo = run.lower(*args, **kwargs).compile().as_text()
    # The decode loop: each while loop's body and everything it calls. (The prefill, before the
    # loop, may lay the cache out for its one many-query attention call.)
    computations = dict(re.findall(r"^(?:ENTRY )?%(\S+) \([^\n]*\{\n(.*?)\n\}", hlo,
                                   re.M | re.S))
    loop, todo = set(), re.findall(r"body=%([\w.\-]+)", hlo)
    assert todo, "no while loop in the compiled program"
    while todo:
        name = todo.pop()
        if name not in loop:
            loop.add(name)
            todo += re.findall(r"(?:calls|body|condition|to_apply)=%([\w.\-]+)",
                               computations[name])
    cfg = gpt2.cfg
    cache_shape = rf"f32\[{num_beams},\d+,{cfg.num_kv_heads},{cfg.head_dim}\]"
    copies = [line for name in loop for line in computations[name].splitlines()
              if re.search(rf"= {cache_shape}\S* copy\(", line)]
    assert not copies, copies


def test_sampling_top_k_1_is_greedy(gpt2):
    greedy = generate(gpt2, PROMPT, max_length=50, eos_token_id=None)
    sampled = generate(gpt2, PROMPT, max_length=50, eos_token_id=None, do_sample=True, top_k=1,
                       seed=3)
    np.testing.assert_array_equal(sampled, greedy)


def test_sampling_reproducible_and_temperature(gpt2):
    kw = dict(max_length=50, eos_token_id=None, do_sample=True)
    a = generate(gpt2, PROMPT, seed=1, **kw)
    np.testing.assert_array_equal(generate(gpt2, PROMPT, seed=1, **kw), a)
    assert not np.array_equal(generate(gpt2, PROMPT, seed=2, **kw), a)
    # num_return_sequences samples each prompt several times, independently
    many = generate(gpt2, PROMPT, seed=1, num_return_sequences=2, **kw)
    assert many.shape == (2, 50) and not np.array_equal(many[0], many[1])
    # a tiny temperature is greedy; a huge one spreads over many more distinct tokens
    greedy = generate(gpt2, PROMPT, max_length=50, eos_token_id=None)
    np.testing.assert_array_equal(generate(gpt2, PROMPT, temperature=1e-4, seed=5, **kw),
                                  greedy)
    hot = generate(gpt2, PROMPT, temperature=100.0, seed=5, **kw)
    assert len(set(hot[0, 5:].tolist())) > len(set(greedy[0, 5:].tolist()))


def test_top_p_tiny_is_greedy(gpt2):
    greedy = generate(gpt2, PROMPT, max_length=50, eos_token_id=None)
    out = generate(gpt2, PROMPT, max_length=50, eos_token_id=None, do_sample=True, top_p=1e-6,
                   seed=7)
    np.testing.assert_array_equal(out, greedy)


def test_streamer_receives_every_new_token(gpt2):
    class Collect:
        def __init__(self):
            self.tokens, self.ended = [], False

        def put(self, ids):
            self.tokens.append(int(ids[0]))

        def end(self):
            self.ended = True

    streamer = Collect()
    out = generate(gpt2, PROMPT, max_length=50, eos_token_id=None, streamer=streamer)
    assert streamer.ended and streamer.tokens == out[0, len(PROMPT):].tolist()


def test_text_streamer_prints_the_continuation(gpt2):
    import io

    from gptjax import Tokenizer
    from gptjax.generation import TextStreamer

    tokenizer = Tokenizer.from_pretrained(FOLDER)
    sink = io.StringIO()
    out = generate(gpt2, PROMPT, max_length=50, eos_token_id=None,
                   streamer=TextStreamer(tokenizer, file=sink))
    assert sink.getvalue() == tokenizer.decode(out[0, len(PROMPT):],
                                               skip_special_tokens=True) + "\n"


def test_beam_sampling(gpt2):
    """do_sample with num_beams > 1 (HF's beam sampling): reproducible, best hypotheses first."""
    kw = dict(max_length=50, num_beams=3, do_sample=True, num_return_sequences=2, top_k=20,
              eos_token_id=None)
    a = generate(gpt2, PROMPT, seed=4, **kw)
    assert a.shape == (2, 50) and (a[:, :len(PROMPT)] == PROMPT).all()
    np.testing.assert_array_equal(generate(gpt2, PROMPT, seed=4, **kw), a)
    assert not np.array_equal(generate(gpt2, PROMPT, seed=5, **kw), a)


def _recompute_greedy(model, prompt, new_tokens, width=32):
    """Greedy decoding the slow way: the full forward, no cache, on every step."""
    graphdef, params = split(model)
    forward = jax.jit(lambda tokens: apply(graphdef, params, tokens))
    tokens = np.zeros((1, width), np.int32)
    tokens[0, :len(prompt)] = prompt
    n = len(prompt)
    for _ in range(new_tokens):
        logits = forward(jnp.asarray(tokens))
        tokens[0, n] = int(jnp.argmax(logits[0, n - 1]))
        n += 1
    return tokens[0, :n]


@pytest.mark.parametrize("variant", [
    dict(position="rope", num_kv_heads=2, window=6),
    dict(position="alibi", num_kv_heads=1),
])
def test_kv_cache_equals_recomputation(variant):
    """A left-padded batch through the KV cache == each prompt recomputed from scratch, for
    GQA/MQA, RoPE/ALiBi and a sliding window."""
    cfg = ModelConfig(vocab_size=97, max_len=64, num_layers=2, num_heads=4, d_model=32,
                      **variant)
    model = GPT(cfg, rngs=nnx.Rngs(1))
    prompts = [[5, 9, 2, 7, 7, 1, 3], [11, 4]]
    out = generate(model, prompts, max_new_tokens=12, pad_token_id=0)
    for row, prompt in zip(out, prompts):
        expected = _recompute_greedy(model, prompt, 12)
        np.testing.assert_array_equal(row[len(row) - len(expected):], expected)


BAD = [
    (dict(input_ids=[]), "empty"),
    (dict(input_ids=[[]]), "empty"),
    (dict(input_ids=[[1, 2], []]), "empty"),
    (dict(input_ids=[[0, 1]], attention_mask=[[0, 0]]), "empty"),
    (dict(input_ids=list(range(1, 31)), max_length=30), "max_length"),
    (dict(input_ids=[1] * 128, max_new_tokens=1), "positions"),
    (dict(max_new_tokens=200), "positions"),
    (dict(num_beams=0), "num_beams"),
    (dict(top_p=0.0, do_sample=True), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(num_beams=2, num_return_sequences=3), "num_return_sequences"),
    (dict(num_return_sequences=2), "num_return_sequences"),
    (dict(num_beams=2, num_return_sequences=3, do_sample=True), "num_return_sequences"),
    (dict(input_ids=[1, 2, 320]), "vocabulary"),
    (dict(input_ids=[-1, 2]), "vocabulary"),
    (dict(input_ids=[[1, 2]], attention_mask=[[1, 0]]), "left padding"),
    (dict(input_ids=[[1, 2]], attention_mask=[[1, 1, 1]]), "shape"),
    (dict(do_sample=True, temperature=0.0), "temperature"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(early_stopping="sometimes", num_beams=2), "early_stopping"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(input_ids=[1.5, 2.0]), "integer"),
    (dict(num_beams=2, streamer=object()), "stream"),
]


@pytest.mark.parametrize("kwargs,message", BAD, ids=[f"{m}-{i}" for i, (_, m) in enumerate(BAD)])
def test_bad_input_raises_before_compiling(gpt2, kwargs, message):
    kwargs = {"input_ids": PROMPT, "max_length": 50, **kwargs}
    before = dict(generation.TRACES)
    with pytest.raises(GenerationError, match=message):
        generate(gpt2, **kwargs)
    assert dict(generation.TRACES) == before


def test_unknown_option_is_a_type_error(gpt2):
    with pytest.raises(TypeError, match="num_beam"):
        generate(gpt2, PROMPT, num_beam=5)


def test_generate_text_for_the_cli(gpt2):
    """The CLI's library half: prompts in, per-output ids (no padding, cut after eos) and text."""
    from gptjax import Tokenizer
    from gptjax.generation.text import defaults_for, generate_text

    tokenizer = Tokenizer.from_pretrained(FOLDER)
    assert defaults_for(gpt2, tokenizer)["eos_token_id"] == 0  # generation_config.json
    eos = json.loads((GOLDEN / "generation.json").read_text())["eos_token_id"]
    prompts = ["We know't, we know't.", "You are all resolved rather to die"]
    results = generate_text(gpt2, tokenizer, prompts, max_length=50, eos_token_id=eos)
    assert [r["prompt"] for r in results] == [0, 1]
    for r, prompt in zip(results, prompts):
        ids = tokenizer.encode(prompt)
        assert r["ids"][:len(ids)] == ids and r["text"].startswith(prompt)
        assert eos not in r["ids"][len(ids):-1]  # nothing after an eos
        assert len(r["ids"]) <= 50 - (max(map(len, map(tokenizer.encode, prompts))) - len(ids))
    with pytest.raises(GenerationError, match="no tokens"):
        generate_text(gpt2, tokenizer, [""], max_length=50)


def test_article_example():
    """The background article's example, in gptjax form and as the README writes it: the same
    ids as transformers on the tiny GPT-2 fixture (its eos id comes from the folder)."""
    from gptjax import GPT, Tokenizer

    case = next(c for c in CASES if c["name"] == "article")
    model = GPT.from_pretrained(FOLDER)
    tokenizer = Tokenizer.from_pretrained(FOLDER)
    input_ids = tokenizer.encode("The quick brown fox jumps over the")
    assert [input_ids] == case["input_ids"]
    output = model.generate(input_ids, max_length=50, num_beams=5, no_repeat_ngram_size=2)
    np.testing.assert_array_equal(output, case["output"])
    text = tokenizer.decode(output[0], skip_special_tokens=True)
    assert text.startswith("The quick brown fox jumps over the")


def test_chat_reply_budget_fits_the_context():
    from gptjax.generation.chat import reply_budget

    assert reply_budget(1024) == 64  # the default where the context is large
    assert reply_budget(64) == 32  # a small model keeps half its context for the message
    assert reply_budget(64, 10) == 10
    for asked in (64, 100, 0):
        with pytest.raises(GenerationError, match=f"max_new_tokens={asked} leaves no room"):
            reply_budget(64, asked)
