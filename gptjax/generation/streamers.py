"""Streaming generated text to a terminal while the compiled decode loop runs."""

from __future__ import annotations

import sys


class TextStreamer:
    """Prints text as tokens arrive, like transformers' TextStreamer (prompt not repeated).

    `generate(..., streamer=TextStreamer(tokenizer))`: put() receives each new token; text is
    printed only up to the last complete character, so multi-byte characters never print broken.
    """

    def __init__(self, tokenizer, file=None, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.file = file if file is not None else sys.stdout
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.printed = 0

    def put(self, tokens) -> None:
        self.ids.extend(int(t) for t in list(tokens)[:1])
        text = self.tokenizer.decode(self.ids, skip_special_tokens=self.skip_special_tokens)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its next bytes
            return
        self._write(text[self.printed:])
        self.printed = len(text)

    def end(self) -> None:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=self.skip_special_tokens)
        self._write(text[self.printed:] + "\n")
        self.ids, self.printed = [], 0

    def _write(self, text: str) -> None:
        if text:
            self.file.write(text)
            self.file.flush()
