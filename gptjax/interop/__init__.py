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


def _is_gptjax_run(folder: pathlib.Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "checkpoints").is_dir()


def _load_gptjax_run(folder: pathlib.Path, **overrides):
    from gptjax.training.checkpoint import load_model

    return load_model(folder, **overrides)


# A training run's workdir (config.json + orbax checkpoints/) loads its latest checkpoint.
register_format("gptjax", _is_gptjax_run, _load_gptjax_run)

__all__ = ["FORMATS", "register_format"]
