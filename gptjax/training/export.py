"""Export a model folder (a gptjax run's workdir, or a Hugging Face GPT-2 folder) as a Hugging Face
GPT-2 folder: config.json, model.safetensors (the true vocabulary size), generation_config.json and
the tokenizer files as the source had them.

The weights go through GPT.from_pretrained and save_pretrained, so whatever a run's workdir loads
as (a LoRA run: its merged model) is what is exported. The architecture is checked against GPT-2
from the config files alone, before any weight is read or any file written.
"""

from __future__ import annotations

import json
import pathlib
import shutil

from absl import logging

from gptjax.config import ConfigError, ModelConfig
from gptjax.interop import hf
from gptjax.model.gpt import GPT
from gptjax.tokenizers import GPTJAX_FILE, Tokenizer
from gptjax.training import checkpoint

GENERATION = "generation_config.json"
# Tokenizer files a Hugging Face folder (or a run's workdir/tokenizer) may hold; copied verbatim.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json", GPTJAX_FILE)
# Everything an export writes: --overwrite removes these first (stale ones would shadow the new).
WRITTEN = (hf.CONFIG, hf.WEIGHTS, hf.WEIGHTS_INDEX, GENERATION) + TOKENIZER_FILES
NO_HF_TOKENIZER = ("transformers cannot load this tokenizer: it is gptjax's {kind}-level one "
                   f"({GPTJAX_FILE}); gptjax reads it with Tokenizer.from_pretrained(DIR), and "
                   "transformers users need their own tokenizer for these ids")


def source_model_config(folder: pathlib.Path) -> ModelConfig:
    """The model config of a run's workdir or a Hugging Face GPT-2 folder, from config files."""
    if checkpoint.is_run(folder):
        return checkpoint.run_config(folder).model
    config = folder / hf.CONFIG
    if config.is_file():
        data = json.loads(config.read_text())
        if isinstance(data, dict) and "model" in data and "train" in data:
            raise FileNotFoundError(f"{folder} is a gptjax run with no checkpoints/ yet: train "
                                    "it until its first checkpoint, then export")
    return hf.read_config(folder)  # raises, naming what is missing, for any other folder


def check_outdir(outdir: pathlib.Path, source: pathlib.Path, overwrite: bool) -> None:
    """Refuse an outdir that is a file, the source itself, or not empty (without --overwrite)."""
    if outdir.exists() and not outdir.is_dir():
        raise NotADirectoryError(f"--outdir={outdir} is a file; give a folder")
    if outdir.resolve() in (source.resolve(), (source / "tokenizer").resolve()):
        raise ValueError(f"--outdir={outdir} is the source folder; export into another folder")
    if outdir.is_dir() and any(outdir.iterdir()) and not overwrite:
        raise FileExistsError(f"--outdir={outdir} is not empty; choose an empty or new folder, "
                              "or pass --overwrite to replace the model files in it")


def tokenizer_folder(source: pathlib.Path) -> pathlib.Path:
    """Where the source keeps its tokenizer: a run's workdir/tokenizer, else the folder itself."""
    nested = source / "tokenizer"
    return nested if checkpoint.is_run(source) and nested.is_dir() else source


def read_tokenizer(source: pathlib.Path) -> tuple[Tokenizer | None, list[pathlib.Path]]:
    """The source's tokenizer and its files (None, [] when it has none)."""
    folder = tokenizer_folder(source)
    files = [folder / n for n in TOKENIZER_FILES if (folder / n).is_file()]
    if not files:
        logging.warning("%s holds no tokenizer files, so the export has none: copy the model's "
                        "tokenizer files into the export folder", folder)
        return None, []
    return Tokenizer.from_pretrained(folder), files  # raises if the files do not make one


def special_ids(tokenizer: Tokenizer | None) -> dict[str, int]:
    """bos/eos/pad ids of the tokenizer, under transformers' config names (the set ones only)."""
    if tokenizer is None:
        return {}
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    return {k: v for k, v in ids.items() if v is not None}


def write_generation_config(source: pathlib.Path, outdir: pathlib.Path, ids: dict) -> None:
    """The source's generation_config.json as it was; else one naming the tokenizer's ids."""
    if (source / GENERATION).is_file():
        shutil.copyfile(source / GENERATION, outdir / GENERATION)
    elif ids:
        (outdir / GENERATION).write_text(json.dumps(ids, indent=2, sort_keys=True) + "\n")


def export(checkpoint_path, outdir, overwrite: bool = False) -> dict:
    """Write the model at `checkpoint_path` as a Hugging Face GPT-2 folder in `outdir`.

    Returns a summary: outdir, files written, vocab_size, tokenizer kind (None: no tokenizer).
    Raises ValueError naming the model field GPT-2 cannot hold, before anything is written.
    """
    source = hf.resolve_folder(checkpoint_path)
    outdir = pathlib.Path(outdir).expanduser()
    check_outdir(outdir, source, overwrite)
    cfg = source_model_config(source)
    hf.check_representable(cfg)
    model = GPT.from_pretrained(source)
    if not isinstance(model, GPT):
        raise ConfigError(f"{source} does not load as a gptjax GPT; nothing to export")
    tokenizer, files = read_tokenizer(source)
    outdir.mkdir(parents=True, exist_ok=True)
    for name in WRITTEN:
        (outdir / name).unlink(missing_ok=True)
    for path in files:
        shutil.copyfile(path, outdir / path.name)
    if tokenizer is not None and tokenizer.kind != "bpe":
        logging.warning("%s: %s", outdir, NO_HF_TOKENIZER.format(kind=tokenizer.kind))
    ids = special_ids(tokenizer)
    hf.save_gpt(model, outdir, **ids)  # GPT.save_pretrained, with the tokenizer's special ids
    write_generation_config(source, outdir, ids)
    return {"outdir": str(outdir), "files": sorted(p.name for p in outdir.iterdir()),
            "vocab_size": model.cfg.vocab_size, "tokenizer": tokenizer and tokenizer.kind}
