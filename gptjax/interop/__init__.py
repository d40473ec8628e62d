"""Model folders in and out: Hugging Face GPT-2 (gptjax.interop.hf) and other registered formats.

`GPT.from_pretrained(folder)` calls `hf.load_gpt`, which reads a Hugging Face GPT-2 folder itself
and otherwise asks the formats registered here, in order, whether the folder is theirs. A new
format (gptjax's own orbax checkpoints) is one `register_format` call; keep its import light and
import heavy modules inside `load`.
"""

from __future__ import annotations

import pathlib
from typing import Callable

# name -> (detect(folder) -> bool, load(folder, **kwargs) -> GPT)
FORMATS: dict[str, tuple[Callable[[pathlib.Path], bool], Callable[..., object]]] = {}


def register_format(name: str, detect: Callable[[pathlib.Path], bool],
                    load: Callable[..., object]) -> None:
    """Let `GPT.from_pretrained` read folders for which `detect(folder)` is true."""
    FORMATS[name] = (detect, load)


__all__ = ["FORMATS", "register_format"]
