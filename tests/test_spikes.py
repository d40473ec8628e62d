"""Loss-spike skipping (train.skip_spikes) and the gradient norm computed once per step.

A spike is injected where a test chooses: `spiky` patches the loss so that a batch whose targets
hold SPIKE gives a loss (and gradients) SCALE times as large; SPIKE is negative, i.e. an
unscored position, so the batch is otherwise normal.
"""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import struct

from gptjax.config import Config, ConfigError, TrainConfig
from gptjax.parallel import make_plan
from gptjax.training import spikes, steps
from gptjax.training.loop import train
from gptjax.training.optim import clip_by_global_norm, make_optimizer
from gptjax.training.state import TrainState, graphdef_of, init_state

SPIKE, SCALE = -5, 100.0


@pytest.fixture
def spiky(monkeypatch):
    real = steps.cross_entropy_sums

    def sums(logits, targets, z_loss=0.0):
        ce, z, n = real(logits, targets, z_loss)
        return jnp.where(jnp.any(targets == SPIKE), SCALE, 1.0) * ce, z, n

    monkeypatch.setattr(steps, "cross_entropy_sums", sums)


def tiny(mesh=None, train=None, **optim) -> Config:
    return Config.from_dict({
        "model": dict(vocab_size=64, max_len=16, num_layers=1, num_heads=4, d_model=32,
                      attention="reference"),
        "data": dict(seq_len=16, batch_size=16),
        "optim": {"lr": 1e-3, "warmup_steps": 0, **optim},
        "train": dict(num_steps=20, **(train or {})), "mesh": mesh or {}})


def batch_of(seed, spike=False):
    x = np.random.default_rng(seed).integers(0, 64, (16, 17)).astype(np.int32)
    batch = {"inputs": x[:, :-1], "targets": x[:, 1:].copy()}
    if spike:  # one position of one row: one device's slice, one micro-batch
        batch["targets"][0, 3] = SPIKE
    return batch


# --- the statistics ------------------------------------------------------------------------------

def test_spike_statistics_are_the_last_windows_mean_and_sample_std():
    tcfg = TrainConfig(skip_spikes=True, spike_window=4, spike_warmup=3, spike_threshold=2.0)
    stats = spikes.init(tcfg)
    rng = np.random.default_rng(0)
    seen = []
    for i in range(9):
        loss, norm = float(rng.normal(3.0, 0.1)), float(rng.normal(1.0, 0.05))
        finite = jnp.asarray(i != 5)  # a non-finite step is never recorded
        stats = spikes.record(stats, jnp.nan if i == 5 else loss, norm, finite)
        if i != 5:
            seen.append((loss, norm))
    assert int(stats["count"]) == 8
    last = np.asarray(seen[-4:], np.float32)
    for col, x in ((0, 3.0), (1, 1.0)):
        mean, std = last[:, col].mean(), last[:, col].std(ddof=1)
        hi = float(mean + 2.0 * std)
        probe = [(hi * 1.001, 1.0), (3.0, hi * 1.001)][col]
        assert bool(spikes.is_spike(stats, *probe, tcfg))
        probe = [(hi * 0.999, 1.0), (3.0, hi * 0.999)][col]
        assert not bool(spikes.is_spike(stats, *probe, tcfg)), col
    # warm-up: two values recorded, spike_warmup=3: nothing is a spike yet
    young = spikes.record(spikes.record(spikes.init(tcfg), 3.0, 1.0, jnp.asarray(True)),
                          3.1, 1.0, jnp.asarray(True))
    assert not bool(spikes.is_spike(young, 1e6, 1e6, tcfg))
    assert spikes.init(TrainConfig()) is None


@pytest.mark.parametrize("field,value", [("skip_spikes", 1), ("spike_threshold", 0.0),
                                         ("spike_threshold", float("nan")),
                                         ("spike_window", 1), ("spike_warmup", 2.5)])
def test_spike_fields_are_validated(field, value):
    with pytest.raises(ConfigError, match=f"train.{field}"):
        TrainConfig(**{field: value})


def test_a_resume_that_toggles_skip_spikes_is_refused_clearly():
    saved = {"train": {"skip_spikes": False}}
    spikes.check_resume(saved, TrainConfig(), "run")  # as before: fine
    with pytest.raises(ConfigError, match="train.skip_spikes=False.*train.skip_spikes=True"):
        spikes.check_resume(saved, TrainConfig(skip_spikes=True), "run")
    with pytest.raises(ConfigError, match="spike_window=100.*spike_window=8"):
        spikes.check_resume({"train": {"skip_spikes": True, "spike_window": 100}},
                            TrainConfig(skip_spikes=True, spike_window=8), "run")


# --- the step, under pmap, jit shardings and the CPU path, with gradient accumulation -----------

# The spike decision is the non-finite skip's (steps.should_update), which test_nonfinite.py
# runs under FSDP too; here the two strategies whose reductions differ most.
STRATEGIES = {
    "pmap": (dict(strategy="pmap"), {}, 8),
    "cpu_dp_grad_accum": (dict(data=4), dict(grad_accum=2), 4),  # training/cpu.py's all-reduce
}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_spike_step_is_skipped_bitwise_and_counted(spiky, fast_compiles, strategy):
    mesh, optim, n = STRATEGIES[strategy]
    cfg = tiny(mesh, dict(skip_spikes=True, spike_window=4, spike_warmup=3), **optim)
    plan = make_plan(cfg, devices=jax.devices()[:n])
    tx, schedule = make_optimizer(cfg.optim, cfg.train.num_steps)
    init = functools.partial(init_state, cfg.model, tx, 0, None, spikes.init(cfg.train))
    abstract = jax.eval_shape(init)
    treedef = jax.tree.structure(abstract)
    step = steps.compile_train_step(cfg, plan, graphdef_of(cfg.model), tx, schedule, abstract,
                                    plan.shardings(abstract))
    leaves = jax.tree.leaves(plan.init(init))
    # warm-up: a spike this early is applied (and recorded); 4 more fill the window again
    for i in range(6):
        leaves, m = step(leaves, plan.put_batch(batch_of(i, spike=i == 1)))
        assert np.max(m["skipped_steps"]) == 0 and np.max(m["spike_steps"]) == 0
    before = jax.tree.unflatten(treedef, [np.asarray(x) for x in leaves])
    leaves, m = step(leaves, plan.put_batch(batch_of(10, spike=True)))
    after = jax.tree.unflatten(treedef, [np.asarray(x) for x in leaves])
    assert np.min(m["skipped_steps"]) == 1 and np.min(m["spike_steps"]) == 1
    assert np.all(np.isfinite(m["loss"]))
    for a, b in zip(jax.tree.leaves((before.params, before.opt_state)),
                    jax.tree.leaves((after.params, after.opt_state))):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    # the spike is recorded (a lasting regime becomes the baseline); the step counter moves on
    assert int(np.ravel(after.spikes["count"])[0]) == 7
    np.testing.assert_array_equal(after.step, before.step + 1)
    leaves, m = step(leaves, plan.put_batch(batch_of(11)))  # a normal step trains again
    assert np.max(m["skipped_steps"]) == 0


# --- checkpoints ---------------------------------------------------------------------------------

@struct.dataclass
class StateBeforeSpikes:  # TrainState as it was before train.skip_spikes existed
    params: object
    opt_state: object
    step: object
    rng: object
    trainable: str | None = struct.field(pytree_node=False, default=None)


def test_a_checkpoint_from_before_skip_spikes_still_restores_and_the_stats_are_saved(tmp_path):
    cfg = tiny()
    tx, _ = make_optimizer(cfg.optim, 10)
    state = init_state(cfg.model, tx, 0)
    old = StateBeforeSpikes(state.params, state.opt_state, state.step, state.rng)
    assert jax.tree.leaves(old) and len(jax.tree.leaves(old)) == len(jax.tree.leaves(state))
    with ocp.StandardCheckpointer() as c:
        c.save(tmp_path / "old", old)
    with ocp.StandardCheckpointer() as c:
        restored = c.restore(tmp_path / "old", jax.eval_shape(lambda: state))
    assert isinstance(restored, TrainState) and restored.spikes is None
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()

    on = dataclasses.replace(cfg.train, skip_spikes=True, spike_window=4)
    stats = spikes.record(spikes.init(on), 2.5, 0.5, jnp.asarray(True))
    with_stats = state.replace(spikes=stats)
    with ocp.StandardCheckpointer() as c:
        c.save(tmp_path / "on", with_stats)
    with ocp.StandardCheckpointer() as c:
        back = c.restore(tmp_path / "on", jax.eval_shape(lambda: with_stats))
    assert int(back.spikes["count"]) == 1 and float(back.spikes["losses"][0]) == 2.5


# --- the gradient norm, computed once ------------------------------------------------------------

def test_clip_given_the_norm_is_bitwise_optax_clip_by_global_norm():
    grads = {"a": jnp.linspace(-3.0, 2.0, 12).reshape(3, 4), "b": jnp.full((5,), 0.25)}
    for max_norm in (0.1, 1e3):  # clipping, and not
        ours = jax.jit(lambda g: clip_by_global_norm(max_norm).update(
            g, optax.EmptyState(), grad_norm=optax.tree.norm(g))[0])(grads)
        ref = jax.jit(lambda g: optax.clip_by_global_norm(max_norm).update(
            g, optax.EmptyState())[0])(grads)
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_train_steps_are_bitwise_those_of_optax_clipping_and_compute_the_norm_once(
        fast_compiles):
    cfg = tiny(grad_clip=0.05, lr=1e-2)  # clips every step
    tx, schedule = make_optimizer(cfg.optim, cfg.train.num_steps)
    # the optimizer before this change: optax's clip, which computes the norm itself
    reference = optax.chain(optax.clip_by_global_norm(cfg.optim.grad_clip),
                            make_optimizer(dataclasses.replace(cfg.optim, grad_clip=None),
                                           cfg.train.num_steps)[0])
    graphdef = graphdef_of(cfg.model)
    runs = []
    for t in (tx, reference):
        step = jax.jit(steps.train_step_fn(cfg, graphdef, t, schedule))
        state = init_state(cfg.model, t, 0)
        norms = []
        for i in range(3):
            state, m = step(state, batch_of(i))
            norms.append(float(m["grad_norm"]))
        assert min(norms) > cfg.optim.grad_clip  # clipping was active
        runs.append((jax.tree.leaves(state.params), norms,
                     str(jax.make_jaxpr(steps.train_step_fn(cfg, graphdef, t, schedule))(
                         state, batch_of(0)))))
    (ours, our_norms, our_jaxpr), (ref, ref_norms, ref_jaxpr) = runs
    assert our_norms == ref_norms
    for a, b in zip(ours, ref):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    # one sqrt for the global norm (plus Adam's, per leaf) where optax's clip adds another
    assert ref_jaxpr.count(" sqrt ") - our_jaxpr.count(" sqrt ") == 1


# --- the loop ------------------------------------------------------------------------------------

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 20


def test_a_run_with_skip_spikes_logs_spikes_and_checkpoints_its_statistics(tmp_path, spiky,
                                                                          monkeypatch,
                                                                          fast_compiles):
    (tmp_path / "t.txt").write_text(TEXT)
    real = steps.train_step_fn

    def spiking_at_9(*args, **kwargs):  # state.step 8 is the loop's step 9
        step = real(*args, **kwargs)

        def spiked(state, batch):
            targets = batch["targets"].at[..., 0].set(
                jnp.where(state.step == 8, SPIKE, batch["targets"][..., 0]))
            return step(state, dict(batch, targets=targets))

        return spiked

    monkeypatch.setattr(steps, "train_step_fn", spiking_at_9)
    cfg = {"model": dict(vocab_size=0, max_len=32, num_layers=1, num_heads=2, d_model=32),
           "data": dict(dataset="text_file", text_file=str(tmp_path / "t.txt"), tokenizer="char",
                        seq_len=32, batch_size=8, data_dir=str(tmp_path / "tfds")),
           "optim": dict(lr=1e-3, warmup_steps=0, schedule="constant"),
           "train": dict(num_steps=10, log_every=1, eval_every=100, eval_steps=1,
                         checkpoint_every=10, keep_checkpoints=1, sample_tokens=0,
                         skip_spikes=True, spike_window=6, spike_warmup=4)}
    train(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [r["step"] for r in rows if r["skipped_steps"]] == [9]
    assert [r["step"] for r in rows if r["spike_steps"]] == [9]
    directory = (tmp_path / "run" / "checkpoints").absolute()
    with ocp.CheckpointManager(directory,
                               item_handlers={"state": ocp.StandardCheckpointHandler()}) as m:
        saved = m.restore(10, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    assert int(np.asarray(saved["spikes"]["count"])) == 10  # the spike is in the window
    with pytest.raises(ConfigError, match="train.skip_spikes=True"):
        train(dict(cfg, train=dict(cfg["train"], skip_spikes=False, num_steps=12)),
              tmp_path / "run")
