"""Fine-tuning methods: which parameters a run trains, as a registry over the finetune section.

Each method maps its config fields to the train state's `trainable` pattern (a regular
expression over parameter paths, gptjax/training/state.py): the optimizer state covers the
parameters it matches and the step differentiates those alone. LoRA's adapters themselves are
built by the model (gptjax/model/lora.py) from the model config's lora_* fields, which the
Config fills from this section.

A LoRA run's checkpoints hold the adapters (with optimizer state, step and RNG), never another
copy of the base: the frozen base is read again from train.init_from when the run resumes or is
loaded. The other methods keep every parameter in their checkpoints.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import numpy as np
from flax import nnx

from gptjax.config import Config, ConfigError
from gptjax.interop import hf
from gptjax.model import split
from gptjax.training.state import partition

METHODS: dict[str, Callable[[Config], str | None]] = {}  # name -> config -> trainable pattern


def register(name: str):
    """Add a method: fn(config) -> the trainable pattern (None: every parameter)."""
    def add(fn):
        METHODS[name] = fn
        return fn
    return add


@register("full")
def full(cfg: Config) -> str | None:
    """Every parameter, or train.trainable's pattern (today's partial training)."""
    return cfg.train.trainable


@register("lora")
def lora(cfg: Config) -> str:
    """The adapters alone ('blocks/0/attn/query/lora_a', '.../lora_b')."""
    return r"/lora_[ab]$"


@register("freeze")
def freeze(cfg: Config) -> str | None:
    """Every parameter but the first finetune.freeze_layers blocks' (and the token and position
    embeddings' with finetune.freeze_embeddings; a tied LM head is the token embedding)."""
    ft, n = cfg.finetune, cfg.model.num_layers
    if ft.freeze_layers > n:
        raise ConfigError(f"finetune.freeze_layers={ft.freeze_layers} is invalid: the model has "
                          f"model.num_layers={n} blocks; choose 0..{n}")
    frozen = [f"blocks/({'|'.join(map(str, range(ft.freeze_layers)))})/"] \
        if ft.freeze_layers else []
    if ft.freeze_embeddings:
        frozen += ["wte/", "wpe/"]
    return f"^(?!({'|'.join(frozen)}))" if frozen else None


@register("bitfit")
def bitfit(cfg: Config) -> str:
    """Biases and LayerNorm parameters (BitFit, Ben Zaken et al. 2022, with the norms' scales)."""
    return r"/bias$|(^|/)ln_(1|2|f)/scale$"


def trainable(cfg: Config) -> str | None:
    """The train state's trainable pattern for cfg's fine-tuning method (None: all)."""
    if cfg.finetune.method not in METHODS:
        raise ConfigError(f"finetune.method={cfg.finetune.method!r} is invalid: choose one of "
                          f"{sorted(METHODS)}")
    return METHODS[cfg.finetune.method](cfg)


def check(cfg: Config) -> None:
    """ConfigError for a method that cannot run with this (architecture-adopted) config."""
    trainable(cfg)
    if adapters_only(cfg) and not cfg.train.init_from:
        raise ConfigError("finetune.method='lora' adapts a pretrained model, and its checkpoints "
                          "hold the adapters alone: set train.init_from=PATH (or --init_from)")


def adapters_only(cfg: Config) -> bool:
    """Whether checkpoints hold the trainable parameters alone (LoRA: the base is init_from)."""
    return cfg.finetune.method == "lora"


def saved_state(cfg: Config, state):
    """What a checkpoint holds of `state` (a TrainState, or its abstract twin)."""
    if not adapters_only(cfg):
        return state
    return state.replace(params=partition(state.params, state.trainable)[0])


def with_base(cfg: Config, state, target):
    """`state` (adapters and optimizer state) with the frozen base read from train.init_from,
    laid out as `target` (the full abstract state, ShapeDtypeStructs with shardings) says."""
    if not adapters_only(cfg):
        return state
    frozen = partition(target.params, target.trainable)[1]
    adapters = partition(state.params, target.trainable)[0]
    return state.replace(params=nnx.merge_state(adapters, load_base(cfg, frozen)))


def load_base(cfg: Config, target):
    """train.init_from's weights at the paths of `target` (ShapeDtypeStructs with shardings,
    a part or all of the run's params), in its dtypes; each process keeps its own shards."""
    m, path = cfg.model, cfg.train.init_from
    try:
        model = hf.from_pretrained(path, dtype=m.dtype, param_dtype=m.param_dtype,
                                   attention=m.attention, remat=m.remat, dropout=m.dropout,
                                   vocab_multiple=m.vocab_multiple)
    except (OSError, ValueError) as e:
        raise ConfigError(f"train.init_from={path!r} no longer loads ({e}); this run's frozen "
                          "weights are read from it: put it back where it was") from None
    _, params = split(model)
    source = {jax.tree_util.keystr(k): x for k, x in jax.tree_util.tree_leaves_with_path(params)}
    paths, treedef = jax.tree_util.tree_flatten_with_path(target)

    def place(key, want):
        name = jax.tree_util.keystr(key)
        if name not in source:
            raise ConfigError(f"train.init_from={path!r} has no parameter {name}: its "
                              "parameters do not have this run's model structure")
        x = np.asarray(source[name]).astype(want.dtype)
        if x.shape != want.shape:
            raise ConfigError(f"train.init_from={path!r}: parameter {name} has shape {x.shape} "
                              f"there, {want.shape} in this run; restore with the model it "
                              "had, or train in another --workdir")
        return jax.make_array_from_callback(x.shape, want.sharding, lambda index: x[index])

    return jax.tree_util.tree_unflatten(treedef, [place(k, w) for k, w in paths])


def run_info(cfg: Config, abstract_state, tx) -> dict:
    """What run_info.json says: the method and its fields, total and trainable parameters,
    optimizer-state bytes, and those of full fine-tuning of the same model for comparison."""
    params = abstract_state.params
    count = lambda tree: sum(math.prod(x.shape) for x in jax.tree.leaves(tree))  # noqa: E731
    nbytes = lambda tree: sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize  # noqa: E731
                              for x in jax.tree.leaves(tree))
    chosen, frozen = partition(params, abstract_state.trainable)
    base = frozen if adapters_only(cfg) else params  # what full fine-tuning would train
    ft = cfg.finetune
    fields = {"full": (), "bitfit": ()}.get(ft.method, type(ft).FIELDS.get(ft.method, ()))
    return {"method": ft.method, **{name: getattr(ft, name) for name in fields},
            "trainable_pattern": abstract_state.trainable,
            "total_params": count(params), "trainable_params": count(chosen),
            "trainable_fraction": count(chosen) / max(count(params), 1),
            "optimizer_state_bytes": nbytes(abstract_state.opt_state),
            "full_finetune_optimizer_state_bytes": nbytes(jax.eval_shape(tx.init, base)),
            "checkpoint_params": "adapters" if adapters_only(cfg) else "all"}
