"""Model folder formats beside Hugging Face GPT-2: a registry that `GPT.from_pretrained` asks.

A format is `register_format(name, detect, load)`: detect(folder) -> bool, load(folder,
**model_overrides) -> GPT. gptjax's own run workdirs register from gptjax.training.checkpoint.
"""

from __future__ import annotations

import pathlib
from typing import Callable

# name -> (detect(folder) -> bool, load(folder, **overrides) -> GPT)
FORMATS: dict[str, tuple[Callable[[pathlib.Path], bool], Callable[..., object]]] = {}


def register_format(name: str, detect: Callable[[pathlib.Path], bool],
                    load: Callable[..., object]) -> None:
    """Let `GPT.from_pretrained` read folders for which `detect(folder)` is true."""
    FORMATS[name] = (detect, load)
