"""Non-finite steps: a step whose loss or gradient norm is not finite leaves the params and the
optimizer state bitwise as they were, under every strategy and with gradient accumulation; the
loop counts skipped steps, stops after train.max_consecutive_skips of them with a clear error,
and never writes a non-finite value to a checkpoint.

The TrainState and the optimizer state keep their structure (no counter is added to them), so
checkpoints written before skipping existed restore as they always did (tests/test_training.py).

Non-finite values are injected where a test chooses: `poison` patches the loss so that a batch
whose targets hold POISON gives a NaN loss with finite gradients ("loss") or a finite loss with
infinite gradients ("grads"); POISON is negative, i.e. an unscored position, so the batch is otherwise normal.
"""

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from gptjax.config import Config, ConfigError, TrainConfig
from gptjax.parallel import make_plan
from gptjax.training import metrics, steps
from gptjax.training.loop import train
from gptjax.training.optim import make_optimizer
from gptjax.training.skips import NonFiniteError
from gptjax.training.state import graphdef_of, init_state

POISON = -7

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 20


@jax.custom_vjp
def infinite_gradient_if(x, hit):
    """x, whose gradient is infinite where `hit` holds."""
    return x


infinite_gradient_if.defvjp(lambda x, hit: (x, hit),
                            lambda hit, g: (g * jnp.where(hit, jnp.inf, 1.0), None))


@pytest.fixture
def poison(monkeypatch):
    """poison(kind): from now on, batches holding POISON in their targets are non-finite."""
    real = steps.cross_entropy_sums

    def patch(kind):
        def sums(logits, targets, z_loss=0.0):
            ce, z, n = real(logits, targets, z_loss)
            hit = jnp.any(targets == POISON)
            if kind == "loss":
                return jnp.where(hit, jnp.nan, ce), z, n
            return infinite_gradient_if(ce, hit), z, n

        monkeypatch.setattr(steps, "cross_entropy_sums", sums)

    return patch


# --- the pure step, under every strategy ---------------------------------------------------------

def tiny(mesh=None, **optim) -> Config:
    return Config.from_dict({
        "model": dict(vocab_size=64, max_len=16, num_layers=1, num_heads=4, d_model=32,
                      attention="reference"),
        "data": dict(seq_len=16, batch_size=16),
        "optim": {"lr": 1e-2, "warmup_steps": 0, **optim},
        "train": dict(num_steps=10), "mesh": mesh or {}})


def batch_of(seed, poisoned=False):
    x = np.random.default_rng(seed).integers(0, 64, (16, 17)).astype(np.int32)
    batch = {"inputs": x[:, :-1], "targets": x[:, 1:].copy()}
    if poisoned:  # one position of one row: one device's slice, one micro-batch
        batch["targets"][0, 3] = POISON
    return batch


def on_host(leaves):
    return [np.asarray(x) for x in leaves]


STRATEGIES = {
    "single": (dict(), {}, 1),
    "jit_dp": (dict(data=8), {}, 8),  # on CPU devices: the flat all-reduce of training/cpu.py
    "pmap": (dict(strategy="pmap"), {}, 8),
    "fsdp": (dict(data=1, fsdp=8), {}, 8),
    "dp_grad_accum": (dict(data=4), dict(grad_accum=2), 4),
}


@pytest.mark.parametrize("strategy,kind", [(s, "loss") for s in STRATEGIES] + [("fsdp", "grads")])
def test_a_non_finite_step_leaves_params_and_optimizer_state_bitwise(poison, fast_compiles,
                                                                     strategy, kind):
    mesh, optim, n = STRATEGIES[strategy]
    poison(kind)
    cfg = tiny(mesh, **optim)
    plan = make_plan(cfg, devices=jax.devices()[:n])
    tx, schedule = make_optimizer(cfg.optim, cfg.train.num_steps)
    init = functools.partial(init_state, cfg.model, tx, 0)
    abstract = jax.eval_shape(init)
    step = steps.compile_train_step(cfg, plan, graphdef_of(cfg.model), tx, schedule, abstract,
                                    plan.shardings(abstract))
    treedef = jax.tree.structure(abstract)
    leaves, m = step(jax.tree.leaves(plan.init(init)), plan.put_batch(batch_of(0)))
    assert np.max(m["skipped_steps"]) == 0
    before = on_host(leaves)

    leaves, m = step(leaves, plan.put_batch(batch_of(1, poisoned=True)))
    after = on_host(leaves)
    assert np.min(m["skipped_steps"]) == 1
    # "loss": a NaN loss with finite (zero) gradients; "grads": a finite loss, infinite gradients
    assert np.all(np.isfinite(m["grad_norm"])) == (kind == "loss")
    assert np.all(np.isfinite(m["loss"])) == (kind == "grads")
    old, new = jax.tree.unflatten(treedef, before), jax.tree.unflatten(treedef, after)
    np.testing.assert_array_equal(new.step, old.step + 1)  # the step counts; the state stays
    for a, b in zip(jax.tree.leaves((old.params, old.opt_state, old.rng)),
                    jax.tree.leaves((new.params, new.opt_state, new.rng))):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()  # bitwise

    leaves, m = step(leaves, plan.put_batch(batch_of(2)))  # training goes on
    assert np.max(m["skipped_steps"]) == 0
    # the schedule follows the updates applied: one so far, not the two steps taken
    assert float(np.ravel(m["lr"])[0]) == pytest.approx(float(schedule(1)))
    assert float(schedule(1)) != pytest.approx(float(schedule(2)))
    params = jax.tree.unflatten(treedef, on_host(leaves)).params
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))
    assert any(a.tobytes() != b.tobytes()
               for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(params)))


def test_skipped_steps_are_summed_over_the_window_and_lr_follows_applied_updates():
    window = [{"loss": 1.0, "lr": 0.1, "skipped_steps": 1.0},
              {"loss": 3.0, "lr": 0.2, "skipped_steps": 0.0},
              {"loss": 2.0, "lr": 0.3, "skipped_steps": 1.0}]
    row = metrics.window_row(window)
    assert row["skipped_steps"] == 2.0 and row["train_loss"] == 2.0 and row["lr"] == 0.3


@pytest.mark.parametrize("value", [-1, 1.5, "10", True])
def test_max_consecutive_skips_is_validated(value):
    with pytest.raises(ConfigError, match="train.max_consecutive_skips"):
        TrainConfig(max_consecutive_skips=value)


# --- the loop ------------------------------------------------------------------------------------

def run_config(tmp: pathlib.Path, **sections) -> dict:
    text = tmp / "tiny.txt"
    if not text.exists():
        text.write_text(TEXT)
    cfg = {
        "model": dict(vocab_size=0, max_len=32, num_layers=1, num_heads=2, d_model=32),
        "data": dict(dataset="text_file", text_file=str(text), tokenizer="char", seq_len=32,
                     batch_size=8, data_dir=str(tmp / "tfds")),
        "optim": dict(lr=3e-3, min_lr=3e-4, warmup_steps=2, schedule="constant"),
        "train": dict(num_steps=16, log_every=1, eval_every=100, eval_steps=1,
                      checkpoint_every=4, keep_checkpoints=2, sample_tokens=0),
    }
    for name, fields in sections.items():
        cfg[name].update(fields)
    return cfg


def read_metrics(workdir) -> list[dict]:
    return [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").open()]


def checkpoints(workdir) -> dict[int, list]:
    """Every checkpoint on disk: step -> its state's leaves, read back from the files."""
    directory = pathlib.Path(workdir) / "checkpoints"
    with ocp.CheckpointManager(directory.absolute(),
                               item_handlers={"state": ocp.StandardCheckpointHandler()}) as m:
        return {s: jax.tree.leaves(m.restore(s, args=ocp.args.Composite(
            state=ocp.args.StandardRestore()))["state"]) for s in m.all_steps()}


def test_a_huge_learning_rate_stops_the_run_and_no_checkpoint_holds_a_non_finite_value(
        tmp_path):
    workdir = tmp_path / "run"
    cfg = run_config(tmp_path, optim=dict(lr=1e30, warmup_steps=0),
                     train=dict(num_steps=40, max_consecutive_skips=5))
    with pytest.raises(NonFiniteError) as caught:
        train(cfg, workdir)
    message = str(caught.value)
    rows = read_metrics(workdir)
    assert all("skipped_steps" in r for r in rows)
    skipped = [r["step"] for r in rows if r["skipped_steps"]]
    stop = skipped[0] + 4  # the fifth skip in a row
    assert skipped[:5] == list(range(skipped[0], stop + 1))
    assert rows[-1]["step"] <= stop + 1  # flags are read one step behind, between checkpoints
    saved = checkpoints(workdir)
    assert saved and max(saved) <= stop  # no save after the limit
    newest = max(saved)
    for pattern in (f"step {stop}: 5 steps in a row", "max_consecutive_skips=5",
                    f"last update applied was step {skipped[0] - 1}",
                    f"newest checkpoint is step {newest} at {workdir / 'checkpoints' / str(newest)}",
                    "optim.lr=1e+30", "model.dtype=float32", "bfloat16"):
        assert pattern in message, (pattern, message)
    for step, leaves in saved.items():
        assert all(np.all(np.isfinite(x)) for x in leaves
                   if np.issubdtype(np.asarray(x).dtype, np.floating)), step


def poison_steps(monkeypatch, bad: set[int]):
    """The train step sees POISON in its targets at the steps (1-based, as the loop counts them)
    in `bad`."""
    real = steps.train_step_fn

    def train_step_fn(*args, **kwargs):
        step = real(*args, **kwargs)
        marked = jnp.asarray(sorted(bad)) - 1  # state.step before step k is k - 1

        def poisoned(state, batch):
            hit = jnp.any(state.step == marked)
            targets = batch["targets"].at[..., 0].set(
                jnp.where(hit, POISON, batch["targets"][..., 0]))
            return step(state, dict(batch, targets=targets))

        return poisoned

    monkeypatch.setattr(steps, "train_step_fn", train_step_fn)


def test_a_float16_run_skips_its_overflowing_steps_and_keeps_training(tmp_path, poison,
                                                                      monkeypatch):
    bad = {3, 7, 8, 13}
    poison("grads")
    poison_steps(monkeypatch, bad)
    seen = {}

    def remember(step, row, run):
        seen[step] = [np.asarray(x) for x in jax.tree.leaves((run.state.params,
                                                              run.state.opt_state))]

    cfg = run_config(tmp_path, model=dict(dtype="float16"),
                     train=dict(max_consecutive_skips=3))  # 7 and 8: two in a row
    final = train(cfg, tmp_path / "run", callbacks=[remember])
    rows = read_metrics(tmp_path / "run")
    assert final["step"] == 16 and [r["step"] for r in rows] == list(range(1, 17))
    assert {r["step"] for r in rows if r["skipped_steps"]} == bad
    for k in bad:  # the state after a skipped step is the state before it
        assert all(a.tobytes() == b.tobytes() for a, b in zip(seen[k - 1], seen[k])), k
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.3
    assert all(np.all(np.isfinite(x)) for x in seen[16])


def test_resume_with_skipped_steps_is_bitwise(tmp_path, poison, monkeypatch):
    poison("loss")
    poison_steps(monkeypatch, {3, 6, 10})
    cfg = run_config(tmp_path, model=dict(dropout=0.1))
    train(cfg, tmp_path / "straight")

    class Stop(Exception):
        pass

    def stop_at_8(step, row, run):
        if step == 8:  # after its checkpoint has started
            raise Stop

    with pytest.raises(Stop):
        train(cfg, tmp_path / "resumed", callbacks=[stop_at_8])
    train(cfg, tmp_path / "resumed")
    a, b = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
    assert [r["step"] for r in b] == list(range(1, 17))
    for x, y in zip(a, b):
        assert {k: x[k] for k in ("train_loss", "grad_norm", "lr", "skipped_steps")} == {
            k: y[k] for k in ("train_loss", "grad_norm", "lr", "skipped_steps")}, x["step"]
    for x, y in zip(checkpoints(tmp_path / "straight")[16], checkpoints(tmp_path / "resumed")[16]):
        assert x.tobytes() == y.tobytes()
