"""tiktoken's BPE in place of a GPT-2-style BPE whose ids it reproduces exactly: the fast
encoder of corpus preparation (gptjax.tokenizers.corpus). `tiktoken_for` builds it offline from
the same vocabulary and merges, or says why it would not give the same ids.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import tiktoken
import tokenizers as hf

SURROGATE = re.compile(r"[\ud800-\udfff]")
SURROGATE_ERROR = ("the text holds a lone surrogate (U+D800-U+DFFF), which is not Unicode text "
                   "and has no UTF-8 bytes for BPE to encode; read files with errors='replace', "
                   "or use Tokenizer.byte()")
# GPT-2's pre-tokenizer regex as tiktoken writes it (its r50k_pat_str): the same pieces as
# `tokenizers`' ByteLevel regex; the possessive quantifiers and `\s++$` only spare backtracking.
GPT2_PATTERN = (r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|"""
                r"""\s+(?!\S)|\s""")


class FastGPT2:
    """tiktoken's BPE with a `tokenizers` BPE's ids, for a BPE where both give the same ids.

    Built only when `tiktoken_for` finds GPT-2's pipeline and a vocabulary that converts exactly;
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


def gpt2_byte_chars() -> dict[str, int]:
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


def notgpt2_pipeline(spec: dict) -> str | None:
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


def mergeable_ranks(model: dict, added: dict[str, int]) -> dict[bytes, int] | str:
    """tiktoken's ranks (token bytes -> id) of a byte-level BPE, or why they are not exact.

    Exact: every token is a byte or made by one merge, and ids increase with the merges' order,
    so ranking pairs by the id of what they make (tiktoken) ranks them as the merges do.
    """
    vocab = {token: i for token, i in model["vocab"].items() if token not in added}
    for token, i in added.items():
        if model["vocab"].get(token, i) != i:
            return f"special token {token!r} has id {i}, but {model['vocab'][token]} in the vocabulary"
    chars = gpt2_byte_chars()
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


def tiktoken_for(tok: hf.Tokenizer) -> tuple[FastGPT2 | None, str]:
    """A tiktoken encoder giving exactly `tok`'s ids, or (None, why not)."""
    spec = json.loads(tok.to_str())
    why = notgpt2_pipeline(spec)
    if why:
        return None, why
    added = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
    ranks = mergeable_ranks(spec["model"], added)
    if isinstance(ranks, str):
        return None, ranks
    # tiktoken takes a piece that is a whole token as that token; tokenizers merges its bytes,
    # which must end in that token too (true of GPT-2's vocabulary, checked for each token).
    for token, i in spec["model"]["vocab"].items():
        if token not in added and [t.id for t in tok.model.tokenize(token)] != [i]:
            return None, f"token {token!r} is not what tokenizers' merges make of its bytes"
    encoding = tiktoken.Encoding("gptjax-bpe", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                 special_tokens=added)
    return FastGPT2(encoding), "GPT-2's pipeline; the vocabulary converts exactly"
