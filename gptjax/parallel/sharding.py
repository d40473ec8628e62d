"""Shardings for pytrees: params, optimizer state, whole train states, batches; sharded init.

Parameters are found by their nnx.Variable metadata ('out_sharding': logical axis names). An
optimizer state that mirrors the params (optax's mu/nu) either keeps those Variables or holds
the same paths; leaves found neither way (step, RNG key, Adam's count) are replicated.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gptjax.config import ConfigError
from gptjax.parallel.mesh import mesh_shape
from gptjax.parallel.rules import DEFAULT_RULES, Rules, logical_to_mesh, mesh_axes


class ShardingError(ConfigError):
    """A model, batch or array that cannot be split over the mesh as the rules ask."""


def _is_var(x) -> bool:
    return isinstance(x, nnx.Variable)


def path_key(path) -> tuple[str, ...]:
    """A pytree path as plain strings, without the trailing '.value' of an nnx.Variable."""
    keys = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                keys.append(str(getattr(k, attr)))
                break
        else:
            keys.append(str(k))
    if keys and keys[-1] == "value":
        keys.pop()
    return tuple(keys)


def logical_axes(tree) -> dict[tuple[str, ...], tuple]:
    """{path: logical axis names} for every nnx.Variable in `tree` that carries them."""
    found = {}

    def visit(path, x):
        if _is_var(x):
            names = x.get_metadata().get("out_sharding")
            if names:
                found[path_key(path)] = tuple(names)
        return x

    jax.tree_util.tree_map_with_path(visit, tree, is_leaf=_is_var)
    return found


@dataclasses.dataclass(frozen=True)
class Names:
    """A leaf's logical axis names (None: replicated); not a pytree, so tree maps stop at it."""

    names: tuple | None


def logical_spec_tree(tree, logical: dict | None = None):
    """For each array leaf of `tree`, Names(its logical axis names) or Names(None).

    Variables answer from their metadata; other leaves whose path ends with a path in `logical`
    (and whose rank matches) inherit those names, so optax states over plain dicts line up.
    """
    index = _suffix_index(logical or {})

    def leaf(path, x):
        if _is_var(x):
            names = x.get_metadata().get("out_sharding")
            return x.replace(Names(tuple(names) if names else None))
        ndim = len(getattr(x, "shape", ()))
        if ndim == 0 or not index:
            return Names(None)
        key = path_key(path)
        for start in range(len(key)):  # longest suffix first
            names = index.get(key[start:])
            if names is not None and len(names) == ndim:
                return Names(names)
        return Names(None)

    return jax.tree_util.tree_map_with_path(leaf, tree, is_leaf=_is_var)


def _suffix_index(logical: dict) -> dict:
    """{path suffix: names} for every suffix of every path that names one set of axes only."""
    index: dict = {}
    for key, names in logical.items():
        for start in range(len(key)):
            suffix = key[start:]
            index[suffix] = names if index.get(suffix, names) == names else _AMBIGUOUS
    return {k: v for k, v in index.items() if v is not _AMBIGUOUS}


_AMBIGUOUS = object()


def tree_shardings(tree, mesh: Mesh, rules: Rules = DEFAULT_RULES, logical: dict | None = None):
    """NamedShardings for every array in `tree` (params, optimizer state, a whole TrainState).

    `logical`: {path: names} from `logical_axes(params)`, for trees whose params lost their
    Variable wrappers. Scalars and unnamed leaves are replicated.
    """
    return jax.tree.map(
        lambda n: NamedSharding(mesh, logical_to_mesh(n.names, rules, mesh=mesh)),
        logical_spec_tree(tree, logical))


param_shardings = tree_shardings  # params are a tree like any other; the name reads better


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES, ndim: int = 2) -> NamedSharding:
    """[batch, seq, ...] arrays: the batch dimension over every data-parallel mesh axis."""
    return NamedSharding(mesh, logical_to_mesh(("batch",) + ("seq",) + (None,) * (ndim - 2)
                                               if ndim >= 2 else ("batch",), rules, mesh=mesh))


def _split(mesh: Mesh, axes) -> int:
    return math.prod(mesh.shape[a] for a in axes)


def _batch_axes(mesh: Mesh, rules: Rules) -> tuple[str, ...]:
    spec = logical_to_mesh(("batch",), rules, mesh=mesh)[0]
    return () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)


def batch_shard_count(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> int:
    """How many pieces the batch dimension is split into."""
    return _split(mesh, _batch_axes(mesh, rules))


def check_batch(batch_size: int, mesh: Mesh, rules: Rules = DEFAULT_RULES,
                what: str = "data.batch_size") -> None:
    """Raise ShardingError if the global batch does not split evenly over the batch axes."""
    axes = _batch_axes(mesh, rules)
    n = _split(mesh, axes)
    if batch_size % n:
        sizes = " x ".join(f"mesh.{a}={mesh.shape[a]}" for a in axes)
        raise ShardingError(
            f"{what}={batch_size} does not split over the batch axes ({sizes} = {n} shards); "
            f"use a batch size that is a multiple of {n} (e.g. {-(-batch_size // n) * n}) or "
            "move devices from mesh.data/mesh.fsdp to mesh.tensor")


# model dimension -> (logical axis, config field that sets it)
_MODEL_DIMS = (("heads", "num_heads"), ("kv_heads", "num_kv_heads"), ("mlp", "d_ff"),
               ("vocab", "padded_vocab"), ("embed", "d_model"))


def vocab_shards(mesh_cfg, num_devices: int, rules: Rules = DEFAULT_RULES) -> int:
    """How many pieces the mesh config.mesh describes splits the vocabulary into (its logical
    axis 'vocab''s mesh axes), for a model to pad its vocabulary to (model.vocab_multiple)."""
    shape = mesh_shape(mesh_cfg, num_devices)
    return math.prod(shape.get(a, 1) for a in mesh_axes("vocab", rules))


def check_model(model_cfg, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> None:
    """Raise ShardingError, naming the field and the fix, if a model dimension does not divide
    over the mesh axes its logical axis maps to (e.g. num_heads=6 with mesh.tensor=4).

    A run pads its vocabulary to the mesh itself (gptjax.training: model.vocab_multiple), so
    a vocabulary that does not divide here was built outside a run.
    """
    for name, field in _MODEL_DIMS:
        size = getattr(model_cfg, field)
        axes = [a for a in mesh_axes(name, rules) if mesh.shape.get(a, 1) > 1]
        n = _split(mesh, axes)
        if size and size % n:
            sizes = " x ".join(f"mesh.{a}={mesh.shape[a]}" for a in axes)
            fix = (f"pad the vocabulary to a multiple of {n}: set model.vocab_multiple={n}"
                   if name == "vocab" else
                   f"choose model.{field} divisible by {n}, or a mesh with a smaller "
                   f"{'/'.join(axes)} axis")
            what = (f"model.vocab_size={model_cfg.vocab_size} padded to model.vocab_multiple="
                    f"{model_cfg.vocab_multiple} ({size} rows)" if name == "vocab"
                    else f"model.{field}={size}")
            raise ShardingError(f"{what} does not divide over {sizes} (logical axis {name!r} -> "
                                f"{tuple(axes)}): {fix}")


def check_divisible(tree, shardings) -> None:
    """Raise ShardingError naming the array if a sharded dimension does not divide evenly."""
    def leaf(path, x, sharding):
        if not isinstance(sharding, NamedSharding):
            return
        shape = getattr(x, "shape", ())
        for dim, axes in zip(shape, sharding.spec):
            axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
            n = _split(sharding.mesh, axes)
            if dim % n:
                raise ShardingError(
                    f"{'/'.join(path_key(path))}: dimension {dim} of shape {tuple(shape)} does "
                    f"not divide over mesh axes {axes} ({n} shards); change the model size or "
                    "the mesh, or map its logical axis to fewer mesh axes in the rules")

    jax.tree_util.tree_map_with_path(leaf, tree, shardings)


def shard_init(init_fn: Callable[..., Any], mesh: Mesh, rules: Rules = DEFAULT_RULES, *args,
               logical: dict | None = None):
    """Run `init_fn(*args)` under jit so each array is born in its shard (never whole on one
    device); args are closed over (static). Returns (tree, shardings)."""
    init_fn = functools.partial(init_fn, *args)
    abstract = jax.eval_shape(init_fn)
    shardings = tree_shardings(abstract, mesh, rules, logical)
    check_divisible(abstract, shardings)
    return jax.jit(init_fn, out_shardings=shardings)(), shardings


def abstract_like(tree, shardings):
    """ShapeDtypeStructs carrying target shardings: what orbax restores into (resharding)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)


def device_bytes(tree) -> dict[str, int]:
    """Bytes each device holds for `tree`'s arrays, from their addressable shards' shapes."""
    out: dict[str, int] = {}
    for x in jax.tree.leaves(tree):
        if not isinstance(x, jax.Array):
            continue
        for shard in x.addressable_shards:
            nbytes = int(np.prod(shard.data.shape)) * x.dtype.itemsize
            out[str(shard.device)] = out.get(str(shard.device), 0) + nbytes
    return out
