"""float16's dynamic loss scaling (gptjax.training.loss_scale): the rule against hand values,
real overflows (nothing injected: a starting scale far above float16's range) skipped with the
scale halved under every strategy and in the loop, which trains on; the state and checkpoints
of other dtypes unchanged; float16 checkpoints written before loss scaling still restore; a
resume is bitwise.
"""

import functools
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from gptjax.config import Config, ConfigError
from gptjax.parallel import make_plan
from gptjax.training import loss_scale, steps
from gptjax.training.checkpoint import load_params
from gptjax.training.loop import train
from gptjax.training.optim import make_optimizer
from gptjax.training.state import graphdef_of, init_state

# Far above float16's 65504: the logits' cotangent alone, scale / positions x (p - y), overflows
# (at most 256 positions per device here).
HUGE = 2.0 ** 32

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 20


# --- the rule ------------------------------------------------------------------------------------

def test_the_scale_halves_on_overflow_and_doubles_after_period_finite_steps():
    state = {"scale": jnp.float32(8.0), "good_steps": jnp.int32(0)}
    seen = []
    for finite in (False, True, True, True, True, False, True):
        state, halved = loss_scale.adjust(state, jnp.asarray(finite), period=3)
        seen.append((float(state["scale"]), int(state["good_steps"]), bool(halved)))
    assert seen == [(4.0, 0, True), (4.0, 1, False), (4.0, 2, False), (8.0, 0, False),
                    (8.0, 1, False), (4.0, 0, True), (4.0, 1, False)]


def test_the_scale_stops_at_its_floor_and_below_float32s_infinity():
    for scale, finite, expected, halved in ((1.0, False, 1.0, False), (1.5, False, 1.0, True),
                                            (2.0 ** 127, True, 2.0 ** 127, False)):
        state = {"scale": jnp.float32(scale), "good_steps": jnp.int32(0)}
        state, h = loss_scale.adjust(state, jnp.asarray(finite), period=1)
        assert (float(state["scale"]), bool(h)) == (expected, halved), scale


@pytest.mark.parametrize("field,value", [("loss_scale", 0.5), ("loss_scale", float("inf")),
                                         ("loss_scale_period", 0),
                                         ("loss_scale_period", 1.5)])
def test_loss_scale_fields_are_validated(field, value):
    with pytest.raises(ConfigError, match=f"optim.{field}"):
        Config.from_dict({"optim": {field: value}})


def test_only_float16_states_hold_a_loss_scale():
    for dtype, held in (("float32", False), ("bfloat16", False), ("float16", True)):
        cfg = Config.from_dict({"model": dict(vocab_size=64, max_len=16, num_layers=1,
                                              num_heads=2, d_model=16, dtype=dtype)})
        tx, _ = make_optimizer(cfg.optim, 10)
        abstract = jax.eval_shape(lambda: init_state(cfg.model, tx, 0,
                                                     loss_scale=loss_scale.init(cfg)))
        names = {jax.tree_util.keystr(p[:1]) for p, _ in
                 jax.tree_util.tree_flatten_with_path(abstract)[0]}
        assert names == {".params", ".opt_state", ".step", ".rng"} | (
            {".loss_scale"} if held else set()), dtype


# --- the pure step, under every strategy ---------------------------------------------------------

def tiny(mesh=None, **optim) -> Config:
    return Config.from_dict({
        "model": dict(vocab_size=64, max_len=16, num_layers=1, num_heads=4, d_model=32,
                      attention="reference", dtype="float16"),
        "data": dict(seq_len=16, batch_size=16),
        "optim": {"lr": 1e-2, "warmup_steps": 0, "loss_scale": HUGE, **optim},
        "train": dict(num_steps=10), "mesh": mesh or {}})


def batch_of(seed):
    x = np.random.default_rng(seed).integers(0, 64, (16, 17)).astype(np.int32)
    return {"inputs": x[:, :-1], "targets": x[:, 1:]}


STRATEGIES = {
    "pmap": (dict(strategy="pmap"), {}, 8),
    "fsdp": (dict(data=1, fsdp=8), {}, 8),  # jit shardings
    # on CPU devices: the flat all-reduce of training/cpu.py, and micro-batches
    "cpu_dp_grad_accum": (dict(data=4), dict(grad_accum=2), 4),
}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_an_overflowing_float16_step_is_skipped_and_halves_the_scale(fast_compiles, strategy):
    mesh, optim, n = STRATEGIES[strategy]
    cfg = tiny(mesh, **optim)
    plan = make_plan(cfg, devices=jax.devices()[:n])
    tx, schedule = make_optimizer(cfg.optim, cfg.train.num_steps)
    init = functools.partial(init_state, cfg.model, tx, 0, loss_scale=loss_scale.init(cfg))
    abstract = jax.eval_shape(init)
    treedef = jax.tree.structure(abstract)
    step = steps.compile_train_step(cfg, plan, graphdef_of(cfg.model), tx, schedule, abstract,
                                    plan.shardings(abstract))
    shardings = plan.shardings(abstract)
    state = jax.tree.map(np.asarray, plan.init(init))  # on the host: the step donates its input
    leaves, m = step(jax.tree.leaves(jax.device_put(state, shardings)),
                     plan.put_batch(batch_of(0)))
    after = jax.tree.unflatten(treedef, [np.asarray(x) for x in leaves])
    assert np.min(m["skipped_steps"]) == 1 and np.min(m["overflow_steps"]) == 1
    assert np.all(np.isfinite(m["loss"])) and not np.any(np.isfinite(m["grad_norm"]))
    assert np.all(after.loss_scale["scale"] == HUGE / 2) and np.all(m["loss_scale"] == HUGE / 2)
    for a, b in zip(jax.tree.leaves((state.params, state.opt_state)),
                    jax.tree.leaves((after.params, after.opt_state))):
        assert a.tobytes() == b.tobytes()  # bitwise: nothing overflowed into them

    # At a scale float16 holds, the same batch trains, and its gradients are unscaled: the
    # same norm as at scale 1 (the loss, computed before any scaling, is the same).
    seen = {}
    for scale in (8.0, 1.0):
        moved = state.replace(loss_scale={"scale": np.float32(scale),
                                          "good_steps": np.int32(0)})
        leaves, m = step(jax.tree.leaves(jax.device_put(moved, shardings)),
                         plan.put_batch(batch_of(0)))
        assert np.max(m["skipped_steps"]) == 0 and np.max(m["overflow_steps"]) == 0
        params = jax.tree.unflatten(treedef, [np.asarray(x) for x in leaves]).params
        assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))
        assert any(a.tobytes() != b.tobytes() for a, b in
                   zip(jax.tree.leaves(state.params), jax.tree.leaves(params)))
        seen[scale] = (float(np.ravel(m["loss"])[0]), float(np.ravel(m["grad_norm"])[0]))
    assert seen[8.0][0] == seen[1.0][0]
    assert seen[8.0][1] == pytest.approx(seen[1.0][1], rel=1e-2)


# --- the loop ------------------------------------------------------------------------------------

def run_config(tmp: pathlib.Path, **sections) -> dict:
    text = tmp / "tiny.txt"
    if not text.exists():
        text.write_text(TEXT)
    cfg = {
        "model": dict(vocab_size=0, max_len=32, num_layers=1, num_heads=2, d_model=32,
                      dtype="float16", dropout=0.1),
        "data": dict(dataset="text_file", text_file=str(text), tokenizer="char", seq_len=32,
                     batch_size=8, data_dir=str(tmp / "tfds")),
        "optim": dict(lr=3e-3, min_lr=3e-4, warmup_steps=2, schedule="constant",
                      loss_scale=HUGE, loss_scale_period=4),
        "train": dict(num_steps=30, log_every=1, eval_every=100, eval_steps=1,
                      checkpoint_every=5, keep_checkpoints=2, sample_tokens=0,
                      max_consecutive_skips=3),
    }
    for name, fields in sections.items():
        cfg[name].update(fields)
    return cfg


def read_metrics(workdir) -> list[dict]:
    return [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").open()]


def saved_states(workdir) -> dict:
    """Every checkpoint on disk: step -> its state as a tree of numpy arrays."""
    directory = pathlib.Path(workdir).absolute() / "checkpoints"
    with ocp.CheckpointManager(directory,
                               item_handlers={"state": ocp.StandardCheckpointHandler()}) as m:
        return {s: m.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore()))[
            "state"] for s in m.all_steps()}


@pytest.fixture(scope="module")
def straight(tmp_path_factory, fast_compiles):
    """A 40-step float16 run from a starting scale far above float16's range: its workdir."""
    tmp = tmp_path_factory.mktemp("float16")
    final = train(run_config(tmp, train=dict(num_steps=40)), tmp / "run")
    assert final["step"] == 40
    return tmp / "run"


def test_a_real_float16_overflow_halves_the_scale_skips_and_keeps_training(straight):
    rows = read_metrics(straight)
    assert [r["step"] for r in rows] == list(range(1, 41))
    overflows = [r["step"] for r in rows if r["overflow_steps"]]
    # 2**32 down to float16's range: many skips in a row (at 2**22 and above, each position's
    # logit gradient, scale / 32 positions per device x ~0.98, overflows alone), none counted
    # toward train.max_consecutive_skips=3
    assert overflows[:11] == list(range(1, 12))
    assert all(r["skipped_steps"] for r in rows if r["overflow_steps"])
    scales = [r["loss_scale"] for r in rows]
    assert scales[0] == HUGE / 2 and max(scales[11:]) <= 2.0 ** 22
    # after loss_scale_period=4 good steps in a row the scale doubles (and may overflow again)
    assert any(b == 2 * a for a, b in zip(scales, scales[1:]))
    trained = [r["train_loss"] for r in rows if not r["skipped_steps"]]
    assert len(trained) >= 20 and trained[-1] < trained[0] - 0.3
    for step, state in saved_states(straight).items():
        assert float(state["loss_scale"]["scale"]) == scales[step - 1]
        assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state["params"]))


def test_a_float16_resume_is_bitwise(straight, tmp_path):
    class Stop(Exception):
        pass

    def stop_at_12(step, row, run):
        if step == 12:  # after step 10's checkpoint, within the scale's search
            raise Stop

    cfg = run_config(straight.parent, train=dict(num_steps=40))
    with pytest.raises(Stop):
        train(cfg, tmp_path / "resumed", callbacks=[stop_at_12])
    train(cfg, tmp_path / "resumed")
    a, b = read_metrics(straight), read_metrics(tmp_path / "resumed")
    keys = ("train_loss", "grad_norm", "loss_scale", "skipped_steps", "overflow_steps")
    assert [{k: r[k] for k in keys} for r in a] == [{k: r[k] for k in keys} for r in b]
    x, y = saved_states(straight)[40], saved_states(tmp_path / "resumed")[40]
    for u, v in zip(jax.tree.leaves(x), jax.tree.leaves(y)):
        assert u.tobytes() == v.tobytes()


def without_loss_scale(workdir, step: int) -> None:
    """Rewrite checkpoint `step`'s state as gptjax wrote it before loss scaling: no loss_scale
    child (TrainState's other children, in their order, exactly as they were)."""
    state = pathlib.Path(workdir).absolute() / "checkpoints" / str(step) / "state"
    with ocp.StandardCheckpointer() as c:
        tree = c.restore(state)
    del tree["loss_scale"]
    shutil.rmtree(state)
    with ocp.StandardCheckpointer() as c:
        c.save(state, tree)


def test_a_float16_checkpoint_from_before_loss_scaling_restores_and_resumes(straight, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(straight, old)
    without_loss_scale(old, 40)
    assert "loss_scale" not in saved_states(old)[40]
    _, params = load_params(old)  # generate's path reads it
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))
    train(run_config(straight.parent, optim=dict(loss_scale=64.0), train=dict(num_steps=44)),
          old)
    rows = read_metrics(old)
    assert [r["step"] for r in rows] == list(range(1, 45))
    assert rows[40]["loss_scale"] in (64.0, 32.0)  # started at optim.loss_scale
    assert "loss_scale" in saved_states(old)[44]


def test_a_resume_may_change_the_dtype_and_the_loss_scale_follows(straight, tmp_path):
    shutil.copytree(straight, tmp_path / "run")
    train(run_config(straight.parent, model=dict(dtype="float32"), train=dict(num_steps=44)),
          tmp_path / "run")
    assert "loss_scale" not in saved_states(tmp_path / "run")[44]
    assert "loss_scale" not in read_metrics(tmp_path / "run")[-1]
