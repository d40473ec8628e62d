"""The pure pieces of training: schedules, the weight-decay mask, gradient accumulation, the
loss, FLOPs/MFU arithmetic and the loop's input checks."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from gptjax.config import Config, ConfigError, OptimConfig
from gptjax.training import optim
from gptjax.training import (SCHEDULES, cross_entropy, decay_mask, graphdef_of, init_state,
                             make_optimizer, make_schedule, train_step_fn)
from gptjax.training import metrics
from gptjax.training.state import check_trainable, path_name
from gptjax.training.loop import every
from gptjax.training.start import check_batch, fit_sample, resolve_vocab


def tiny(**optim) -> Config:
    return Config.from_dict(dict(
        model=dict(vocab_size=23, max_len=16, num_layers=1, num_heads=2, d_model=32),
        data=dict(seq_len=16, batch_size=8), optim=optim, train=dict(num_steps=50)))


def fresh(cfg, tx, seed=0):
    return jax.jit(lambda: init_state(cfg.model, tx, seed))()


def batch_of(b=8, t=16, v=23, seed=0):
    x = np.random.default_rng(seed).integers(0, v, (b, t + 1)).astype(np.int32)
    return {"inputs": x[:, :-1], "targets": x[:, 1:]}


# --- schedules: the optax formulas, written out --------------------------------------------

def test_cosine_schedule_is_warmup_then_cosine_to_min_lr():
    o = OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=100, schedule="cosine")
    f = make_schedule(o, 2000)
    for step in (0, 1, 50, 99, 100):
        assert f(step) == pytest.approx(1e-3 * min(step, 100) / 100, rel=1e-5)
    for step in (100, 500, 1000, 1999, 2000):
        ratio = (step - 100) / 1900
        expect = 1e-4 + 0.5 * (1 + math.cos(math.pi * ratio)) * (1e-3 - 1e-4)
        assert f(step) == pytest.approx(expect, rel=1e-5)
    assert f(5000) == pytest.approx(1e-4, rel=1e-5)  # held after decay_steps


def test_linear_constant_wsd_schedules():
    o = OptimConfig(lr=1.0, min_lr=0.1, warmup_steps=10, schedule="linear")
    f = make_schedule(o, 110)
    assert [float(f(s)) for s in (0, 5, 10, 60, 110, 200)] == pytest.approx(
        [0, 0.5, 1.0, 0.55, 0.1, 0.1], rel=1e-5)
    f = make_schedule(dataclasses.replace(o, schedule="constant"), 110)
    assert [float(f(s)) for s in (0, 5, 10, 1000)] == pytest.approx([0, 0.5, 1, 1])
    for name in SCHEDULES:  # no warmup: the full rate from the first step
        f = make_schedule(dataclasses.replace(o, schedule=name, warmup_steps=0), 110)
        assert float(f(0)) == pytest.approx(1.0), name
    f = make_schedule(dataclasses.replace(o, schedule="wsd", wsd_decay_fraction=0.2), 110)
    # warmup 10, stable until 90, the last 20 steps decay linearly to min_lr
    assert [float(f(s)) for s in (5, 10, 50, 90, 100, 110, 150)] == pytest.approx(
        [0.5, 1, 1, 1, 0.55, 0.1, 0.1], rel=1e-5)
    f = make_schedule(dataclasses.replace(o, schedule="cosine", decay_steps=60), 1000)
    assert float(f(60)) == pytest.approx(0.1) and float(f(35)) == pytest.approx(0.55)


def test_schedule_registry_drives_validation():
    assert {"cosine", "linear", "constant", "wsd"} <= set(SCHEDULES)
    with pytest.raises(ConfigError, match=r"optim.schedule='exp'.*choose one of"):
        optim.check(OptimConfig(schedule="exp"))  # the registry judges the name
    with pytest.raises(ConfigError, match=r"optim.decay_steps=50 .*> optim.warmup_steps=100"):
        OptimConfig(warmup_steps=100, decay_steps=50)


# --- the optimizer ---------------------------------------------------------------------------

def test_decay_mask_excludes_norms_biases_embeddings():
    cfg = tiny()
    params = jax.eval_shape(lambda: init_state(cfg.model, make_optimizer(cfg.optim, 10)[0], 0)
                            ).params
    names = {jax.tree_util.keystr(p): m for p, m in
             jax.tree_util.tree_leaves_with_path(decay_mask(params))}
    decayed = sorted(k for k, m in names.items() if m)
    assert decayed and all("kernel" in k for k in decayed)
    assert all(not m for k, m in names.items()
               if "ln_" in k or "bias" in k or "embedding" in k), names
    assert len(decayed) == 6  # q, k, v, out, fc, proj of the one block
    with_emb = jax.tree_util.tree_leaves_with_path(decay_mask(params, decay_embeddings=True))
    assert {jax.tree_util.keystr(p) for p, m in with_emb if m} - set(decayed) == {
        "['wpe']['embedding'].value", "['wte']['embedding'].value"}


def test_weight_decay_leaves_masked_params_alone():
    cfg = tiny(lr=0.1, warmup_steps=0, schedule="constant", weight_decay=0.5, grad_clip=None)
    tx, _ = make_optimizer(cfg.optim, 10)
    state = fresh(cfg, tx)
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    updates, _ = jax.jit(tx.update)(zeros, state.opt_state, state.params)
    for (path, u), p in zip(jax.tree_util.tree_leaves_with_path(updates),
                            jax.tree.leaves(state.params)):
        if "kernel" in jax.tree_util.keystr(path):  # AdamW: -lr * wd * p with zero gradients
            np.testing.assert_allclose(u, -0.1 * 0.5 * p, rtol=1e-6)
        else:
            assert not np.any(u), jax.tree_util.keystr(path)


def test_grad_accumulation_equals_one_big_batch():
    # Plain SGD, so parameters differ exactly as the gradients do (Adam would magnify the
    # rounding noise of near-zero gradients into sign flips).
    cfg = tiny()
    tx, schedule = optax.sgd(1.0), optax.constant_schedule(1.0)
    gd = graphdef_of(cfg.model)
    batch = batch_of()
    results = []
    for k in (1, 4):
        c = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, grad_accum=k))
        step = jax.jit(train_step_fn(c, gd, tx, schedule))
        state = fresh(cfg, tx)
        for _ in range(2):
            state, m = step(state, batch)
        results.append((state, m))
    (a, ma), (b, mb) = results
    assert float(ma["loss"]) == pytest.approx(float(mb["loss"]), rel=1e-5)
    assert float(ma["grad_norm"]) == pytest.approx(float(mb["grad_norm"]), rel=1e-5)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    assert int(a.step) == int(b.step) == 2  # one optimizer update per step either way


def test_clipping_and_metrics():
    cfg = tiny(lr=1e-3, warmup_steps=0, schedule="constant", grad_clip=1e-3)
    tx, schedule = make_optimizer(cfg.optim, 50)
    step = jax.jit(train_step_fn(cfg, graphdef_of(cfg.model), tx, schedule))
    new, m = step(fresh(cfg, tx), batch_of())
    assert set(m) == {"loss", "grad_norm", "lr", "skipped_steps"}
    assert float(m["skipped_steps"]) == 0.0  # a finite step is applied (tests/test_nonfinite.py)
    assert float(m["grad_norm"]) > 1e-3  # reported before clipping
    assert float(m["lr"]) == pytest.approx(1e-3)
    assert float(m["loss"]) == pytest.approx(math.log(23), rel=0.05)  # a fresh model ~ uniform


def test_dropout_key_changes_per_step_and_is_reproducible():
    cfg = tiny(lr=1e-3, warmup_steps=0)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dropout=0.5))
    tx, schedule = make_optimizer(cfg.optim, 50)
    step = jax.jit(train_step_fn(cfg, graphdef_of(cfg.model), tx, schedule))
    batch = batch_of()
    s0 = fresh(cfg, tx)
    _, m_a = step(s0, batch)
    _, m_b = step(fresh(cfg, tx), batch)
    _, m_c = step(s0.replace(step=s0.step + 1), batch)
    assert float(m_a["loss"]) == float(m_b["loss"])
    assert float(m_a["loss"]) != float(m_c["loss"])


def test_cross_entropy_and_z_loss():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 5)), jnp.float32)
    targets = jnp.asarray([[0, 1, 2], [3, 4, 0]])
    ce, z = cross_entropy(logits, targets, z_loss=1e-2)
    log_p = jax.nn.log_softmax(logits)
    expect = -jnp.take_along_axis(log_p, targets[..., None], -1).mean()
    assert float(ce) == pytest.approx(float(expect), rel=1e-6)
    assert float(z) == pytest.approx(
        1e-2 * float(jnp.mean(jax.nn.logsumexp(logits, -1) ** 2)), rel=1e-6)
    assert float(cross_entropy(logits, targets)[1]) == 0.0


# --- FLOPs and MFU ---------------------------------------------------------------------------

def test_flops_per_token_is_6n_plus_12ldt():
    cfg = tiny()
    params = jax.eval_shape(lambda: init_state(cfg.model, optax.sgd(0.1), 0)).params
    total = sum(x.size for x in jax.tree.leaves(params))
    n = metrics.matmul_params(params, cfg.model)
    assert n == total - 16 * 32  # all but the learned positions (wte is the tied LM head)
    assert metrics.flops_per_token(n, cfg.model, 16) == 6 * n + 12 * 1 * 32 * 16


def test_peak_flops_table():
    assert metrics.peak_flops("TPU v5 lite") == 197e12
    assert metrics.peak_flops("TPU v5p") == 459e12
    assert metrics.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert metrics.peak_flops("NVIDIA A100-SXM4-40GB") == 312e12
    assert metrics.peak_flops("cpu") is None
    assert metrics.peak_flops("cpu", 1.8e11) == 1.8e11


def test_window_row_averages_whatever_the_step_returns():
    window = [{"grad_norm": 1.0, "loss": 2.0, "lr": 0.1, "new_metric": 4.0},
              {"grad_norm": 3.0, "loss": 4.0, "lr": 0.2, "new_metric": 8.0}]
    row = metrics.window_row(window)
    # loss under metrics.jsonl's name, lr the window's last value, a new metric by itself
    assert row == {"train_loss": 3.0, "lr": 0.2, "grad_norm": 2.0, "new_metric": 6.0}
    assert list(row)[:2] == ["train_loss", "lr"]  # the columns metrics.jsonl always led with


def test_meter_keeps_the_first_step_and_pauses_out_of_tokens_per_sec():
    import time

    meter = metrics.Meter(tokens_per_step=100)
    time.sleep(0.2)  # "compilation": counted in the first step, not in the window
    assert meter.first({"loss": np.float32(1.0), "lr": np.float32(0.1)}) >= 0.2
    meter.add({"loss": np.float32(3.0), "lr": np.float32(0.2)})
    meter.pause([])
    time.sleep(0.2)  # an evaluation: out of the window
    meter.resume()
    row = meter.read()
    assert row["train_loss"] == 2.0 and row["lr"] == np.float32(0.2)
    assert row["ms_per_step"] < 150  # one step, neither sleep counted
    assert row["tokens_per_sec"] == pytest.approx(1e5 / row["ms_per_step"])
    assert "mfu" not in row  # no peak FLOP/s known


def test_actions_are_due_every_n_steps_and_at_the_last():
    due = every(10, 0)
    assert [s for s in range(1, 26) if due(s, s == 25)] == [10, 20, 25]
    due = every(10, 4)  # evaluations and the extra samples of train.sample_every
    assert [s for s in range(1, 21) if due(s, False)] == [4, 8, 10, 12, 16, 20]


def test_fit_sample_keeps_prompt_and_sample_within_learned_positions():
    learned = tiny().model  # max_len=16
    s = fit_sample([1, 2, 3], 5, learned)  # fits: unchanged
    assert (s.prompt, s.num_tokens) == ((1, 2, 3), 5)
    s = fit_sample([1, 2, 3], 40, learned)  # the sample is shortened
    assert (s.prompt, s.num_tokens) == ((1, 2, 3), 13)
    s = fit_sample(list(range(30)), 40, learned)  # the prompt fills them: its last tokens
    assert (s.prompt, s.num_tokens) == (tuple(range(15, 30)), 1)
    assert fit_sample([], 4, learned).prompt == (0,)  # an empty prompt: token 0
    rope = dataclasses.replace(learned, position="rope")
    assert fit_sample([1, 2, 3], 40, rope).num_tokens == 40  # no table of positions to leave


# --- the loop's checks ------------------------------------------------------------------------

def test_vocab_size_zero_comes_from_the_tokenizer():
    cfg = Config.from_dict(dict(model=dict(vocab_size=0, max_len=16, num_layers=1, num_heads=2,
                                           d_model=32), data=dict(seq_len=16)))
    assert resolve_vocab(cfg, 65).model.vocab_size == 65
    big = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=128))
    assert resolve_vocab(big, 65).model.vocab_size == 128  # padding up is fine
    with pytest.raises(ConfigError, match=r"model.vocab_size=50 is smaller .* \(65\)"):
        resolve_vocab(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model,
                                                                         vocab_size=50)), 65)


def test_check_batch():
    check_batch(tiny(grad_accum=2), 4)  # 8 = 2 micro-batches of 4 = 4 devices x 1
    with pytest.raises(ConfigError, match=r"data.batch_size=8 does not divide over 3 devices"):
        check_batch(tiny(), 3)
    with pytest.raises(ConfigError, match=r"not divisible by optim.grad_accum=3"):
        check_batch(tiny(grad_accum=3), 1)


@pytest.mark.parametrize("name", ["quickstart", "shakespeare_char", "shakespeare_char_cpu",
                                  "gpt2_124m"])
def test_experiment_configs_are_valid(name):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "configs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.model.vocab_size = config.model.vocab_size or 65  # what the tokenizer would give
    cfg = Config.from_dict(config)
    assert cfg.data.seq_len <= cfg.model.max_len


def test_shakespeare_cpu_is_nanogpts_recipe():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "shakespeare_char_cpu.py"
    spec = importlib.util.spec_from_file_location("cpu", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    assert (c.model.num_layers, c.model.num_heads, c.model.d_model, c.data.seq_len,
            c.data.batch_size, c.train.num_steps) == (4, 4, 128, 64, 12, 2000)
    assert (c.optim.lr, c.optim.min_lr, c.optim.warmup_steps, c.optim.b2, c.optim.weight_decay,
            c.optim.grad_clip, c.model.dropout, c.train.eval_steps) == (
                1e-3, 1e-4, 100, 0.99, 0.1, 1.0, 0.0, 20)


def test_cpu_device_count():
    from gptjax.training.host import cpu_device_count, use_cpu_devices

    assert cpu_device_count(0, 12, cores=2) == 1
    assert cpu_device_count(-1, 12, cores=2) == 2
    assert cpu_device_count(-1, 12, cores=8) == 6  # the most devices that divide the batch
    assert cpu_device_count(-1, 7, cores=4) == 1
    assert cpu_device_count(3, 12, cores=2) == 3
    assert use_cpu_devices(-1, 12) is None  # JAX has started in this process: left alone
    with pytest.raises(ConfigError, match=r"mesh.cpu_devices=-2"):
        Config.from_dict(dict(mesh=dict(cpu_devices=-2)))


# --- partial training: the state knows which parameters train ---------------------------------

@pytest.mark.parametrize("grad_accum", [1, 2])
def test_only_the_trainable_params_change_and_hold_optimizer_state(grad_accum):
    cfg = tiny(grad_accum=grad_accum, warmup_steps=0, lr=1e-2)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, tie_embeddings=False))
    tx, schedule = make_optimizer(cfg.optim, 10)
    state = jax.jit(lambda: init_state(cfg.model, tx, 0, trainable=r"^lm_head/"))()
    before = {path_name(p): np.asarray(v) for p, v in nnx.to_flat_state(state.params)}
    # Adam's moments exist for the LM head alone
    moments = {tuple(x.shape) for x in jax.tree.leaves(state.opt_state) if x.ndim}
    assert moments == {(32, 23)}
    step = jax.jit(train_step_fn(cfg, graphdef_of(cfg.model), tx, schedule))
    for i in range(3):
        state, _ = step(state, batch_of(seed=i))
    after = {path_name(p): np.asarray(v) for p, v in nnx.to_flat_state(state.params)}
    assert not np.array_equal(after["lm_head/kernel"], before["lm_head/kernel"])
    frozen = [name for name in before if name != "lm_head/kernel"]
    assert len(frozen) > 10
    for name in frozen:  # bitwise, not just close
        assert after[name].tobytes() == before[name].tobytes(), name


def test_trainable_none_is_every_parameter_as_before():
    cfg = tiny(warmup_steps=0)
    tx, schedule = make_optimizer(cfg.optim, 10)
    step = jax.jit(train_step_fn(cfg, graphdef_of(cfg.model), tx, schedule))
    everything = jax.jit(lambda: init_state(cfg.model, tx, 0, trainable=".*"))()
    default = fresh(cfg, tx)
    assert jax.tree.structure(default.opt_state) == jax.tree.structure(
        tx.init(default.params))
    a, _ = step(default, batch_of())
    b, _ = step(everything, batch_of())
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


def test_a_trainable_pattern_matching_nothing_is_refused():
    cfg = tiny()
    params = jax.eval_shape(lambda: init_state(cfg.model, optax.sgd(0.1), 0)).params
    with pytest.raises(ConfigError, match=r"train.trainable='lm_hed' matches no parameter"):
        check_trainable(params, "lm_hed")
    with pytest.raises(ConfigError, match=r"train.trainable='\(' is invalid: must be a regular"):
        Config.from_dict({"train": {"trainable": "("}})
