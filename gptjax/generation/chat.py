"""A dialogue with a GPT, one reply at a time, in the transcript a dialogue fine-tune learns
(data.task='dialogue', gptjax.data.tasks), the oldest turns dropped when the context is full
(the chat command's library half).

    chat = Chat(model, tokenizer, system="You are a helpful assistant.")
    chat.reply("Hello!")       # the assistant's answer; chat.messages keeps the transcript
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gptjax.generation.config import GenerationConfig, GenerationError
from gptjax.generation.text import defaults_for, generate_text

# Roles of a dialogue and how the transcript names them.
SPEAKERS = {"system": "System", "user": "User", "assistant": "Assistant"}

# Sampling, as chat front-ends default to; greedy decoding repeats itself in open dialogue.
CHAT_DEFAULTS = dict(do_sample=True, temperature=0.8, top_p=0.95, top_k=0)
REPLY_TOKENS = 64  # the default reply budget, capped at half the model's context


def reply_budget(max_len: int, max_new_tokens: int | None = None) -> int:
    """Tokens kept for a reply: max_new_tokens if given, else min(64, half the context); it must
    leave the message room in the context."""
    budget = min(REPLY_TOKENS, max_len // 2) if max_new_tokens is None else max_new_tokens
    if not isinstance(budget, int) or not 0 < budget < max_len:
        raise GenerationError(f"max_new_tokens={budget!r} leaves no room for a message in the "
                              f"model's {max_len}-token context; pass a reply budget in "
                              f"1..{max_len - 1} (e.g. {max(1, max_len // 2)})")
    return budget


def dialogue_segments(messages: Sequence[Mapping[str, Any]], where: str = "messages",
                      reply: bool = False) -> list[tuple[str, bool]]:
    """The transcript as (text, written by the model) segments, one 'Speaker: text' line per
    message: the assistant's text is what a fine-tune scores. reply=True ends with an open
    'Assistant:' turn, the prompt for the next reply."""
    segments = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, Mapping) else None
        if role not in SPEAKERS:
            raise ValueError(f"{where}: message {i} has role {role!r}; allowed: "
                             f"{list(SPEAKERS)}")
        text = message.get("content")
        if not isinstance(text, str):
            raise ValueError(f"{where}: message {i} needs a string 'content'")
        if role == "assistant":
            segments += [("Assistant:", False), (f" {text.strip()}\n", True)]
        else:
            segments.append((f"{SPEAKERS[role]}: {text.strip()}\n", False))
    if reply:
        segments.append(("Assistant:", False))
    return segments


def encode_segments(segments: Sequence[tuple[str, bool]], tokenizer) -> tuple[np.ndarray,
                                                                             np.ndarray]:
    """(ids, written) of segments as training sees them (gptjax.data.tasks) and chat prompts
    with them: each segment encoded on its own, and a written one followed by the tokenizer's
    eos when it has one (a fine-tuned model learns to stop)."""
    ids: list[int] = []
    written: list[bool] = []
    eos = tokenizer.eos_token_id
    for text, by_model in segments:
        part = tokenizer.encode(text) + ([eos] if by_model and eos is not None else [])
        ids += part
        written += [by_model] * len(part)
    return np.asarray(ids, np.int64), np.asarray(written, bool)


class Chat:
    """Messages [{'role', 'content'}] and the model that answers them."""

    def __init__(self, model, tokenizer, *, system: str | None = None, **options: Any):
        self.model, self.tokenizer = model, tokenizer
        self.system = [{"role": "system", "content": system}] if system else []
        self.messages: list[dict[str, str]] = []
        self.options = {**defaults_for(model, tokenizer), **CHAT_DEFAULTS, **options}
        self.options["max_new_tokens"] = reply_budget(model.cfg.max_len,
                                                      options.get("max_new_tokens"))
        # A reply is one transcript line: it ends at a newline as well as at eos.
        eos = self.options.get("eos_token_id")
        newline = tokenizer.encode("\n")
        stops = ([] if eos is None else np.atleast_1d(eos).tolist()) + (
            newline if len(newline) == 1 else [])
        if not stops:
            raise GenerationError("this tokenizer has neither an eos token nor a one-token "
                                  "newline, so a reply could not end; pass eos_token_id")
        self.options["eos_token_id"] = stops
        GenerationConfig.build({}, self.options)  # a bad option fails now, not at the first reply

    def _segments(self, messages) -> list[tuple[str, bool]]:
        return dialogue_segments(self.system + messages, "chat", reply=True)

    def prompt(self, messages) -> str:
        """The transcript of `messages` ending with an open 'Assistant:' turn."""
        return "".join(text for text, _ in self._segments(messages))

    def prompt_ids(self, messages) -> list[int]:
        """The prompt's token ids exactly as a dialogue fine-tune saw the transcript: segment
        by segment, eos after each earlier assistant turn."""
        return encode_segments(self._segments(messages), self.tokenizer)[0].tolist()

    def _fitting(self, messages) -> tuple[list[dict[str, str]], list[int]]:
        """The newest messages whose prompt leaves room for max_new_tokens in the context, and
        that prompt's ids."""
        room = self.model.cfg.max_len - self.options["max_new_tokens"]
        while True:
            ids = self.prompt_ids(messages)
            if len(ids) <= room:
                return messages, ids
            if len(messages) == 1:
                raise GenerationError(
                    f"the message is too long for the model's context ({self.model.cfg.max_len} "
                    f"tokens, {self.options['max_new_tokens']} of them kept for the reply); "
                    "shorten it or lower max_new_tokens")
            messages = messages[1:]  # the oldest turn goes first

    def reply(self, text: str) -> str:
        """The assistant's answer to `text`; both join the transcript."""
        messages, ids = self._fitting(self.messages + [{"role": "user", "content": text}])
        result = generate_text(self.model, self.tokenizer, [ids], **self.options)[0]
        answer = result["new_text"].strip()
        self.messages = messages + [{"role": "assistant", "content": answer}]
        return answer

    def reset(self) -> None:
        self.messages = []
