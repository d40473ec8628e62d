"""TrainState: all a training step reads and writes, as one pytree (what checkpoints hold).

The state knows which parameters train (`trainable`, train.trainable's pattern over parameter
paths): the optimizer state covers those alone, and the step differentiates those alone. The
seam for every partial-training method (freezing, BitFit, adapters).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gptjax.config import ConfigError, ModelConfig
from gptjax.model import GPT, split


@dataclasses.dataclass(frozen=True)
class TrainState:
    params: Any  # nnx.State of the GPT's Params, trainable or not
    opt_state: Any  # optax state of the trainable params only
    step: jax.Array  # int32 scalar: optimizer steps taken
    rng: jax.Array  # uint32[2] raw PRNG key; step k's dropout key is fold_in(rng, k)
    trainable: str | None = None  # static, not a leaf; None: all
    # train.skip_spikes' running statistics (gptjax.training.spikes); None when off
    spikes: Any = None
    # float16's dynamic loss scale (gptjax.training.loss_scale); None for other dtypes
    loss_scale: Any = None

    def partition(self):
        """(trainable params, frozen params): two nnx.States; nnx.merge_state joins them."""
        return partition(self.params, self.trainable)

    def replace(self, **changes) -> "TrainState":
        return dataclasses.replace(self, **changes)


_CHILDREN = ("params", "opt_state", "step", "rng")
_OPTIONAL = ("spikes", "loss_scale")


def _flatten(state: TrainState):
    # `spikes` and `loss_scale` are children only when present: without skip_spikes and float16
    # the pytree (and so an orbax checkpoint's tree) is exactly the one written before either
    # feature existed.
    present = tuple(n for n in _OPTIONAL if getattr(state, n) is not None)
    return ([(jax.tree_util.GetAttrKey(n), getattr(state, n)) for n in _CHILDREN + present],
            (state.trainable, present))


def _unflatten(aux, children) -> TrainState:
    trainable, present = aux
    return TrainState(*children[:4], trainable=trainable, **dict(zip(present, children[4:])))


jax.tree_util.register_pytree_with_keys(TrainState, _flatten, _unflatten)


def path_name(path) -> str:
    """'blocks/0/attn/query/kernel' from an nnx path."""
    return "/".join(str(getattr(k, "key", k)) for k in path)


def partition(params, trainable: str | None):
    """(params whose path matches the pattern `trainable`, the others); None: (all, empty)."""
    if trainable is None:
        return params, nnx.State({})
    regex = re.compile(trainable)
    return params.split(lambda path, _: bool(regex.search(path_name(path))), ...)


def check_trainable(params, trainable: str | None) -> None:
    """Raise ConfigError if the pattern matches no parameter (a run would train nothing)."""
    if trainable is None:
        return
    chosen, _ = partition(params, trainable)
    if not jax.tree.leaves(chosen):
        names = [path_name(p) for p, _ in nnx.to_flat_state(params)]
        raise ConfigError(f"train.trainable={trainable!r} matches no parameter; paths look like "
                          f"{names[:3] + names[-2:]}")


def graphdef_of(cfg: ModelConfig):
    """The model's static structure, without allocating parameters."""
    graphdef, _ = split(nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0))))
    return graphdef


def init_state(cfg: ModelConfig, tx, seed: int, trainable: str | None = None,
               spikes=None, loss_scale=None) -> TrainState:
    """A fresh state: GPT(cfg, rngs=nnx.Rngs(seed)) params, optimizer state, step 0; `spikes`:
    empty spike statistics (gptjax.training.spikes.init) or None; `loss_scale`: float16's
    starting loss scale (gptjax.training.loss_scale.init) or None.

    Pure, so it can run under jax.jit with out_shardings (and jax.eval_shape for restore targets).
    """
    _, params = split(GPT(cfg, rngs=nnx.Rngs(jax.random.PRNGKey(seed))))
    return state_from_params(params, tx, seed, trainable, spikes, loss_scale)


def state_from_params(params, tx, seed: int, trainable: str | None = None,
                      spikes=None, loss_scale=None) -> TrainState:
    """Step 0 of a run from `params` (random or pretrained): fresh optimizer state (for the
    trainable params) and RNG."""
    key = jax.random.PRNGKey(seed)
    return TrainState(params=params, opt_state=tx.init(partition(params, trainable)[0]),
                      step=jnp.zeros((), jnp.int32), trainable=trainable, spikes=spikes,
                      loss_scale=loss_scale,
                      rng=jax.random.fold_in(key, 1))  # dropout keys: independent of init's
