"""Packed documents (data.document_mask): with segment ids, attention never crosses a document
boundary, in every kernel, every position encoding, and the train and eval steps."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gptjax.config import Config, ConfigError, ModelConfig
from gptjax.model import GPT, check_config, kernels
from gptjax.model.kernels import pallas
from gptjax.model.masks import Mask, causal
from gptjax.model.positions import POSITIONS, alibi_slopes
from gptjax.parallel import make_plan
from gptjax.training import eval_step_fn, graphdef_of, init_state, make_optimizer
from gptjax.training import start
from gptjax.training.steps import compile_train_step, model_inputs

H, D = 4, 16
# Documents per row: lengths (each row sums to T), and the first id (ids need not start at 0).
T = 40
ROWS = [(11, 17, 12), (40,)]
# Every kernel that declares segments=True and runs here (pallas: interpreted, kernel tests).
CPU_KERNELS = [k for k, r in kernels.REQUIREMENTS.items()
               if r.segments and k not in ("cudnn", "pallas")]
# Small tiles: blockwise crosses several blocks, and skips the tiles between documents.
OPTIONS = {"blockwise": dict(block_q=8, block_k=8),
           "pallas": dict(block_q=16, block_k=16, interpret=True)}


def packed(rows=ROWS, first_id=3):
    """(segment ids, positions restarting at each document), int32 [len(rows), sum(row)]."""
    ids = [np.repeat(np.arange(len(r)) + first_id, r) for r in rows]
    pos = [np.concatenate([np.arange(n) for n in r]) for r in rows]
    return np.asarray(ids, np.int32), np.asarray(pos, np.int32)


def spans(row):
    """[(start, end)] of each document of a row of lengths."""
    ends = np.cumsum(row)
    return list(zip(ends - np.asarray(row), ends))


def _inputs(kv_heads, seed=0):
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(kq, (len(ROWS), T, H, D)),
            jax.random.normal(kk, (len(ROWS), T, kv_heads, D)),
            jax.random.normal(kv, (len(ROWS), T, kv_heads, D)))


def _kernel(name):
    if name == "pallas":
        return functools.partial(pallas.pallas_attention, **OPTIONS[name])
    return functools.partial(kernels.get_kernel(name), **OPTIONS.get(name, {}))


pytestmark = pytest.mark.usefixtures("fast_compiles")  # conftest.py: tiny shapes


# --- kernels -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CPU_KERNELS + ["pallas"])
@pytest.mark.parametrize("alibi", [False, True])
def test_each_document_attends_as_if_alone(name, alibi):
    """The oracle is independent of the mask's segment code: each document run alone, plainly
    causal, through the reference kernel."""
    if alibi and not kernels.REQUIREMENTS[name].alibi:
        pytest.skip(f"{name} has no ALiBi")
    q, k, v = _inputs(2)
    slopes = jnp.asarray(alibi_slopes(H)) if alibi else None
    ids, _ = packed()
    out = _kernel(name)(q, k, v, causal(T, alibi_slopes=slopes, segment_ids=jnp.asarray(ids)))
    for r, row in enumerate(ROWS):
        for s, e in spans(row):
            alone = kernels.reference_attention(q[r:r + 1, s:e], k[r:r + 1, s:e],
                                                v[r:r + 1, s:e],
                                                causal(e - s, alibi_slopes=slopes))
            np.testing.assert_allclose(out[r, s:e], alone[0], atol=2e-5, rtol=2e-5)
    plain = _kernel(name)(q, k, v, causal(T, alibi_slopes=slopes))
    assert not np.allclose(plain[0, 11:], out[0, 11:], atol=1e-3)  # the ids do change it


@pytest.mark.parametrize("name", ["xla", "blockwise", "pallas"])
def test_gradients_with_segments_and_padding_equal_the_reference(name):
    """Segment ids together with left padding (kv_valid): outputs and q/k/v gradients on the
    rows of real tokens."""
    q, k, v = _inputs(1, seed=1)
    ids, _ = packed()
    valid = np.ones((len(ROWS), T), bool)
    valid[1, :3] = False
    mask = causal(T, kv_valid=jnp.asarray(valid), segment_ids=jnp.asarray(ids))
    cot = jax.random.normal(jax.random.key(9), q.shape) * valid[:, :, None, None]

    def loss(fn, q, k, v):
        return jnp.sum(fn(q, k, v, mask) * cot)

    ref_out = kernels.reference_attention(q, k, v, mask)
    np.testing.assert_allclose(np.asarray(_kernel(name)(q, k, v, mask))[valid],
                               np.asarray(ref_out)[valid], atol=2e-5, rtol=2e-5)
    ref = jax.grad(loss, argnums=(1, 2, 3))(kernels.reference_attention, q, k, v)
    got = jax.grad(loss, argnums=(1, 2, 3))(_kernel(name), q, k, v)
    for g, rg in zip(got, ref):
        np.testing.assert_allclose(g, rg, atol=5e-5, rtol=5e-5)


def test_mask_keeps_queries_to_their_segment_blockwise_too():
    """dense() and block() agree; separate key ids (kv_segments) are honoured."""
    ids, _ = packed()
    mask = causal(T, segment_ids=jnp.asarray(ids))
    dense = np.asarray(mask.dense())[:, 0]
    expect = np.tril(np.ones((T, T), bool))[None] & (ids[:, :, None] == ids[:, None, :])
    np.testing.assert_array_equal(dense, expect)
    np.testing.assert_array_equal(mask.block(jnp.arange(8, 16), jnp.arange(4, 12))[:, 0],
                                  expect[:, 8:16, 4:12])
    keys = ids.copy()
    keys[:, :5] = -1  # the first five keys belong to no query's document
    split = Mask(jnp.arange(T), jnp.arange(T), q_segments=jnp.asarray(ids),
                 kv_segments=jnp.asarray(keys))
    np.testing.assert_array_equal(np.asarray(split.dense())[:, 0],
                                  expect & (keys[:, None, :] == ids[:, :, None]))


# --- the model -----------------------------------------------------------------------------

def model(attention="xla", position="learned", seed=0):
    cfg = ModelConfig(vocab_size=50, max_len=T, num_layers=1, num_heads=H, d_model=32,
                      attention=attention, position=position)
    return GPT(cfg, rngs=nnx.Rngs(seed))


def tokens(seed=0, rows=len(ROWS)):
    return np.random.default_rng(seed).integers(0, 50, (rows, T)).astype(np.int32)


MODEL_CASES = [("xla", p) for p in POSITIONS] + [(k, "learned") for k in CPU_KERNELS
                                                 if k != "xla"]


@pytest.mark.parametrize("attention,position", MODEL_CASES)
def test_a_document_ignores_the_previous_one(attention, position):
    """Changing document 1's tokens leaves documents 2 and 3 untouched with segment ids, and
    changes them without (so this test can fail)."""
    m = model(attention, position)
    ids, _ = packed()
    x = tokens()
    y = x.copy()
    y[0, :11] = tokens(seed=1)[0, :11]
    with_ids = [np.asarray(m(t, segment_ids_=ids)) for t in (x, y)]
    np.testing.assert_allclose(with_ids[0][0, 11:], with_ids[1][0, 11:], atol=1e-5, rtol=0)
    assert not np.allclose(with_ids[0][0, :11], with_ids[1][0, :11], atol=1e-3)
    without = [np.asarray(m(t)) for t in (x, y)]
    assert not np.allclose(without[0][0, 11:], without[1][0, 11:], atol=1e-3)


@pytest.mark.parametrize("attention,position", MODEL_CASES)
def test_restarted_positions_give_each_document_its_own_logits(attention, position):
    """A packed row with positions restarting at each document: each document's logits are
    those of the document run alone (ALiBi's distance within a document is the same either
    way; across documents the ids hide it)."""
    m = model(attention, position)
    ids, pos = packed()
    x = tokens()
    logits = np.asarray(m(x, segment_ids_=ids, positions_=pos))
    for s, e in spans(ROWS[0]):
        alone = np.asarray(m(x[:1, s:e]))[0]
        np.testing.assert_allclose(logits[0, s:e], alone, atol=1e-5, rtol=1e-5)
    if position in ("learned", "sinusoidal"):  # absolute positions: restarting them matters
        unrestarted = np.asarray(m(x, segment_ids_=ids))
        assert not np.allclose(unrestarted[0, 11:28], np.asarray(m(x[:1, 11:28]))[0], atol=1e-3)


def test_blockwise_model_equals_xla_with_segment_ids():
    ids, pos = packed()
    x = tokens()
    xla, blockwise = model("xla"), model("blockwise")
    np.testing.assert_allclose(blockwise(x, segment_ids_=ids, positions_=pos),
                               xla(x, segment_ids_=ids, positions_=pos), atol=1e-5, rtol=1e-5)


def test_segment_ids_with_a_cache_is_refused():
    m = model()
    with pytest.raises(ValueError, match="segment_ids_.*cache"):
        m.forward(tokens(), segment_ids_=packed()[0], cache=m.init_cache(2, T))


# --- train and eval steps ------------------------------------------------------------------

def config(mesh, **model_fields):
    model_fields = {**dict(vocab_size=64, max_len=16, num_layers=1, num_heads=8, d_model=32),
                    **model_fields}
    return Config.from_dict({"model": model_fields,
                             "data": dict(dataset="tokens", seq_len=16, batch_size=8,
                                          document_mask=True, document_positions=True),
                             "optim": dict(lr=1e-2, warmup_steps=0),
                             "train": dict(num_steps=3, seed=0), "mesh": mesh})


def batches(cfg, num=3, seed=0, keys=("segment_ids", "positions")):
    """Random tokens, each row cut into random documents."""
    rng = np.random.default_rng(seed)
    b, t = cfg.data.batch_size, cfg.data.seq_len
    out = []
    for _ in range(num):
        x = rng.integers(0, cfg.model.vocab_size, (b, t + 1)).astype(np.int32)
        starts = rng.random((b, t)) < 0.25
        starts[:, 0] = True
        ids = np.cumsum(starts, axis=1).astype(np.int32)
        pos = np.asarray([np.concatenate([np.arange(n) for n in np.bincount(r)[1:]])
                          for r in ids], np.int32)
        batch = {"inputs": x[:, :-1], "targets": x[:, 1:], "segment_ids": ids, "positions": pos}
        out.append({k: v for k, v in batch.items() if k in ("inputs", "targets", *keys)})
    return out


def train_losses(cfg, data, devices=None):
    """Losses of the loop's compiled train step (the CPU flat all-reduce path for jit DP)."""
    plan = make_plan(cfg, devices=devices)
    tx, schedule = make_optimizer(cfg.optim, cfg.train.num_steps)
    init = functools.partial(init_state, cfg.model, tx, cfg.train.seed)
    abstract = jax.eval_shape(init)
    sharding = plan.shardings(abstract)
    step = compile_train_step(cfg, plan, graphdef_of(cfg.model), tx, schedule, abstract,
                              sharding)
    leaves = jax.tree.leaves(plan.init(init_state, cfg.model, tx, cfg.train.seed))
    losses = []
    for batch in data:
        leaves, metrics = step(leaves, plan.put_batch(batch))
        losses.append(float(metrics["loss"]))
    return losses


@pytest.fixture(scope="module")
def single():
    """(batches, their losses on one device)."""
    cfg = config(dict(data=1))
    data = batches(cfg)
    return data, train_losses(cfg, data, devices=jax.devices()[:1])


@pytest.mark.skipif(jax.device_count() != 8, reason="needs the 8 fake CPU devices of conftest")
@pytest.mark.parametrize("mesh", [dict(data=8), dict(strategy="pmap"), dict(data=2, tensor=4)])
def test_sharded_train_steps_with_segments_equal_one_device(mesh, single):
    """jit data parallel on CPUs (gptjax.training.cpu's shard_map), pmap, and a tensor axis
    split the batch's segment ids and positions with its tokens."""
    data, losses = single
    np.testing.assert_allclose(train_losses(config(mesh), data), losses, atol=1e-5, rtol=0)


def test_the_train_step_consumes_the_keys(single):
    data, losses = single
    plain = train_losses(config(dict(data=1)), [{k: b[k] for k in ("inputs", "targets")}
                                                for b in data], devices=jax.devices()[:1])
    assert not np.allclose(plain, losses, atol=1e-4)


def test_eval_step_passes_segment_ids_and_positions():
    cfg = config(dict(data=1))
    batch = batches(cfg, num=1)[0]
    m = GPT(cfg.model, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(m, nnx.Param)
    got = jax.jit(eval_step_fn(graphdef))(params, batch)
    logits = m(batch["inputs"], segment_ids_=batch["segment_ids"],
               positions_=batch["positions"])
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["targets"][..., None], -1)
    np.testing.assert_allclose(got["loss"], ce.mean(), rtol=1e-5)
    assert model_inputs({"inputs": 0, "targets": 0}) == {}  # the default path passes nothing


# --- the config check ----------------------------------------------------------------------

@pytest.fixture
def kernel_without_segments():
    kernels.register("no_segments_test")(kernels.reference_attention)
    yield "no_segments_test"
    del kernels.KERNELS["no_segments_test"], kernels.REQUIREMENTS["no_segments_test"]


def test_check_refuses_a_kernel_without_segment_ids(kernel_without_segments):
    cfg = ModelConfig(vocab_size=50, max_len=16, num_layers=1, num_heads=2, d_model=16,
                      attention=kernel_without_segments)
    check_config(cfg, 16)  # fine without document masks
    with pytest.raises(ConfigError, match=r"data.document_mask=True is invalid: model.attention="
                       r"'no_segments_test' cannot take segment ids.*'xla'.*"
                       r"data.document_mask=False"):
        check_config(cfg, 16, segments=True)
    run_cfg = Config.from_dict({"model": dataclasses.asdict(cfg),
                                "data": dict(dataset="tokens", seq_len=16, batch_size=8,
                                             document_mask=True)})
    with pytest.raises(ConfigError, match="cannot take segment ids"):
        start.check_config(run_cfg)
    for name in ("xla", "blockwise", "reference"):  # what the message offers does pass
        check_config(dataclasses.replace(cfg, attention=name), 16, segments=True)
