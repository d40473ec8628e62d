"""Generation options with Hugging Face's names, validated on the host before anything compiles.

`GenerationConfig.build(defaults, kwargs)` mirrors transformers' precedence: the caller's keyword
arguments, then the model's defaults (its generation_config.json: eos/pad/bos ids...), then
transformers' global defaults (max_length=20, top_k=50, ...). `prepare_inputs` turns a list, a
batch of lists or an array (+ attention_mask) into a left-padded int32 batch.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Mapping

import numpy as np

from gptjax.model import positions

_UNSET = object()


class GenerationError(ValueError):
    """An input or option `generate` cannot honour; the message names it and the fix."""


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """Hugging Face `generate` options (same names, same defaults)."""

    max_length: int | None = None  # prompt included; 20 when neither this nor max_new_tokens
    max_new_tokens: int | None = None  # wins over max_length when both are given
    min_length: int = 0  # prompt included; needs an eos_token_id
    min_new_tokens: int | None = None  # wins over min_length; needs an eos_token_id
    do_sample: bool = False
    num_beams: int = 1
    temperature: float = 1.0
    top_k: int | None = 50  # sampling only; 0 or None: off
    top_p: float = 1.0  # sampling only; 1.0: off
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    length_penalty: float = 1.0  # beam search: score = sum log p / generated_len ** length_penalty
    early_stopping: bool | str = False  # beam search: True, False or "never"
    num_return_sequences: int = 1
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None  # accepted for compatibility; a decoder-only prompt has it
    seed: int = 0  # sampling: the same seed gives the same tokens

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def build(cls, defaults: Mapping[str, Any] | None, kwargs: Mapping[str, Any]
              ) -> "GenerationConfig":
        """kwargs over the model's defaults over Hugging Face's; unknown names raise TypeError."""
        unknown = sorted(set(kwargs) - set(cls.names()))
        if unknown:
            raise TypeError(f"generate() got unknown option(s) {unknown}; the options are "
                            f"{cls.names()} and attention_mask, streamer")
        values = {k: v for k, v in dict(defaults or {}).items() if k in cls.names()}
        values.update(kwargs)
        if isinstance(values.get("eos_token_id"), (list, tuple, np.ndarray)):
            values["eos_token_id"] = tuple(int(e) for e in values["eos_token_id"])
        config = cls(**values)
        config.validate()
        return config

    @property
    def eos_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        if isinstance(self.eos_token_id, tuple):
            return self.eos_token_id
        return (int(self.eos_token_id),)

    @property
    def pad_id(self) -> int | None:
        """Hugging Face: pad_token_id, else the first eos id when there is one."""
        if self.pad_token_id is not None:
            return int(self.pad_token_id)
        return self.eos_ids[0] if self.eos_ids else None

    def validate(self) -> None:
        def fail(name, allowed):
            raise GenerationError(f"{name}={getattr(self, name)!r} is invalid: {allowed}")

        def is_int(v):
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        def is_num(v):
            return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)

        for name in ("max_length", "max_new_tokens"):
            v = getattr(self, name)
            if v is not None and (not is_int(v) or v < 1):
                fail(name, "must be a positive integer or None")
        for name in ("min_length", "no_repeat_ngram_size", "seed"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 0:
                fail(name, "must be a non-negative integer")
        if self.min_new_tokens is not None and (not is_int(self.min_new_tokens)
                                                or self.min_new_tokens < 0):
            fail("min_new_tokens", "must be a non-negative integer or None")
        if not is_int(self.num_beams) or self.num_beams < 1:
            fail("num_beams", "must be an integer >= 1 (1: greedy or sampling)")
        if not is_int(self.num_return_sequences) or self.num_return_sequences < 1:
            fail("num_return_sequences", "must be an integer >= 1")
        if (self.num_beams > 1 or not self.do_sample) \
                and self.num_return_sequences > self.num_beams:
            fail("num_return_sequences",
                 f"must not exceed num_beams={self.num_beams} (beam search keeps num_beams "
                 "hypotheses per prompt, greedy decoding one); raise num_beams, or sample "
                 "independently with num_beams=1 and do_sample=True")
        if not isinstance(self.do_sample, (bool, np.bool_)):
            fail("do_sample", "must be True or False")
        if not is_num(self.temperature) or not self.temperature > 0:
            fail("temperature", "must be a positive number (for greedy decoding use "
                 "do_sample=False, not temperature=0)")
        if self.top_k is not None and (not is_int(self.top_k) or self.top_k < 0):
            fail("top_k", "must be a non-negative integer (0 or None: off)")
        if not is_num(self.top_p) or not 0.0 < self.top_p <= 1.0:
            fail("top_p", "must be in (0, 1] (1.0: off)")
        if not is_num(self.repetition_penalty) or not self.repetition_penalty > 0:
            fail("repetition_penalty", "must be a positive number (1.0: off)")
        if not is_num(self.length_penalty):
            fail("length_penalty", "must be a number (1.0: average log-probability per token)")
        if not (isinstance(self.early_stopping, (bool, np.bool_))
                or self.early_stopping == "never"):
            fail("early_stopping", "must be True, False or 'never'")
        for e in self.eos_ids:
            if not is_int(e) or e < 0:
                fail("eos_token_id", "must be a non-negative token id, a list of them, or None")
        if self.pad_token_id is not None and (not is_int(self.pad_token_id)
                                              or self.pad_token_id < 0):
            fail("pad_token_id", "must be a non-negative token id or None")


def load_generation_defaults(folder) -> dict[str, Any]:
    """The generation defaults a Hugging Face folder declares (generation_config.json, else
    config.json's eos/pad/bos ids), restricted to the options gptjax knows."""
    folder = pathlib.Path(folder)
    for name in ("generation_config.json", "config.json"):
        path = folder / name
        if path.is_file():
            data = json.loads(path.read_text())
            return {k: v for k, v in data.items()
                    if k in GenerationConfig.names() and v is not None}
    return {}


def model_defaults(model) -> dict[str, Any]:
    """The model's own generation defaults: `model.generation_config` (mapping or object)."""
    gc = getattr(model, "generation_config", None)
    if gc is None:
        return {}
    if not isinstance(gc, Mapping):
        gc = {k: getattr(gc, k) for k in GenerationConfig.names() if hasattr(gc, k)}
    return {k: v for k, v in gc.items() if k in GenerationConfig.names() and v is not None}


def _as_rows(input_ids) -> list[np.ndarray] | np.ndarray:
    """A [batch, len] integer array, or a list of 1-D rows when the batch is ragged."""
    if hasattr(input_ids, "detach"):  # a torch tensor
        input_ids = input_ids.detach().cpu().numpy()
    if isinstance(input_ids, (list, tuple)):
        if len(input_ids) == 0:
            raise GenerationError("input_ids is empty: give at least one prompt token")
        if all(isinstance(r, (list, tuple, np.ndarray)) for r in input_ids):
            rows = [np.asarray(r) for r in input_ids]
            if len({r.shape for r in rows}) == 1:
                return np.stack(rows)
            return rows
        if any(isinstance(r, (list, tuple, np.ndarray)) for r in input_ids):
            raise GenerationError("input_ids mixes token ids and lists of token ids; pass one "
                                  "prompt (a list of ids) or a batch (a list of lists)")
    arr = np.asarray(input_ids)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2:
        raise GenerationError(f"input_ids has shape {arr.shape}; expected [len] or [batch, len]")
    return arr


def prepare_inputs(input_ids, attention_mask, config: GenerationConfig, vocab_size: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 [batch, len], mask bool [batch, len]), left-padded; raises on bad input."""
    rows = _as_rows(input_ids)
    if isinstance(rows, list):  # ragged lists: left-pad them ourselves
        if attention_mask is not None:
            raise GenerationError("input_ids rows have different lengths and an attention_mask "
                                  "was given; pass equal-length (left-padded) rows with it, or "
                                  "ragged rows without it")
        width = max(len(r) for r in rows)
        fill = config.pad_id if config.pad_id is not None else 0
        ids = np.full((len(rows), width), fill, np.int64)
        mask = np.zeros((len(rows), width), bool)
        for i, r in enumerate(rows):
            if r.ndim != 1:
                raise GenerationError(f"input_ids row {i} has shape {r.shape}; expected a flat "
                                      "list of token ids")
            if len(r):
                ids[i, width - len(r):] = r
                mask[i, width - len(r):] = True
        rows, attention_mask = ids, mask
    ids = rows
    if ids.size == 0 or ids.shape[1] == 0:
        raise GenerationError("the prompt is empty: give at least one token (GPT-2 prompts may "
                              "start with <|endoftext|>)")
    if not np.issubdtype(ids.dtype, np.integer):
        raise GenerationError(f"input_ids must be integer token ids, got dtype {ids.dtype}")
    bad = (ids < 0) | (ids >= vocab_size)
    if bad.any():
        b, t = map(int, np.argwhere(bad)[0])
        raise GenerationError(f"input_ids[{b}, {t}]={int(ids[b, t])} is outside the model's "
                              f"vocabulary [0, {vocab_size}); was it made by another tokenizer?")
    if attention_mask is None:
        # As transformers: infer padding from pad_token_id when it is not also the eos id.
        pad = config.pad_token_id
        if pad is not None and pad not in config.eos_ids and (ids == pad).any():
            mask = ids != pad
        else:
            mask = np.ones(ids.shape, bool)
    else:
        if hasattr(attention_mask, "detach"):
            attention_mask = attention_mask.detach().cpu().numpy()
        mask = np.asarray(attention_mask)
        if mask.ndim == 1:
            mask = mask[None]
        if mask.shape != ids.shape:
            raise GenerationError(f"attention_mask has shape {mask.shape} but input_ids has "
                                  f"{ids.shape}; they must match")
        if not np.isin(mask, (0, 1)).all():
            raise GenerationError("attention_mask must hold only 0 (padding) and 1 (token)")
        mask = mask.astype(bool)
    empty = ~mask.any(axis=1)
    if empty.any():
        raise GenerationError(f"prompt {int(np.argmax(empty))} is empty (its attention_mask is "
                              "all 0); every prompt needs at least one token")
    if (mask[:, :-1] & ~mask[:, 1:]).any():
        raise GenerationError("attention_mask has padding after a token (right padding); a "
                              "decoder-only model needs left padding: put the pad tokens first")
    return ids.astype(np.int32), mask


def bucket(n: int, minimum: int = 8) -> int:
    """Static prompt width for n tokens: a power of two up to 256, then a multiple of 256, so
    that prompts of similar lengths share one compiled program (and the prefill of a short
    prompt stays short: it costs as much as `width` decode steps)."""
    if n <= 256:
        return max(minimum, 1 << (max(n, 1) - 1).bit_length())
    return -(-n // 256) * 256


def cache_bucket(n: int, step: int = 32) -> int:
    """Static KV-cache length for n slots: a multiple of `step`. Finer than `bucket` because every
    decode step reads (and beam search copies) the whole cache."""
    return max(step, -(-n // step) * step)


def resolve_lengths(config: GenerationConfig, prompt_len: int, model_cfg) -> tuple[int, int]:
    """(max_length, min_length) as Hugging Face counts them (the whole padded prompt included)."""
    if config.max_new_tokens is not None:
        max_length = prompt_len + config.max_new_tokens
    else:
        max_length = config.max_length if config.max_length is not None else 20
        if prompt_len >= max_length:
            raise GenerationError(
                f"the prompt has {prompt_len} tokens, already at or past max_length={max_length} "
                "(which counts the prompt); raise max_length or set max_new_tokens")
    limit = positions.get(model_cfg.position).max_positions(model_cfg)
    if limit is not None and max_length > limit:
        where = ("the prompt alone" if prompt_len >= limit else
                 f"the prompt ({prompt_len} tokens) plus the new tokens")
        raise GenerationError(
            f"{where} would need {max_length} positions but the model has {limit} "
            "(model.max_len); shorten the prompt or lower max_length / max_new_tokens")
    if config.min_new_tokens is not None:
        min_length = prompt_len + config.min_new_tokens
    else:
        min_length = config.min_length
    return max_length, min_length
