"""Hugging Face GPT-2 checkpoints in and out: config.json + safetensors, no torch needed.

HF's GPT-2 stores its projections as Conv1D weights, [in, out] — the layout of nnx.Linear
kernels — and fuses the query, key and value projections into one c_attn of [d, 3d]. Only
lm_head is an nn.Linear ([vocab, d]), saved only when it is not tied to the token embedding.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from gptjax.config import ModelConfig
from gptjax.generation import GenerationConfig, load_generation_defaults
from gptjax.interop.formats import FORMATS
from gptjax.model.gpt import GPT, provide

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"  # sharded: {"weight_map": {key: file}}
TORCH_WEIGHTS = "pytorch_model.bin"
# Pickled weights (torch.load runs code they carry): recognised only to say how to convert them.
PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
CONVERT = ("load and re-save it as safetensors where transformers is installed: `from "
           "transformers import GPT2LMHeadModel; GPT2LMHeadModel.from_pretrained(DIR)"
           ".save_pretrained(DIR, safe_serialization=True)`")
PREFIX = "transformer."  # GPT2LMHeadModel's body; GPT2Model saves the same keys unprefixed
BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers older transformers saved
# All three are GELU's tanh approximation, the one gptjax's MLP computes.
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
# GPT2Config's defaults, used where a config.json leaves a key out (as transformers does).
HF_DEFAULTS = {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12,
               "n_head": 12, "n_inner": None, "activation_function": "gelu_new",
               "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1,
               "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True}
# Model fields a caller may change while loading: none of them changes what a weight means
# (vocab_multiple adds zero rows past the file's vocabulary).
OVERRIDABLE = ("dtype", "param_dtype", "attention", "remat", "dropout", "vocab_multiple")
GPT2_EOT = 50256  # <|endoftext|> in GPT-2's vocabulary

# How a Hugging Face tensor is made of gptjax parameters.
COPY, TRANSPOSE, CONCAT = "copy", "transpose", "concat"


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------

def config_from_hf(hf: Mapping[str, Any], source: str = CONFIG, **overrides) -> ModelConfig:
    """ModelConfig of a GPT-2 config.json; raises ValueError naming the key it cannot map."""
    hf = {**HF_DEFAULTS, **hf}
    if hf.get("model_type") != "gpt2":
        raise ValueError(f"{source}: model_type={hf.get('model_type')!r}; gptjax reads GPT-2 "
                         "checkpoints only (model_type 'gpt2')")
    if hf["activation_function"] not in TANH_GELUS:
        raise ValueError(f"{source}: activation_function={hf['activation_function']!r} is not "
                         f"GPT-2's tanh GELU; gptjax supports {list(TANH_GELUS)}")
    gpt2_attention = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                      "add_cross_attention": False}
    for key, gpt2_value in gpt2_attention.items():
        if key in hf and bool(hf[key]) != gpt2_value:
            raise ValueError(f"{source}: {key}={hf[key]!r} changes GPT-2's attention; gptjax "
                             f"supports only {key}={gpt2_value}")
    # reorder_and_upcast_attn only reorders the float32 arithmetic of the same function: accepted.
    dropouts = {hf[k] for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop")}
    if len(dropouts) > 1:
        logging.warning("%s: resid/embd/attn_pdrop differ (%s); gptjax uses one dropout rate, "
                        "resid_pdrop=%s", source, sorted(dropouts), hf["resid_pdrop"])
    unknown = sorted(set(overrides) - set(OVERRIDABLE))
    if unknown:
        raise ValueError(f"cannot override {unknown} when loading {source}: they would change "
                         f"the weights' shapes; allowed overrides: {list(OVERRIDABLE)}")
    fields = dict(vocab_size=hf["vocab_size"], max_len=hf["n_positions"],
                  num_layers=hf["n_layer"], num_heads=hf["n_head"], d_model=hf["n_embd"],
                  d_ff=hf["n_inner"] or 4 * hf["n_embd"], dropout=float(hf["resid_pdrop"]),
                  position="learned", tie_embeddings=bool(hf["tie_word_embeddings"]),
                  layer_norm_epsilon=float(hf["layer_norm_epsilon"]))
    try:
        return ModelConfig(**{**fields, **overrides})
    except ValueError as e:
        raise ValueError(f"{source}: the GPT-2 config maps to an invalid gptjax model: {e}") from e


def check_representable(cfg: ModelConfig) -> None:
    """Raise ValueError naming the field if `cfg` is not a GPT-2 architecture."""
    problems = {"position": (cfg.position == "learned", "GPT-2 has learned positions only"),
                "num_kv_heads": (cfg.num_kv_heads == cfg.num_heads,
                                 f"GPT-2 is multi-head attention: num_kv_heads must equal "
                                 f"num_heads={cfg.num_heads}"),
                "window": (cfg.window is None, "GPT-2 has no sliding-window attention")}
    for name, (ok, why) in problems.items():
        if not ok:
            raise ValueError(f"model.{name}={getattr(cfg, name)!r} cannot be saved as a Hugging "
                             f"Face GPT-2: {why}")


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """The config.json of a GPT2LMHeadModel with `cfg`'s shape."""
    check_representable(cfg)
    eot = GPT2_EOT if cfg.vocab_size > GPT2_EOT else None
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": cfg.vocab_size, "n_positions": cfg.max_len, "n_ctx": cfg.max_len,
            "n_embd": cfg.d_model, "n_layer": cfg.num_layers, "n_head": cfg.num_heads,
            "n_inner": cfg.d_ff, "activation_function": "gelu_new",
            "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
            "layer_norm_epsilon": cfg.layer_norm_epsilon, "initializer_range": 0.02,
            "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False, "add_cross_attention": False,
            "tie_word_embeddings": cfg.tie_embeddings, "use_cache": True,
            "bos_token_id": eot, "eos_token_id": eot, "dtype": "float32"}


# ---------------------------------------------------------------------------------------------
# Weights: one table, read in both directions
# ---------------------------------------------------------------------------------------------

def layout(cfg: ModelConfig) -> dict[str, tuple[tuple[tuple, ...], str]]:
    """HF tensor name (without 'transformer.') -> (gptjax parameter paths, how they combine)."""
    table = {"wte.weight": ((("wte", "embedding"),), COPY),
             "wpe.weight": ((("wpe", "embedding"),), COPY)}
    for i in range(cfg.num_layers):
        h, b = f"h.{i}.", ("blocks", i)
        for ln in ("ln_1", "ln_2"):
            table[h + ln + ".weight"] = ((b + (ln, "scale"),), COPY)
            table[h + ln + ".bias"] = ((b + (ln, "bias"),), COPY)
        for kind, name in (("weight", "kernel"), ("bias", "bias")):
            table[h + "attn.c_attn." + kind] = (
                tuple(b + ("attn", p, name) for p in ("query", "key", "value")), CONCAT)
            table[h + "attn.c_proj." + kind] = ((b + ("attn", "out", name),), COPY)
            table[h + "mlp.c_fc." + kind] = ((b + ("mlp", "fc", name),), COPY)
            table[h + "mlp.c_proj." + kind] = ((b + ("mlp", "proj", name),), COPY)
    table["ln_f.weight"] = ((("ln_f", "scale"),), COPY)
    table["ln_f.bias"] = ((("ln_f", "bias"),), COPY)
    if not cfg.tie_embeddings:
        table["lm_head.weight"] = ((("lm_head", "kernel"),), TRANSPOSE)
    return table


def _hf_name(name: str) -> str:
    return name if name.startswith("lm_head.") else PREFIX + name


def _hf_shape(how: str, shapes: list[tuple]) -> tuple:
    if how == TRANSPOSE:
        return tuple(reversed(shapes[0]))
    if how == CONCAT:  # c_attn: [d, q | k | v]
        return tuple(shapes[0][:-1]) + (sum(s[-1] for s in shapes),)
    return tuple(shapes[0])


def _to_hf(how: str, parts: list[np.ndarray]) -> np.ndarray:
    if how == TRANSPOSE:
        return parts[0].T
    if how == CONCAT:
        return np.concatenate(parts, axis=-1)
    return parts[0]


def _from_hf(how: str, tensor: np.ndarray, shapes: list[tuple]) -> list[np.ndarray]:
    if how == TRANSPOSE:
        return [tensor.T]
    if how == CONCAT:
        return np.split(tensor, np.cumsum([s[-1] for s in shapes])[:-1], axis=-1)
    return [tensor]


def _get(tree: Mapping, path: tuple):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict, path: tuple, value) -> None:
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


# Tensors with a row per token: a padded vocabulary's extra rows are gptjax's alone.
VOCAB_ROWS = ("wte.weight", "lm_head.weight")


def params_to_hf(model: GPT) -> dict[str, np.ndarray]:
    """HF tensor name -> contiguous float32 array, as GPT2LMHeadModel.save_pretrained names them
    (the vocabulary's true size: padded rows dropped)."""
    params = jax.device_get(nnx.state(model, nnx.Param).to_pure_dict())
    out = {}
    for name, (paths, how) in layout(model.cfg).items():
        tensor = _to_hf(how, [np.asarray(_get(params, p), np.float32) for p in paths])
        if name in VOCAB_ROWS:
            tensor = tensor[:model.cfg.vocab_size]
        out[_hf_name(name)] = np.ascontiguousarray(tensor)
    return out


def params_from_hf(cfg: ModelConfig, tensors: Mapping[str, np.ndarray], source: str) -> GPT:
    """A GPT with `cfg` holding the HF `tensors` (names without 'transformer.').

    Raises ValueError naming `source`, the tensor and both shapes on a missing tensor or a shape
    that does not match the config.
    """
    # Build the model abstractly (no random init, no memory), then fill in the real arrays.
    abstract = nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0)))
    graphdef, state, rest = nnx.split(abstract, nnx.Param, ...)
    shapes_tree = state.to_pure_dict()
    values = jax.tree.map(lambda x: None, shapes_tree)
    pdtype = jnp.dtype(cfg.param_dtype)
    for name, (paths, how) in layout(cfg).items():
        shapes = [tuple(_get(shapes_tree, p).shape) for p in paths]
        expected = _hf_shape(how, shapes)
        if name in VOCAB_ROWS:  # the file has the true vocabulary; padded rows start at zero
            expected = (cfg.vocab_size,) + expected[1:]
        if name not in tensors:
            raise ValueError(f"{source}: tensor {_hf_name(name)!r} is missing (expected shape "
                             f"{expected} for this config); is the file complete and does "
                             f"{CONFIG} describe it?")
        tensor = tensors[name]
        if tuple(tensor.shape) != expected:
            raise ValueError(f"{source}: tensor {_hf_name(name)!r} has shape "
                             f"{tuple(tensor.shape)} but {CONFIG} implies {expected} "
                             f"(n_embd={cfg.d_model}, n_layer={cfg.num_layers}, "
                             f"vocab_size={cfg.vocab_size}, n_positions={cfg.max_len})")
        if name in VOCAB_ROWS:
            tensor = np.pad(tensor, ((0, cfg.padded_vocab - cfg.vocab_size), (0, 0)))
        for path, part in zip(paths, _from_hf(how, tensor, shapes)):
            _set(values, path, jnp.asarray(part, dtype=pdtype))
    state.replace_by_pure_dict(values)
    return nnx.merge(graphdef, state, rest)


# ---------------------------------------------------------------------------------------------
# Folders
# ---------------------------------------------------------------------------------------------

def is_hf_folder(folder: pathlib.Path) -> bool:
    """Whether `folder` looks like a Hugging Face model folder (complete or not)."""
    return any((folder / f).is_file() for f in (CONFIG, WEIGHTS, WEIGHTS_INDEX, TORCH_WEIGHTS))


def _tensor_files(folder: pathlib.Path) -> tuple[dict[str, pathlib.Path], str]:
    """(HF tensor name -> the safetensors file holding it, a name for error messages)."""
    single, index = folder / WEIGHTS, folder / WEIGHTS_INDEX
    if single.is_file():
        with safe_open(single, framework="np") as f:
            return {k: single for k in f.keys()}, str(single)
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {k: folder / v for k, v in weight_map.items()}, str(index)
    raise FileNotFoundError(f"{folder}: no weights; expected {WEIGHTS} or {WEIGHTS_INDEX}"
                            f"{pickled_hint(folder)}")


def pickled_hint(folder: pathlib.Path) -> str:
    """'; NAME is there, but ...how to convert' when the folder holds pickled weights only."""
    found = sorted({p.name for pattern in PICKLED for p in folder.glob(pattern) if p.is_file()})
    if not found:
        return ""
    return (f"; {', '.join(found[:3])} is there, but gptjax reads safetensors only (loading "
            f"a pickle can run code): {CONVERT}")


def read_tensors(folder: pathlib.Path, names) -> tuple[dict[str, np.ndarray], str]:
    """The tensors `names` (without 'transformer.') that the folder holds, and the weights' name."""
    files, source = _tensor_files(folder)
    bare = {k[len(PREFIX):] if k.startswith(PREFIX) else k: k for k in files}
    unused = sorted(k for k in bare if k not in names and not k.endswith(BUFFERS)
                    and k != "lm_head.weight")  # a tied head may be saved; HF ignores it too
    if unused:
        logging.warning("%s: ignoring tensors that GPT-2's LM has no place for: %s", source,
                        unused[:8])
    by_file: dict[pathlib.Path, list[str]] = {}
    for name in names:
        if name in bare:
            by_file.setdefault(files[bare[name]], []).append(name)
    tensors = {}
    for path, wanted in by_file.items():
        if not path.is_file():
            raise FileNotFoundError(f"{source} lists {path.name}, which is missing from {folder}")
        with safe_open(path, framework="np") as f:
            for name in wanted:
                tensors[name] = f.get_tensor(bare[name])
    return tensors, source


def read_config(folder: pathlib.Path, **overrides) -> ModelConfig:
    """The ModelConfig of a Hugging Face GPT-2 folder, from its config.json alone."""
    config_path = folder / CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder}: no {CONFIG}; a Hugging Face GPT-2 folder holds "
                                f"{CONFIG} and {WEIGHTS} (as save_pretrained writes them)")
    return config_from_hf(json.loads(config_path.read_text()), str(config_path), **overrides)


def load_hf(folder: pathlib.Path, **overrides) -> GPT:
    """Read a Hugging Face GPT-2 folder (config.json + safetensors) into a GPT."""
    cfg = read_config(folder, **overrides)
    tensors, source = read_tensors(folder, layout(cfg))
    return params_from_hf(cfg, tensors, source)


def resolve_folder(path) -> pathlib.Path:
    """A local folder, or a hub repo id (e.g. 'gpt2') fetched by huggingface_hub if installed."""
    folder = pathlib.Path(path).expanduser()
    if folder.is_dir():
        return folder
    if folder.exists():
        raise NotADirectoryError(f"{folder} is a file; pass the folder that holds {CONFIG} and "
                                 f"{WEIGHTS}")
    text = str(path)
    looks_like_repo = not text.startswith(("/", ".", "~")) and text.count("/") <= 1
    if looks_like_repo:
        try:
            from huggingface_hub import snapshot_download

            return pathlib.Path(snapshot_download(text, allow_patterns=[
                CONFIG, WEIGHTS, WEIGHTS_INDEX, "model-*.safetensors", "vocab.json", "merges.txt",
                "tokenizer.json", "tokenizer_config.json", "generation_config.json"]))
        except Exception as e:  # not installed, offline, unknown repo: all mean "no such folder"
            raise FileNotFoundError(
                f"no folder {text!r}, and the Hugging Face hub could not provide it "
                f"({type(e).__name__}: {e}); download it with `hf download {text} --local-dir "
                "DIR` where there is internet, and pass DIR") from e
    raise FileNotFoundError(f"no folder {folder}; expected a Hugging Face GPT-2 folder "
                            f"({CONFIG} + {WEIGHTS}) or a gptjax checkpoint")


def load_gpt(path, *, dtype: str | None = None, param_dtype: str | None = None,
             attention: str | None = None, remat: bool | None = None,
             dropout: float | None = None, vocab_multiple: int | None = None) -> GPT:
    """Load a GPT from a folder: a Hugging Face GPT-2 folder or a registered format.

    dtype/param_dtype/attention/remat/dropout/vocab_multiple override the model config (weights
    are stored in float32 and cast to param_dtype, float32 by default; a padded vocabulary's
    extra rows are zeros).
    """
    overrides = {k: v for k, v in dict(dtype=dtype, param_dtype=param_dtype, attention=attention,
                                       remat=remat, dropout=dropout,
                                       vocab_multiple=vocab_multiple).items() if v is not None}
    folder = resolve_folder(path)
    for detect, load in FORMATS.values():
        if detect(folder):
            return load(folder, **overrides)
    if is_hf_folder(folder):
        return load_hf(folder, **overrides)
    found = sorted(p.name for p in folder.iterdir())[:10]
    formats = ["huggingface"] + list(FORMATS)
    raise FileNotFoundError(f"{folder} is not a model folder of a known format ({formats}): "
                            f"expected {CONFIG} + {WEIGHTS} (Hugging Face GPT-2) or a gptjax "
                            f"checkpoint; it holds {found or 'nothing'}{pickled_hint(folder)}")


def save_gpt(model: GPT, path, **extra_config) -> None:
    """Write config.json + model.safetensors that transformers' GPT2LMHeadModel loads.

    `extra_config` adds or replaces config.json keys (e.g. eos_token_id for your tokenizer).
    Tokenizer files are the caller's: save them into the same folder.
    """
    config = {**config_to_hf(model.cfg), **extra_config}  # raises first if not a GPT-2
    tensors = params_to_hf(model)
    folder = pathlib.Path(path).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt"})
    (folder / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def from_pretrained(path, **overrides) -> GPT:
    """GPT.from_pretrained: load_gpt, with the folder's generation defaults (generation_config.json:
    eos/pad ids...) as `model.generation_config`, which `generate` reads as transformers does."""
    folder = resolve_folder(path)  # a hub id's snapshot is a folder too
    model = load_gpt(folder, **overrides)
    if isinstance(model, GPT):
        model.generation_config = GenerationConfig.build(load_generation_defaults(folder), {})
    return model


provide("from_pretrained", from_pretrained)
provide("save_pretrained", save_gpt)
