"""Pure, jitted train and eval steps: (state, batch) -> (state, metrics).

A batch is {'inputs', 'targets': int32 [batch, seq]}. Shardings plug in through make_*_step's
arguments; the functions themselves never do I/O.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from gptjax.config import Config
from gptjax.model import apply
from gptjax.training.state import TrainState


def cross_entropy(logits, targets, z_loss: float = 0.0):
    """(mean token cross-entropy, mean z-loss term), in float32.

    logits: [batch, seq, vocab]; targets: [batch, seq], negative where a position is not scored
    (e.g. MQAR's non-query tokens). The z-loss (PaLM) is z_loss * log(Z)^2, which keeps the
    softmax normaliser near 1.
    """
    logits = logits.astype(jnp.float32)
    scored = targets >= 0
    count = jnp.maximum(scored.sum(), 1)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(scored, targets, 0))
    ce = jnp.sum(jnp.where(scored, ce, 0.0)) / count
    if not z_loss:
        return ce, jnp.zeros((), jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    return ce, z_loss * jnp.sum(jnp.where(scored, jnp.square(log_z), 0.0)) / count


def accuracy(logits, targets):
    """Fraction of scored positions (targets >= 0) whose argmax is the target."""
    scored = targets >= 0
    hits = (jnp.argmax(logits, axis=-1) == targets) & scored
    return hits.sum() / jnp.maximum(scored.sum(), 1)


def loss_fn(params, graphdef, batch, *, dropout_key=None, z_loss: float = 0.0):
    """(objective, (cross-entropy, z-term)) of one batch; dropout on when dropout_key is given."""
    logits = apply(graphdef, params, batch["inputs"], deterministic=dropout_key is None,
                   rngs=None if dropout_key is None else nnx.Rngs(dropout=dropout_key))
    ce, z = cross_entropy(logits, batch["targets"], z_loss)
    return ce + z, (ce, z)


def _micro_batches(batch, k: int):
    """[B, ...] -> [k, B/k, ...], micro-batch j = rows j, j+k, ...

    Strided, so each device's rows stay on it when B is sharded over devices in contiguous blocks.
    """
    return jax.tree.map(lambda x: jnp.moveaxis(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 1, 0),
                        batch)


def train_step_fn(config: Config, graphdef, tx, schedule, *, axis_name: str | None = None):
    """The pure train step for this config: (state, batch) -> (state, metrics), not yet jitted.

    axis_name: under jax.pmap (gptjax.parallel's pmap path), the mapped axis whose devices each
    hold a slice of the batch; gradients and losses are averaged over it (`lax.pmean`).
    """
    k = config.optim.grad_accum
    z_loss = config.optim.z_loss
    use_dropout = config.model.dropout > 0.0
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: TrainState, batch):
        key = jax.random.fold_in(state.rng, state.step)
        if axis_name is not None:  # each device's slice of the batch gets its own dropout masks
            key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
        if k == 1:
            (_, (ce, z)), grads = grad_fn(state.params, graphdef, batch,
                                         dropout_key=key if use_dropout else None, z_loss=z_loss)
        else:
            # One optimizer update per step: mean of k equal micro-batches' gradients and losses
            # equals the big batch's (the loss is a mean over equally many tokens per micro-batch).
            def micro(carry, xs):
                j, mb = xs
                (_, aux), g = grad_fn(state.params, graphdef, mb,
                                      dropout_key=jax.random.fold_in(key, j) if use_dropout
                                      else None, z_loss=z_loss)
                return jax.tree.map(jnp.add, carry, (g, aux)), None

            zeros = (jax.tree.map(jnp.zeros_like, state.params),
                     (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)))
            (grads, (ce, z)), _ = jax.lax.scan(micro, zeros,
                                               (jnp.arange(k), _micro_batches(batch, k)))
            grads, ce, z = jax.tree.map(lambda x: x / k, (grads, ce, z))
        if axis_name is not None:  # equal slices: the mean of their means is the batch's mean
            grads, ce, z = jax.lax.pmean((grads, ce, z), axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": ce, "grad_norm": optax.global_norm(grads), "lr": schedule(state.step)}
        if z_loss:
            metrics["z_loss"] = z
        return state.replace(params=params, opt_state=opt_state, step=state.step + 1), metrics

    return step


def make_train_step(config: Config, graphdef, tx, schedule, *, state_sharding=None,
                    batch_sharding=None):
    """jit(train_step) with the state donated; shardings (pytrees of NamedSharding) are optional."""
    shardings = {}
    if state_sharding is not None:
        shardings = dict(in_shardings=(state_sharding, batch_sharding),
                         out_shardings=(state_sharding, None))
    return jax.jit(train_step_fn(config, graphdef, tx, schedule), donate_argnums=0, **shardings)


def eval_step_fn(graphdef):
    """The pure eval step: (params, batch) -> {'loss': mean cross-entropy, 'accuracy'}."""

    def step(params, batch):
        logits = apply(graphdef, params, batch["inputs"], deterministic=True)
        ce, _ = cross_entropy(logits, batch["targets"])
        return {"loss": ce, "accuracy": accuracy(logits, batch["targets"])}

    return step


def make_eval_step(graphdef, *, params_sharding=None, batch_sharding=None):
    shardings = {}
    if params_sharding is not None:
        shardings = dict(in_shardings=(params_sharding, batch_sharding))
    return jax.jit(eval_step_fn(graphdef), **shardings)


def compile_on_leaves(plan, step_fn, abstract, state_sharding):
    """step_fn compiled to take and return the TrainState's leaves (a flat list of arrays).

    jit flattens a list of arrays in C++, but every nnx Variable of a TrainState costs Python
    calls to flatten and rebuild: a few ms per step, which on a CPU host is taken from the cores
    that compute the step.
    """
    treedef = jax.tree.structure(abstract)

    def on_leaves(leaves, batch):
        state, metrics = step_fn(jax.tree.unflatten(treedef, leaves), batch)
        return jax.tree.leaves(state), metrics

    if plan.strategy == "pmap":
        return plan.compile_train(on_leaves, jax.tree.leaves(abstract))
    leaf_shardings = jax.tree.leaves(state_sharding)
    return plan.jit(on_leaves, in_shardings=(leaf_shardings, plan.batch_sharding()),
                    out_shardings=(leaf_shardings, NamedSharding(plan.mesh, PartitionSpec())),
                    donate_argnums=0)
