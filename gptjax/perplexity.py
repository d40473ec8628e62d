"""Perplexity of a language model on a text, read in sliding windows as Hugging Face's guide
"Perplexity of fixed-length models" reads it.

    result = perplexity(model, tokenizer, text, stride=512)
    result["perplexity"], result["loss"], result["bits_per_byte"]

The text is tokenized whole, without special tokens, and read in windows of `context` tokens
(the model's max_len unless given) that begin every `stride` tokens. A window scores only the
tokens that no earlier window scored, so every token but the text's first is scored exactly once,
conditioned on the tokens before it in its window: at least context - stride of them once the
text is longer than one window. A smaller stride gives each token more context and costs about
context / stride forward passes per window of text; stride must stay below context, so that a
window's first token (which the window cannot predict) is one the window before scored.
    loss           mean -log p(token | its window's earlier tokens), in nats, over scored tokens
                   (each weighs the same; the guide's loop weighs a window after the first by
                   one token fewer than it scores)
    perplexity     exp(loss)
    bits_per_byte  the summed loss in bits over the UTF-8 bytes of the scored tokens' text, which
                   compares models whose tokenizers differ (a char-level model, GPT-2's BPE)
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any

import numpy as np
from tqdm import tqdm

from gptjax.data.tasks import IGNORE, padded_batches
from gptjax.evaluate import loss_totals
from gptjax.training.checkpoint import load_pretrained

TAIL = 64  # tokens past --max_tokens that a tokenized prefix of the text must reach
PAD_MULTIPLE = 64  # a text shorter than one window is padded to this multiple (fewer compiles)


class PerplexityError(ValueError):
    """Bad perplexity input: a text too short, a context or stride that does not fit."""


@dataclasses.dataclass(frozen=True)
class Window:
    """Tokens [begin, end) of the text are the window's input; it scores [scored, end)."""

    begin: int
    end: int
    scored: int


def windows(num_tokens: int, context: int, stride: int) -> list[Window]:
    """Hugging Face's loop: windows begin at 0, stride, 2 * stride, ..., each `context` tokens
    long (the last may be shorter) and scoring from where the one before stopped; the first
    scores from token 1, since token 0 has nothing to be predicted from."""
    out, scored_from = [], 1
    for begin in range(0, num_tokens, stride):
        end = min(begin + context, num_tokens)
        out.append(Window(begin, end, scored_from))
        scored_from = end
        if end == num_tokens:
            break
    return out


def check(context: int, stride: int, max_len: int) -> None:
    """PerplexityError naming the fix for a context or stride that does not fit the model."""
    if not 2 <= context <= max_len:
        raise PerplexityError(f"context={context}: give 2 to the model's {max_len} positions "
                              "(model.max_len), or leave it unset for all of them")
    if not 1 <= stride < context:
        raise PerplexityError(
            f"stride={stride} with context={context}: give 1 to {context - 1} (a window's first "
            "token cannot be scored, so the window before must have scored it); "
            f"{context // 2} is Hugging Face's choice, {context - 1} the fastest")


def encode_prefix(tokenizer, text: str, max_tokens: int | None) -> np.ndarray:
    """The text's first max_tokens tokens (all of them for None), as the whole text's
    tokenization has them, tokenizing no more of it than that needs: a prefix of the text,
    doubled until its tokens run TAIL past max_tokens (a cut changes only the tokens next to
    it)."""
    chars = len(text) if max_tokens is None else 4 * (max_tokens + TAIL)
    while True:
        ids = tokenizer.encode(text[:chars])
        if chars >= len(text) or len(ids) >= max_tokens + TAIL:
            return np.asarray(ids[:max_tokens], np.int32)
        chars *= 2


def window_rows(ids: np.ndarray, spans: list[Window]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(inputs, targets) of each window: its tokens but the last, and the next tokens where the
    window scores them ([scored, end)), IGNORE before."""
    rows = []
    for w in spans:
        targets = np.full(w.end - w.begin - 1, IGNORE, np.int32)
        targets[w.scored - w.begin - 1:] = ids[w.scored:w.end]  # position i predicts begin+i+1
        rows.append((ids[w.begin:w.end - 1], targets))
    return rows


def perplexity(model, tokenizer, text: str, *, context: int | None = None,
               stride: int | None = None, batch_size: int = 8, max_tokens: int | None = None,
               progress: bool = False) -> dict[str, Any]:
    """{'perplexity', 'loss', 'bits_per_byte', 'tokens' (scored), 'bytes', 'windows',
    'context', 'stride', 'text_tokens'} of `model` on `text` (module docstring). context
    defaults to model.cfg.max_len, stride to half of it; max_tokens keeps the text's first
    tokens only."""
    if batch_size < 1 or (max_tokens is not None and max_tokens < 2):
        raise PerplexityError(f"batch_size={batch_size} must be positive and max_tokens="
                              f"{max_tokens} at least 2")
    max_len = model.cfg.max_len
    context = max_len if context is None else context
    stride = max(1, context // 2) if stride is None else stride
    check(context, stride, max_len)
    ids = encode_prefix(tokenizer, text, max_tokens)
    if len(ids) < 2:
        raise PerplexityError(f"the text is {len(ids)} token(s) long: perplexity needs at "
                              "least 2, a token and one to predict it from")
    spans = windows(len(ids), context, stride)
    width = min(context, -(-len(ids) // PAD_MULTIPLE) * PAD_MULTIPLE)
    batches = padded_batches(window_rows(ids, spans), batch_size, width)
    total, count = loss_totals(model, tqdm(batches, desc="perplexity", disable=not progress,
                                           total=-(-len(spans) // batch_size)))
    num_bytes = len(tokenizer.decode(ids[1:].tolist()).encode("utf-8"))
    loss = total / count
    return {"perplexity": math.exp(min(loss, 700.0)), "loss": loss,
            "bits_per_byte": total / math.log(2) / max(num_bytes, 1), "tokens": int(count),
            "bytes": num_bytes, "windows": len(spans), "context": context, "stride": stride,
            "text_tokens": len(ids)}


def read_text(path) -> str:
    """The UTF-8 text of a file; an empty one is refused (OSError and UnicodeDecodeError name
    the file themselves)."""
    path = pathlib.Path(path).expanduser()
    if path.is_dir():
        raise IsADirectoryError(21, "Is a directory", str(path))
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise PerplexityError(f"{path} holds no text; give a file with the text to score")
    return text


def perplexity_of_file(checkpoint, text_file, *, tokenizer=None, **kwargs) -> dict[str, Any]:
    """`perplexity` of GPT.from_pretrained(checkpoint) (a run workdir or a Hugging Face folder),
    with its tokenizer (or the folder `tokenizer` names), on the UTF-8 file `text_file`."""
    text = read_text(text_file)  # before the model loads
    model, tok = load_pretrained(checkpoint, tokenizer)
    return {"checkpoint": str(checkpoint), "text_file": str(text_file),
            **perplexity(model, tok, text, **kwargs)}
