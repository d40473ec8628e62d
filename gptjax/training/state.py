"""TrainState: all a training step reads and writes, as one pytree (what checkpoints hold).

The state knows which parameters train (`trainable`, train.trainable's pattern over parameter
paths): the optimizer state covers those alone, and the step differentiates those alone. The
seam for every partial-training method (freezing, BitFit, adapters).
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct

from gptjax.config import ConfigError, ModelConfig
from gptjax.model import GPT, split


@struct.dataclass
class TrainState:
    params: Any  # nnx.State of the GPT's Params, trainable or not
    opt_state: Any  # optax state of the trainable params only
    step: jax.Array  # int32 scalar: optimizer steps taken
    rng: jax.Array  # uint32[2] raw PRNG key; step k's dropout key is fold_in(rng, k)
    trainable: str | None = struct.field(pytree_node=False, default=None)  # None: all

    def partition(self):
        """(trainable params, frozen params): two nnx.States; nnx.merge_state joins them."""
        return partition(self.params, self.trainable)


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


def init_state(cfg: ModelConfig, tx, seed: int, trainable: str | None = None) -> TrainState:
    """A fresh state: GPT(cfg, rngs=nnx.Rngs(seed)) params, optimizer state, step 0.

    Pure, so it can run under jax.jit with out_shardings (and jax.eval_shape for restore targets).
    """
    _, params = split(GPT(cfg, rngs=nnx.Rngs(jax.random.PRNGKey(seed))))
    return state_from_params(params, tx, seed, trainable)


def state_from_params(params, tx, seed: int, trainable: str | None = None) -> TrainState:
    """Step 0 of a run from `params` (random or pretrained): fresh optimizer state (for the
    trainable params) and RNG."""
    key = jax.random.PRNGKey(seed)
    return TrainState(params=params, opt_state=tx.init(partition(params, trainable)[0]),
                      step=jnp.zeros((), jnp.int32), trainable=trainable,
                      rng=jax.random.fold_in(key, 1))  # dropout keys: independent of init's
