"""Fine-tuning's start: train.init_from names a pretrained model (a Hugging Face GPT-2 folder or
hub id, or a gptjax run) whose architecture, tokenizer and weights a new run takes; then it trains
as any run does. Only the start differs: a run resuming its own checkpoint loads those weights."""

from __future__ import annotations

import dataclasses

from absl import logging

from gptjax.config import Config, ConfigError, ModelConfig
from gptjax.interop import hf
from gptjax.training import checkpoint, finetune

# The fields that make the pretrained weights mean what they meant (shapes, and the function
# they compute); the run keeps its own dropout, kernel, dtypes and remat.
ARCHITECTURE = ("vocab_size", "max_len", "num_layers", "num_heads", "num_kv_heads", "d_model",
                "d_ff", "position", "window", "tie_embeddings", "layer_norm_epsilon",
                "rope_theta")


def source_config(path: str) -> tuple[str, ModelConfig]:
    """(its folder, the model config) of a pretrained source, from its config file alone."""
    try:
        folder = hf.resolve_folder(path)
    except (FileNotFoundError, NotADirectoryError) as e:
        raise ConfigError(f"train.init_from={path!r}: {e}") from None
    if checkpoint.is_run(folder):
        return str(folder), checkpoint.run_config(folder).model
    if hf.is_hf_folder(folder):
        try:
            return str(folder), hf.read_config(folder)
        except ValueError as e:
            raise ConfigError(f"train.init_from={path!r}: {e}") from None
    raise ConfigError(f"train.init_from={path!r} is neither a Hugging Face GPT-2 folder "
                      f"({hf.CONFIG} + {hf.WEIGHTS}) nor a gptjax run (config.json + "
                      "checkpoints/)")


def adopt(cfg: Config) -> Config:
    """cfg with train.init_from's architecture, data.tokenizer='init_from' made its folder, and
    data.seq_len capped at its context (one log line); warns of a warm-up that does not fit.

    Reads config files only, so every mismatch fails before data or compile.
    """
    path = cfg.train.init_from
    if not path:
        if cfg.data.tokenizer == "init_from":
            raise ConfigError("data.tokenizer='init_from' takes the tokenizer of "
                              "train.init_from, which is not set; set train.init_from=PATH "
                              "or name a tokenizer")
        return cfg
    folder, source = source_config(path)
    if cfg.data.tokenizer in ("char", "byte"):
        raise ConfigError(
            f"data.tokenizer={cfg.data.tokenizer!r} has its own vocabulary, so its ids would not "
            f"be the ones train.init_from={path!r} learned; set data.tokenizer='init_from' to "
            "use its tokenizer")
    changed = {f: getattr(source, f) for f in ARCHITECTURE
               if getattr(cfg.model, f) != getattr(source, f)}
    if changed:
        logging.info("train.init_from=%s: model %s", path,
                     ", ".join(f"{k}={v!r}" for k, v in changed.items()))
    data = cfg.data
    if data.tokenizer == "init_from":
        data = dataclasses.replace(data, tokenizer=folder)
    if data.seq_len > source.max_len:  # a config written for GPT-2's 1024 on a smaller source
        logging.info("train.init_from=%s: data.seq_len=%d capped at the model's context, "
                     "max_len=%d", path, data.seq_len, source.max_len)
        data = dataclasses.replace(data, seq_len=source.max_len)
    warn_warmup(cfg.optim.warmup_steps, cfg.train.num_steps)
    try:
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **changed),
                                   data=data)
    except ConfigError as e:
        raise ConfigError(f"with train.init_from={path!r}'s architecture: {e}") from None


def warn_warmup(warmup_steps: int, num_steps: int) -> None:
    """One warning when the warm-up takes more than half the run: its lr stays low throughout."""
    if 2 * warmup_steps <= num_steps:
        return
    if warmup_steps >= num_steps:
        fate = "never leaves its warm-up, so the learning rate never reaches optim.lr"
    else:
        fate = f"spends {warmup_steps / num_steps:.0%} of its steps warming up"
    logging.warning("optim.warmup_steps=%d with train.num_steps=%d: the run %s; lower "
                    "optim.warmup_steps (a few %% of the steps is usual)", warmup_steps,
                    num_steps, fate)


def load_sharded(cfg: Config, target):
    """train.init_from's weights as the run's params (cfg.model's dtypes), laid out as
    `target` (the params' ShapeDtypeStructs with shardings) says; each process reads the files
    and keeps its own shards."""
    return finetune.load_base(cfg, target)
