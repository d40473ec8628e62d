"""The three kinds of tokenizer behind gptjax.tokenizers.Tokenizer, each a small codec:
character-level, byte-level, and BPE through the `tokenizers` library (GPT-2's pipeline).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import tokenizers as hf

from gptjax.tokenizers.tiktoken_bpe import SURROGATE, SURROGATE_ERROR, FastGPT2, tiktoken_for

EOT = "<|endoftext|>"


class CharCodec:
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


class ByteCodec:
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


class BPECodec:
    """A `tokenizers.Tokenizer` whose model is BPE (GPT-2's or any other)."""

    kind = "bpe"

    def __init__(self, tok: hf.Tokenizer):
        self.tok = tok
        self._fast: tuple[FastGPT2 | None, str] | None = None

    def fast(self) -> tuple[FastGPT2 | None, str]:
        """(tiktoken's encoder with these ids, or None; why), built once per special tokens."""
        if self._fast is None:
            self._fast = tiktoken_for(self.tok)
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



def gpt2_pipeline(model: hf.models.BPE) -> hf.Tokenizer:
    """A tokenizer around `model` set up as Hugging Face sets up GPT-2 (byte-identical ids)."""
    tok = hf.Tokenizer(model)
    tok.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = hf.decoders.ByteLevel()
    tok.post_processor = hf.processors.ByteLevel(trim_offsets=False)
    return tok
