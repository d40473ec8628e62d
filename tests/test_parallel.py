"""gptjax.parallel on 8 CPU devices: every strategy trains the single-device losses, FSDP holds
1/8 of the state per device, checkpoints reshard across meshes, bad meshes fail early."""

import dataclasses
import json
import pathlib
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import PartitionSpec as P

from gptjax.bench import scaling
from gptjax.config import Config, ConfigError
from gptjax.parallel import (MeshError, ShardingError, device_bytes, logical_to_mesh, make_mesh,
                             make_plan, mesh_shape)

pytestmark = pytest.mark.skipif(jax.device_count() != 8,
                                reason="needs the 8 fake CPU devices of conftest.py")

STEPS = 5
# name -> config.mesh; each must reproduce the single-device run
STRATEGIES = {
    "pmap_dp": dict(strategy="pmap"),
    "jit_dp": dict(data=8),
    "fsdp": dict(data=1, fsdp=8),
    "tp": dict(data=1, tensor=8),
    "dp_tp": dict(data=2, tensor=4),
    "fsdp_tp": dict(data=1, fsdp=2, tensor=4),
}  # data x fsdp x tensor all > 1: tests/test_multihost.py


def tiny(mesh=None, batch_size=8, **model) -> Config:
    model = {**dict(vocab_size=64, max_len=16, num_layers=1, num_heads=8, d_model=32,
                    attention="reference"), **model}
    return Config.from_dict({"model": model, "data": dict(seq_len=16, batch_size=batch_size),
                             "optim": dict(lr=1e-2, warmup_steps=0),
                             "train": dict(num_steps=STEPS, seed=0), "mesh": mesh or {}})


@pytest.fixture(scope="module")
def batches():
    return scaling.synthetic_batches(tiny(), STEPS)


@pytest.fixture(scope="module")
def single(fast_compiles, batches):
    return scaling.run(tiny(dict(data=1)), batches, devices=jax.devices()[:1])


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_losses_match_single_device(name, single, batches):
    run = scaling.run(tiny(STRATEGIES[name]), batches)
    np.testing.assert_allclose(run.losses, single.losses, atol=1e-5, rtol=0)
    # ...and the state really is laid out as the strategy says
    fc = run.state.params["blocks"][0]["mlp"]["fc"]["kernel"][...]
    mu = run.state.opt_state[1][0].mu["blocks"][0]["mlp"]["fc"]["kernel"][...]
    expected = {"pmap_dp": P(), "jit_dp": P(), "fsdp": P("fsdp"), "tp": P(None, "tensor"),
                "dp_tp": P(None, "tensor"), "fsdp_tp": P("fsdp", "tensor")}[name]
    for x in (fc, mu):
        assert x.sharding.is_equivalent_to(jax.sharding.NamedSharding(run.plan.mesh, expected),
                                           x.ndim), (name, x.sharding)
    assert len(fc.sharding.device_set) == 8


@pytest.mark.parametrize("name", ["pmap_dp", "jit_dp", "fsdp_tp"])
def test_partial_training_matches_single_device(name, fast_compiles, batches):
    """train.trainable under every kind of strategy: the same losses as one device, and the
    optimizer state holds the trainable parameters only (laid out as the strategy says)."""
    def config(mesh):
        c = tiny(mesh, tie_embeddings=False)
        return dataclasses.replace(c, train=dataclasses.replace(c.train, trainable="^lm_head/"))

    one = scaling.run(config(dict(data=1)), batches, devices=jax.devices()[:1])
    run = scaling.run(config(STRATEGIES[name]), batches)
    np.testing.assert_allclose(run.losses, one.losses, atol=1e-5, rtol=0)
    mu = run.state.opt_state[1][0].mu
    assert list(mu.keys()) == ["lm_head"]


def test_fsdp_holds_an_eighth_per_device(fast_compiles):
    cfg = tiny(dict(data=1, fsdp=8), num_layers=2, d_model=64, vocab_size=256, max_len=64)
    from gptjax.training.optim import make_optimizer
    from gptjax.training.state import init_state

    plan = make_plan(cfg)
    tx, _ = make_optimizer(cfg.optim, STEPS)
    state = plan.init(init_state, cfg.model, tx, 0)
    for part in (state.params, state.opt_state):
        per_device = device_bytes(part)
        total = sum(x.nbytes for x in jax.tree.leaves(part))
        assert len(per_device) == 8
        # Vectors whose axis is not 'embed' (LayerNorm, q/k/v/fc biases) and Adam's count stay
        # replicated, so a little over 1/8; every matrix is split exactly 8 ways.
        for nbytes in per_device.values():
            assert total / 8 <= nbytes <= 1.1 * total / 8, (nbytes, total)
        for x in jax.tree.leaves(part):
            if x.ndim == 2:
                assert x.addressable_shards[0].data.size * 8 == x.size, x.sharding


def test_checkpoint_restores_across_meshes(fast_compiles, tmp_path):
    from gptjax.training.optim import make_optimizer
    from gptjax.training.state import init_state

    cfg = tiny()
    tx, _ = make_optimizer(cfg.optim, STEPS)
    fsdp = make_plan(tiny(dict(data=1, fsdp=8)))
    state = fsdp.init(init_state, cfg.model, tx, 0)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(tmp_path / "fsdp8", state)
    expected = jax.device_get(state)
    for mesh, devices in [(dict(data=2, tensor=4), None), (dict(data=1), jax.devices()[:1])]:
        plan = make_plan(tiny(mesh), devices=devices)
        with ocp.StandardCheckpointer() as ckptr:
            restored = ckptr.restore(tmp_path / "fsdp8", plan.abstract(state))
        for got, want, target in zip(jax.tree.leaves(restored), jax.tree.leaves(expected),
                                     jax.tree.leaves(plan.shardings(state))):
            assert got.sharding.is_equivalent_to(target, got.ndim)
            np.testing.assert_array_equal(np.asarray(got), want)
        fc = restored.params["blocks"][0]["mlp"]["fc"]["kernel"][...]
        assert len(fc.sharding.device_set) == len(plan.mesh.devices.flat)


def test_training_loop_resumes_under_another_mesh(fast_compiles, tmp_path):
    """The real loop: FSDP over 8 trains 4 steps; its step-2 checkpoint, resumed under
    data 2 x tensor 4, trains steps 3-4 to the same losses."""
    import test_training as tt
    from gptjax.training.loop import train

    def cfg(mesh):
        c = tt.tiny_config(tmp_path, model=dict(dropout=0.0, vocab_size=64, num_heads=4),
                           train=dict(num_steps=4, eval_every=100, checkpoint_every=2))
        c["mesh"] = mesh
        return c

    train(cfg(dict(data=1, fsdp=8)), tmp_path / "a")
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "checkpoints" / "2", tmp_path / "b" / "checkpoints" / "2")
    train(cfg(dict(data=2, tensor=4)), tmp_path / "b")
    a, b = ({r["step"]: r["train_loss"] for r in tt.read_metrics(tmp_path / w)
             if "train_loss" in r} for w in "ab")
    assert sorted(b) == [3, 4]
    np.testing.assert_allclose([b[3], b[4]], [a[3], a[4]], atol=1e-5, rtol=0)


def test_activation_constraints_only_under_a_plan():
    from flax import nnx

    from gptjax.model import GPT, apply, split

    cfg = tiny(dict(data=2, tensor=4))
    graphdef, params = split(GPT(cfg.model, rngs=nnx.Rngs(0)))
    tokens = np.zeros((8, 16), np.int32)
    fn = lambda p, t: apply(graphdef, p, t)  # noqa: E731
    plain = jax.jit(fn).lower(params, tokens).as_text()
    planned = make_plan(cfg).jit(fn).lower(params, tokens).as_text()
    assert "sharding_constraint" not in plain
    assert '[{"data"}, {}, {"tensor"}, {}]' in planned  # q/k/v: batch over data, heads over TP
    assert '[{"data"}, {}, {"tensor"}]' in planned  # MLP hidden / logits: over TP


def test_shardings_found_for_plain_dict_optimizer_state():
    """Params that lost their nnx.Variable wrappers (pure dicts) still shard by path."""
    import optax
    from flax import nnx

    from gptjax.model import GPT, split
    from gptjax.parallel import logical_axes, tree_shardings

    cfg = tiny(dict(data=2, fsdp=2, tensor=2))
    _, params = split(nnx.eval_shape(lambda: GPT(cfg.model, rngs=nnx.Rngs(0))))
    pure = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), params.to_pure_dict())
    state = {"params": pure, "opt": optax.adamw(1e-3).init(pure), "step": np.zeros((), np.int32)}
    shardings = tree_shardings(state, make_plan(cfg).mesh, logical=logical_axes(params))
    fc = ("blocks", 0, "mlp", "fc")
    get = lambda tree: tree[fc[0]][fc[1]][fc[2]][fc[3]]  # noqa: E731
    assert get(shardings["params"])["kernel"].spec == P("fsdp", "tensor")
    assert get(shardings["opt"][0].mu)["kernel"].spec == P("fsdp", "tensor")
    assert get(shardings["opt"][0].nu)["bias"].spec == P("tensor")
    assert shardings["params"]["wte"]["embedding"].spec == P("tensor", "fsdp")
    assert shardings["params"]["wpe"]["embedding"].spec == P(None, "fsdp")
    assert shardings["step"].spec == P() and shardings["opt"][0].count.spec == P()


def test_mesh_from_config():
    from gptjax.config import MeshConfig

    assert mesh_shape(MeshConfig(), 8) == {"data": 8, "fsdp": 1, "tensor": 1}
    assert mesh_shape(MeshConfig(fsdp=8), 8) == {"data": 1, "fsdp": 8, "tensor": 1}
    assert mesh_shape(MeshConfig(data=2, fsdp=-1, tensor=2), 8) == {"data": 2, "fsdp": 2,
                                                                     "tensor": 2}
    mesh = make_mesh(MeshConfig(data=2, tensor=4))
    assert mesh.shape == {"data": 2, "fsdp": 1, "tensor": 4} and mesh.devices.size == 8


def test_rules_table():
    assert logical_to_mesh(("embed", "heads")) == P("fsdp", "tensor")
    assert logical_to_mesh(("batch", "seq", "embed")) == P(("data", "fsdp"), None, None)
    assert logical_to_mesh(("norm",)) == P(None)
    mesh = make_mesh(Config.from_dict({"mesh": dict(data=8)}).mesh)
    assert logical_to_mesh(("embed", "mlp"), mesh=mesh) == P(None, None)  # size-1 axes drop
    with pytest.raises(ConfigError, match="logical axis 'experts' has no sharding rule"):
        logical_to_mesh(("experts",))


@pytest.mark.parametrize("mesh, model, batch, error, message", [
    (dict(data=3), {}, 8, MeshError,
     r"mesh data=3 x fsdp=1 x tensor=1 needs 3 devices but 8 are present; make mesh.data \* "
     r"mesh.fsdp \* mesh.tensor = 8"),
    (dict(data=-1, tensor=3), {}, 8, MeshError, r"multiple of 3 devices but 8 are present"),
    (dict(data=2, tensor=4), dict(num_heads=6, d_model=48), 8, ShardingError,
     r"model.num_heads=6 does not divide over mesh.tensor=4"),
    (dict(data=2, tensor=4), dict(num_heads=4, num_kv_heads=2), 8, ShardingError,
     r"model.num_kv_heads=2 does not divide over mesh.tensor=4"),
    (dict(data=1, tensor=8), dict(d_ff=100), 8, ShardingError,
     r"model.d_ff=100 does not divide over mesh.tensor=8"),
    (dict(data=4, tensor=2), dict(vocab_size=65), 8, ShardingError,
     r"model.vocab_size=65 padded to model.vocab_multiple=1 \(65 rows\) does not divide over "
     r"mesh.tensor=2 .*set model.vocab_multiple=2"),
    (dict(data=1, fsdp=8), dict(d_model=36, num_heads=4), 8, ShardingError,
     r"model.d_model=36 does not divide over mesh.fsdp=8"),
    (dict(data=8), {}, 12, ShardingError,
     r"data.batch_size=12 does not split over the batch axes \(mesh.data=8 = 8 shards\)"),
    (dict(strategy="pmap"), {}, 12, ShardingError,
     r"mesh.strategy='pmap' splits the batch over 8 devices, but data.batch_size=12"),
    (dict(strategy="pmap", fsdp=2), {}, 8, ConfigError, r"'pmap' is data parallel only"),
])
def test_bad_input_raises_before_compiling(mesh, model, batch, error, message):
    with pytest.raises(error, match=message):
        make_plan(tiny(mesh, batch_size=batch, **model))


def _quickstart_run(mesh, workdir):
    """The quickstart (2 layers, 3 steps) under `mesh`: (its saved model config, its losses)."""
    from gptjax.ablate import load_config_file
    from gptjax.training.loop import train

    config = load_config_file(pathlib.Path(__file__).parents[1] / "configs/quickstart.py")
    config.train.update(num_steps=3, log_every=1, eval_steps=1, sample_tokens=0,
                        checkpoint_every=100)
    config.model.num_layers = 2
    config.mesh.update(mesh)
    train(config, workdir)
    saved = json.loads((workdir / "config.json").read_text())["model"]
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
    return saved, [r["train_loss"] for r in rows if "train_loss" in r]


@pytest.fixture(scope="module")
def quickstart_dp(fast_compiles, tmp_path_factory):
    return _quickstart_run(dict(data=8), tmp_path_factory.mktemp("quickstart") / "dp")


@pytest.mark.parametrize("mesh, multiple", [(dict(data=-1, tensor=2), 2),
                                            (dict(data=2, tensor=4), 4),
                                            (dict(data=1, fsdp=4, tensor=2), 2)],
                         ids=["dp_tp2", "dp_tp4", "fsdp_tp"])
def test_quickstart_with_a_tensor_axis_pads_its_vocabulary(mesh, multiple, quickstart_dp,
                                                           tmp_path):
    """The quickstart's char vocabulary (odd) with only a tensor axis added: the run pads the
    embedding and LM head to the mesh, masks the padding, and trains the same losses as plain
    data parallelism (which equals one device: test_losses_match_single_device)."""
    one, one_losses = quickstart_dp
    sharded, losses = _quickstart_run(mesh, tmp_path / "sharded")
    assert one["vocab_size"] == sharded["vocab_size"] and one["vocab_size"] % 2  # odd: padded
    assert (one["vocab_multiple"], sharded["vocab_multiple"]) == (1, multiple)
    assert len(losses) == 3
    np.testing.assert_allclose(losses, one_losses, atol=1e-5, rtol=0)


def test_bad_mesh_through_the_loop_writes_nothing(tmp_path):
    import test_training as tt
    from gptjax.training.loop import train

    cfg = tt.tiny_config(tmp_path)
    cfg["mesh"] = dict(data=3)
    with pytest.raises(MeshError, match="needs 3 devices but 8 are present"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
