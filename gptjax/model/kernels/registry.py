"""The registry of attention kernels, and what each one declares it can do.

Every kernel has one signature so the model, the benchmarks and the tests can swap them by name:

    kernel(q, k, v, mask, *, dropout_rate=0.0, dropout_rng=None) -> out
    q: [batch, q_len, heads, head_dim]     k, v: [batch, kv_len, kv_heads, head_dim]
    mask: a gptjax.model.masks.Mask (causal, window, padding, ALiBi, segment ids), or None for
          full attention
    dropout_rate, dropout_rng: dropout on the attention weights (training only)
    out: [batch, q_len, heads, head_dim]

`heads` is a multiple of `kv_heads` (MHA when equal, MQA when kv_heads == 1, GQA otherwise).
A kernel registers with its limits (`register(name, backends=..., window=False, ...)`); `check`
holds a model config against them before any data is read or anything compiles.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Protocol

import jax
import jax.numpy as jnp

from gptjax.config import ConfigError, ModelConfig
from gptjax.model import positions
from gptjax.model.masks import Mask


class Kernel(Protocol):
    def __call__(self, q, k, v, mask: Mask | None = None, *, dropout_rate=0.0,
                 dropout_rng=None) -> jax.Array: ...


@dataclasses.dataclass(frozen=True)
class Requirements:
    """What a kernel can do. backends ('cpu', 'gpu', 'tpu') and compute dtypes: None for any;
    instead: the kernel(s) an error suggests; dropout, window, alibi, segments: whether it
    applies attention-weight dropout, a sliding window, ALiBi's score bias, the mask's segment
    ids (packed documents); rules(cfg, seq_len): its own shape and length rules, raising
    ConfigError (seq_len None: not a training run)."""

    backends: tuple[str, ...] | None = None
    dtypes: tuple[str, ...] | None = None
    instead: str = "'xla'"
    dropout: bool = True
    window: bool = True
    alibi: bool = True
    # Off unless declared: a kernel that ignored the segment ids would attend across documents
    # without a word, so it must say it reads them.
    segments: bool = False
    rules: Callable[[ModelConfig, int | None], None] | None = None


KERNELS: dict[str, Kernel] = {}
REQUIREMENTS: dict[str, Requirements] = {}


def register(name: str, *, backends=None, dtypes=None, **limits) -> Callable[[Kernel], Kernel]:
    """Add a kernel to the registry under `name` (what `model.attention` selects), with the
    limits it declares (see Requirements)."""

    def add(fn: Kernel) -> Kernel:
        KERNELS[name] = fn
        REQUIREMENTS[name] = Requirements(backends and tuple(backends), dtypes and tuple(dtypes),
                                          **limits)
        return fn

    return add


def get_kernel(name: str) -> Kernel:
    if name not in KERNELS:
        raise ConfigError(f"model.attention={name!r} is invalid: choose one of {sorted(KERNELS)}")
    return KERNELS[name]


def _fail(field: str, value, why: str):
    raise ConfigError(f"{field}={value!r} is invalid: {why}")


def check(cfg: ModelConfig, seq_len: int | None = None, *,
          segments: bool | str = False) -> None:
    """Raise ConfigError if model.attention is unknown or cannot do what cfg asks of it:
    dropout, dtype, window, ALiBi, segment ids (segments: True for data.document_mask, or the
    name of the field that asks for them, 'data.pack') and the kernel's own rules (seq_len: a
    training length)."""
    get_kernel(cfg.attention)
    name, needs = cfg.attention, REQUIREMENTS[cfg.attention]
    if not needs.dropout and cfg.dropout > 0:
        _fail("model.dropout", cfg.dropout, f"model.attention={name!r} has no attention-weight "
              "dropout; set model.dropout=0, or choose model.attention='reference' (or 'xla', "
              "which falls back to it) to train with dropout")
    if needs.dtypes is not None and cfg.dtype not in needs.dtypes:
        _fail("model.dtype", cfg.dtype, f"model.attention={name!r} computes in "
              f"{list(needs.dtypes)} only; set model.dtype={needs.dtypes[0]!r} or choose "
              "model.attention='xla'")
    if not needs.window and cfg.window is not None:
        _fail("model.window", cfg.window, f"model.attention={name!r} cannot apply it; set "
              f"model.window=None or use model.attention={needs.instead}")
    if not needs.alibi and positions.get(cfg.position).slopes(cfg) is not None:
        _fail("model.position", cfg.position, f"model.attention={name!r} cannot apply its "
              f"score bias; set model.position='rope' or use model.attention={needs.instead}")
    if segments and not needs.segments:
        able = [n for n, r in REQUIREMENTS.items() if r.segments]
        field = segments if isinstance(segments, str) else "data.document_mask"
        _fail(field, True, f"model.attention={name!r} cannot take segment ids "
              f"(attention kept within each document); choose a model.attention that can, one "
              f"of {able}, or set {field}=False")
    if needs.rules is not None:
        needs.rules(cfg, seq_len)


def check_available(name: str, backend: str | None = None, *, dtype=None) -> None:
    """Raise ValueError, naming the fix, if kernel `name` cannot run on `backend` (default: JAX's
    current one) or in compute `dtype` (when given)."""
    get_kernel(name)
    needs = REQUIREMENTS[name]
    if needs.backends is not None:
        backend = backend or jax.default_backend()
        if backend not in needs.backends:
            raise ValueError(
                f"model.attention={name!r} needs a {' or '.join(b.upper() for b in needs.backends)}"
                f", but JAX's backend is {backend!r}; use model.attention={needs.instead} here "
                f"(a saved model: GPT.from_pretrained(path, attention='xla'))")
    if dtype is not None and needs.dtypes is not None and jnp.dtype(dtype).name not in needs.dtypes:
        raise ValueError(f"model.attention={name!r} computes in {list(needs.dtypes)} only, not "
                         f"{jnp.dtype(dtype).name!r}; set model.dtype={needs.dtypes[0]!r} or use "
                         "model.attention='xla'")


def refuse_dropout(name: str, dropout_rate, dropout_rng) -> None:
    """For kernels registered with dropout=False, called directly with dropout asked for (the
    config check refuses it before a run)."""
    if dropout_rate > 0.0 and dropout_rng is not None:
        raise ValueError(f"model.attention={name!r} has no attention-weight dropout; set "
                         "model.dropout=0 or use model.attention='xla'")
