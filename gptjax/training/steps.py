"""Pure, jitted train and eval steps: (state, batch) -> (state, metrics).

A batch is {'inputs', 'targets': int32 [batch, seq]}, with packed documents (data.document_mask)
also 'segment_ids' and optionally 'positions' (int32 [batch, seq], see model_inputs).
train_step_fn and eval_step_fn are the pure steps; compile_train_step compiles the train step for
a Plan (its shardings, on the state's leaves). None of them does I/O. A train step whose loss
or gradient norm is not finite (or, with train.skip_spikes, spikes: gptjax.training.spikes) is
skipped: params and optimizer state come back bitwise as they went in, and its metrics say
skipped_steps=1 (gptjax.training.skips, the host side). float16 runs scale their loss
(gptjax.training.loss_scale): an overflowing step is skipped and halves the scale.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.flatten_util import ravel_pytree
from jax.sharding import NamedSharding, PartitionSpec

from gptjax.config import Config
from gptjax.model import apply
from gptjax.training import cpu, loss_scale, spikes
from gptjax.training.state import TrainState


def cross_entropy_sums(logits, targets, z_loss: float = 0.0):
    """(summed token cross-entropy, summed z-loss term, scored-token count), float32.

    logits: [batch, seq, vocab]; targets: [batch, seq], negative where a position is not scored
    (e.g. MQAR's non-query tokens). The z-loss (PaLM) is z_loss * log(Z)^2, which keeps the
    softmax normaliser near 1. The count is a float so that, batch-sharded, its all-reduce is
    one with the gradients' (an integer one would be a separate barrier at the step's start).
    """
    logits = logits.astype(jnp.float32)
    scored = targets >= 0
    count = jnp.sum(scored, dtype=jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(scored, targets, 0))
    ce = jnp.sum(jnp.where(scored, ce, 0.0))
    if not z_loss:
        return ce, jnp.zeros((), jnp.float32), count
    log_z = jax.nn.logsumexp(logits, axis=-1)
    return ce, z_loss * jnp.sum(jnp.where(scored, jnp.square(log_z), 0.0)), count


def cross_entropy(logits, targets, z_loss: float = 0.0):
    """(mean token cross-entropy, mean z-loss term) over the scored positions, in float32."""
    ce, z, count = cross_entropy_sums(logits, targets, z_loss)
    count = jnp.maximum(count, 1.0)
    return ce / count, z / count


def accuracy(logits, targets):
    """Fraction of scored positions (targets >= 0) whose argmax is the target."""
    scored = targets >= 0
    hits = (jnp.argmax(logits, axis=-1) == targets) & scored
    return hits.sum() / jnp.maximum(scored.sum(), 1)


# Optional batch keys -> the GPT keyword arguments they feed (absent keys: nothing passed).
MODEL_INPUTS = {"segment_ids": "segment_ids_", "positions": "positions_"}


def model_inputs(batch) -> dict:
    """The GPT keyword arguments a batch carries besides its tokens: segment ids (attention
    kept within each document) and positions (restarting at each document)."""
    return {arg: batch[key] for key, arg in MODEL_INPUTS.items() if key in batch}


def sums_fn(params, graphdef, batch, *, dropout_key=None, z_loss: float = 0.0):
    """(summed objective, (summed cross-entropy, summed z-term, scored-token count)).

    The train step differentiates the sum and divides the gradients by the count afterwards:
    the same gradient as the mean's, with nothing in the backward pass waiting on the count.
    """
    logits = apply(graphdef, params, batch["inputs"], **model_inputs(batch),
                   deterministic=dropout_key is None,
                   rngs=None if dropout_key is None else nnx.Rngs(dropout=dropout_key))
    ce, z, count = cross_entropy_sums(logits, batch["targets"], z_loss)
    return ce + z, (ce, z, count)


def _micro_batches(batch, k: int):
    """[B, ...] -> [k, B/k, ...], micro-batch j = rows j, j+k, ...

    Strided, so each device's rows stay on it when B is sharded over devices in contiguous blocks.
    """
    return jax.tree.map(lambda x: jnp.moveaxis(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 1, 0),
                        batch)


def update_if(ok, tx, grads, params, opt_state, grad_norm=None):
    """(params, opt_state) after tx's update from `grads` where the scalar `ok` holds, else the
    very same arrays. `grad_norm`: the gradients' global norm, handed to tx's clipping (one
    computation per step) where tx takes extra arguments."""
    # lax.cond, not jnp.where over the leaves: a select keeps the old optimizer moments alive
    # beside the new ones, and XLA:CPU copied every one of them each step.
    takes_norm = grad_norm is not None and isinstance(tx, optax.GradientTransformationExtraArgs)

    def apply(grads, params, opt_state, grad_norm):
        extra = {"grad_norm": grad_norm} if takes_norm else {}
        updates, opt_state = tx.update(grads, opt_state, params, **extra)
        return optax.apply_updates(params, updates), opt_state

    return jax.lax.cond(ok, apply, lambda g, p, o, n: (p, o), grads, params, opt_state,
                        grad_norm if takes_norm else jnp.zeros((), jnp.float32))


def is_finite(ce, z, grad_norm):
    """Whether a step's loss terms and gradient norm are all finite (a scalar bool)."""
    return jnp.isfinite(ce) & jnp.isfinite(z) & jnp.isfinite(grad_norm)


def should_update(stats, ce, z, grad_norm, tcfg):
    """(apply this step's update?, the spike statistics after it, extra metrics): not where
    the loss or gradient norm is non-finite or, with train.skip_spikes, a spike."""
    finite = is_finite(ce, z, grad_norm)
    if not tcfg.skip_spikes:
        return finite, stats, {}
    spike = finite & spikes.is_spike(stats, ce, grad_norm, tcfg)
    return (finite & ~spike, spikes.record(stats, ce, grad_norm, finite),
            {"spike_steps": jnp.where(spike, 1.0, 0.0)})


def updates_applied(opt_state, default):
    """The optimizer's own step count (its schedule's position), which skipped steps do not
    advance; `default` where the optimizer has no schedule state."""
    counts = [s.count for s in jax.tree.leaves(
        opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))
        if isinstance(s, optax.ScaleByScheduleState)]
    return counts[0] if counts else default


def current_scale(state: TrainState, config: Config):
    """The loss scale this step multiplies the loss by: float16's (gptjax.training.loss_scale),
    else 1 (unused)."""
    if not loss_scale.enabled(config):
        return jnp.ones((), jnp.float32)
    if state.loss_scale is None:
        raise ValueError("model.dtype='float16' scales its loss: build the state with "
                         "init_state(..., loss_scale=gptjax.training.loss_scale.init(config))")
    return state.loss_scale["scale"]


def adjust_loss_scale(state: TrainState, ce, z, grad_norm, config: Config):
    """(the loss-scale state after this step, its metrics): halved where the scaled gradients
    overflowed, doubled after optim.loss_scale_period finite steps; unchanged, no metrics,
    where the run does not scale its loss."""
    if not loss_scale.enabled(config):
        return state.loss_scale, {}
    scale, halved = loss_scale.adjust(state.loss_scale, is_finite(ce, z, grad_norm),
                                      config.optim.loss_scale_period)
    return scale, {"loss_scale": scale["scale"], "overflow_steps": jnp.where(halved, 1.0, 0.0)}


def train_step_fn(config: Config, graphdef, tx, schedule, *, axis_name: str | None = None,
                  data_mesh=None):
    """The pure train step for this config: (state, batch) -> (state, metrics), not yet jitted.

    axis_name: under jax.pmap (gptjax.parallel's pmap path), the mapped axis whose devices each
    hold a slice of the batch; gradients and losses are summed over it.
    data_mesh: the CPU path's mesh (gptjax.training.cpu): gradients per CPU device, summed in
    one flat all-reduce. Otherwise XLA places the reductions the shardings imply.
    """
    k, tcfg, z_loss = config.optim.grad_accum, config.train, config.optim.z_loss
    use_dropout = config.model.dropout > 0.0 or config.model.lora_dropout > 0.0
    scaled = loss_scale.enabled(config)

    def objective(params, frozen, scale, *args, **kw):
        # Gradients of the trainable params only; the frozen ones enter as constants.
        total, aux = sums_fn(nnx.merge_state(params, frozen), *args, **kw)
        return (total * scale if scaled else total), aux  # float16: the loss times its scale

    grad_fn = jax.value_and_grad(objective, has_aux=True)

    def summed_gradients(params, frozen, scale, key, batch, axis=None):
        """(grads, ce, z, n): sums over `batch` (this device's slice when `axis` is named);
        float16: differentiated at `scale` times each micro-batch's mean loss, then unscaled."""
        scale = scale / (batch["targets"].size // k) if scaled else scale
        if axis is not None:  # each device's slice of the batch gets its own dropout masks
            key = jax.random.fold_in(key, jax.lax.axis_index(axis))
        if k == 1:
            (_, (ce, z, n)), grads = grad_fn(params, frozen, scale, graphdef, batch,
                                             dropout_key=key if use_dropout else None,
                                             z_loss=z_loss)
        else:
            # One optimizer update per step from k micro-batches' summed gradients.
            def micro(carry, xs):
                j, mb = xs
                (_, aux), g = grad_fn(params, frozen, scale, graphdef, mb,
                                      dropout_key=jax.random.fold_in(key, j) if use_dropout
                                      else None, z_loss=z_loss)
                return jax.tree.map(jnp.add, carry, (g, aux)), None

            zero = jnp.zeros((), jnp.float32)
            zeros = (jax.tree.map(jnp.zeros_like, params), (zero, zero, zero))
            (grads, (ce, z, n)), _ = jax.lax.scan(micro, zeros,
                                                  (jnp.arange(k), _micro_batches(batch, k)))
        if axis is not None:  # one flat buffer: a single all-reduce
            flat, unflatten = ravel_pytree((grads, ce, z, n))
            grads, ce, z, n = unflatten(jax.lax.psum(flat, axis))
        if scaled:  # in float32, which holds what float16 did not
            grads = jax.tree.map(lambda g: g / scale, grads)
        return grads, ce, z, n

    if data_mesh is not None:
        summed_gradients = cpu.per_device_gradients(summed_gradients, data_mesh)
    elif axis_name is not None:
        summed_gradients = functools.partial(summed_gradients, axis=axis_name)

    def step(state: TrainState, batch):
        key = jax.random.fold_in(state.rng, state.step)
        # Gradients and losses are sums over the scored tokens until one division by their
        # count at the end: exact for micro-batches and devices holding different counts.
        trainable, frozen = state.partition()
        scale = current_scale(state, config)
        grads, ce, z, n = summed_gradients(trainable, frozen, scale, key, batch)
        n = jnp.maximum(n, 1.0)
        grads, ce, z = jax.tree.map(lambda x: x / n, (grads, ce, z))
        grad_norm = optax.tree.norm(grads)  # once: the checks below and the clipping use it
        # A skipped step keeps the params and optimizer state bitwise as they were (the step
        # counter, hence data and dropout keys, moves on).
        ok, spike_stats, extra = should_update(state.spikes, ce, z, grad_norm, tcfg)
        scale_state, scale_metrics = adjust_loss_scale(state, ce, z, grad_norm, config)
        trainable, opt_state = update_if(ok, tx, grads, trainable, state.opt_state, grad_norm)
        metrics = {"loss": ce, "grad_norm": grad_norm,
                   "lr": schedule(updates_applied(state.opt_state, state.step)),
                   "skipped_steps": jnp.where(ok, 0.0, 1.0), **extra, **scale_metrics}
        if z_loss:
            metrics["z_loss"] = z
        return state.replace(params=nnx.merge_state(trainable, frozen), opt_state=opt_state,
                             step=state.step + 1, spikes=spike_stats,
                             loss_scale=scale_state), metrics

    return step


def eval_step_fn(graphdef):
    """The pure eval step: (params, batch) -> {'loss': mean cross-entropy, 'accuracy'}."""

    def step(params, batch):
        logits = apply(graphdef, params, batch["inputs"], **model_inputs(batch),
                       deterministic=True)
        ce, _ = cross_entropy(logits, batch["targets"])
        return {"loss": ce, "accuracy": accuracy(logits, batch["targets"])}

    return step


def compile_on_leaves(plan, step_fn, abstract, state_sharding, steps: int = 1):
    """step_fn compiled to take and return the TrainState's leaves (a flat list of arrays);
    steps > 1: one program that runs `steps` steps (lax.scan) over batches stacked [steps, ...]
    (Plan.put_batches), returning each step's metrics stacked the same way.

    jit flattens a list of arrays in C++, but every nnx Variable of a TrainState costs Python
    calls to flatten and rebuild: a few ms per step, which on a CPU host is taken from the cores
    that compute the step.
    """
    treedef = jax.tree.structure(abstract)

    def on_leaves(leaves, batch):
        state, metrics = step_fn(jax.tree.unflatten(treedef, leaves), batch)
        return jax.tree.leaves(state), metrics

    def on_leaves_steps(leaves, batches):
        return jax.lax.scan(on_leaves, leaves, batches)

    if plan.strategy == "pmap":
        if steps != 1:
            raise ValueError("several steps per call need the jit strategy")
        return plan.compile_train(on_leaves, jax.tree.leaves(abstract))
    leaf_shardings = jax.tree.leaves(state_sharding)
    fn, batch_sharding = ((on_leaves, plan.batch_sharding()) if steps == 1
                          else (on_leaves_steps, plan.stacked_batch_sharding()))
    return plan.jit(fn, in_shardings=(leaf_shardings, batch_sharding),
                    out_shardings=(leaf_shardings, NamedSharding(plan.mesh, PartitionSpec())),
                    donate_argnums=0)


def compile_train_step(config: Config, plan, graphdef, tx, schedule, abstract, state_sharding,
                       steps: int = 1):
    """The train step as the loop runs it: train_step_fn for `plan` (its pmap axis, or on CPU
    devices the flat all-reduce of gptjax.training.cpu), compiled on the state's leaves;
    `steps` steps to a call (see compile_on_leaves)."""
    step_fn = train_step_fn(config, graphdef, tx, schedule, axis_name=plan.axis_name,
                            data_mesh=cpu.data_parallel_mesh(plan))
    return compile_on_leaves(plan, step_fn, abstract, state_sharding, steps)
