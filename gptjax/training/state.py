"""TrainState: all a training step reads and writes, as one pytree (what checkpoints hold)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct

from gptjax.config import ModelConfig
from gptjax.model import GPT, split


@struct.dataclass
class TrainState:
    params: Any  # nnx.State of the GPT's Params
    opt_state: Any  # optax state
    step: jax.Array  # int32 scalar: optimizer steps taken
    rng: jax.Array  # uint32[2] raw PRNG key; step k's dropout key is fold_in(rng, k)


def graphdef_of(cfg: ModelConfig):
    """The model's static structure, without allocating parameters."""
    graphdef, _ = split(nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0))))
    return graphdef


def init_state(cfg: ModelConfig, tx, seed: int) -> TrainState:
    """A fresh state: GPT(cfg, rngs=nnx.Rngs(seed)) params, optimizer state, step 0.

    Pure, so it can run under jax.jit with out_shardings (and jax.eval_shape for restore targets).
    """
    _, params = split(GPT(cfg, rngs=nnx.Rngs(jax.random.PRNGKey(seed))))
    return state_from_params(params, tx, seed)


def state_from_params(params, tx, seed: int) -> TrainState:
    """Step 0 of a run from `params` (random or pretrained): fresh optimizer state and RNG."""
    key = jax.random.PRNGKey(seed)
    return TrainState(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32),
                      rng=jax.random.fold_in(key, 1))  # dropout keys: independent of init's
