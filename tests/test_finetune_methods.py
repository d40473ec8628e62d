"""Fine-tuning methods (finetune.method): each trains exactly its parameters; LoRA starts at the
base, merges into base + (alpha/r) A B, checkpoints its adapters alone, resumes bitwise, shards
like the kernels it adapts, and fits GPT-2 124M's budget; bad settings are refused."""

import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from gptjax import GPT
from gptjax.bench import scaling
from gptjax.config import Config, ConfigError, default_config
from gptjax.model.gpt import merge_lora, split
from gptjax.training import finetune
from gptjax.training.export import export
from gptjax.training.loop import train
from gptjax.training.optim import make_optimizer
from gptjax.training.state import graphdef_of, init_state, path_name
from gptjax.training.steps import train_step_fn

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "golden" / "tiny-gpt2"  # a random GPT-2: 2 layers, 64 wide, vocab 320


def tiny(finetune_section=None, grad_accum=1, mesh=None, **model) -> Config:
    model = {**dict(vocab_size=64, max_len=16, num_layers=2, num_heads=8, d_model=32,
                    tie_embeddings=False, attention="reference"), **model}
    return Config.from_dict(dict(model=model, data=dict(seq_len=16, batch_size=8),
                                 optim=dict(lr=1e-2, warmup_steps=0, grad_accum=grad_accum),
                                 train=dict(num_steps=5), mesh=mesh or {},
                                 finetune=finetune_section or {}))


def batch_of(seed=0, b=8, t=16, v=64):
    x = np.random.default_rng(seed).integers(0, v, (b, t + 1)).astype(np.int32)
    return {"inputs": x[:, :-1], "targets": x[:, 1:]}


def flat(params) -> dict:
    return {path_name(p): np.asarray(v) for p, v in nnx.to_flat_state(params)}


def adam_moments(opt_state) -> dict:
    """{path: mu} of the optimizer's Adam state."""
    adam = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: hasattr(x, "mu"))
            if hasattr(s, "mu")]
    return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(adam[0].mu)}


# Which parameters each method must train, said by name (not by the registry's pattern).
def _module(name):
    return name.split("/")[-2]


METHODS = {
    "lora": (dict(method="lora", lora_rank=4, lora_targets="all"),
             lambda name: name.endswith(("/lora_a", "/lora_b"))),
    "freeze": (dict(method="freeze", freeze_layers=1, freeze_embeddings=True),
               lambda name: not name.startswith(("blocks/0/", "wte/", "wpe/"))),
    "bitfit": (dict(method="bitfit"),
               lambda name: name.endswith("/bias") or _module(name).startswith("ln_")),
}


@pytest.mark.parametrize("method,grad_accum", [("lora", 2), ("freeze", 1), ("bitfit", 1)])
def test_each_method_trains_exactly_its_parameters(fast_compiles, method, grad_accum):
    section, intended = METHODS[method]
    cfg = tiny(section, grad_accum=grad_accum)
    tx, schedule = make_optimizer(cfg.optim, 10)
    state = jax.jit(lambda: init_state(cfg.model, tx, 0, finetune.trainable(cfg)))()
    before = flat(state.params)
    chosen = {name for name in before if intended(name)}
    assert 0 < len(chosen) < len(before)
    moments = adam_moments(state.opt_state)
    assert len(moments) == len(chosen)  # optimizer state for the chosen parameters alone
    step = jax.jit(train_step_fn(cfg, graphdef_of(cfg.model), tx, schedule))
    for i in range(3):
        state, _ = step(state, batch_of(seed=i))
    after = flat(state.params)
    for name in before:  # the rest bitwise unchanged
        changed = after[name].tobytes() != before[name].tobytes()
        assert changed == (name in chosen), (name, changed)


def test_lora_starts_at_the_base_and_merges_into_base_plus_scaled_ba():
    cfg = tiny(dict(method="lora", lora_rank=4, lora_alpha=8.0, lora_targets="query,fc"))
    model = GPT(cfg.model, rngs=nnx.Rngs(0))
    tokens = jnp.asarray(batch_of()["inputs"])
    # the base: the same weights without adapters
    base = merge_lora(model)
    assert "lora_a" not in str(flat(split(base)[1]).keys())
    np.testing.assert_array_equal(model(tokens), base(tokens))  # B = 0: exactly the base
    # give B values, then fold: W + (alpha / r) A B, by hand in numpy
    rng = np.random.default_rng(0)
    for block in model.blocks:
        for linear in (block.attn.query, block.mlp.fc):
            linear.lora_b[...] = jnp.asarray(rng.normal(size=linear.lora_b.shape), jnp.float32)
    assert not hasattr(model.blocks[0].attn.key, "lora_a")  # not a target
    merged = flat(split(merge_lora(model))[1])
    lora = flat(split(model)[1])
    for name in ("blocks/1/attn/query", "blocks/0/mlp/fc"):
        a, b = lora[f"{name}/lora_a"], lora[f"{name}/lora_b"]
        expected = lora[f"{name}/kernel"].astype(np.float64) + 8.0 / 4 * (a @ b)
        np.testing.assert_allclose(merged[f"{name}/kernel"], expected, rtol=1e-5, atol=1e-6)
    key = "blocks/0/attn/key/kernel"
    assert merged[key].tobytes() == lora[key].tobytes()
    np.testing.assert_allclose(merge_lora(model)(tokens), model(tokens), atol=2e-5)


def test_lora_sharded_and_pmapped_with_grad_accum_matches_one_device(fast_compiles):
    section = dict(method="lora", lora_rank=4, lora_targets="all")
    batches = scaling.synthetic_batches(tiny(section), 3)
    one = scaling.run(tiny(section, grad_accum=2, mesh=dict(data=1)), batches,
                      devices=jax.devices()[:1])
    run = scaling.run(tiny(section, grad_accum=2, mesh=dict(data=1, fsdp=2, tensor=4)), batches)
    np.testing.assert_allclose(run.losses, one.losses, atol=1e-5, rtol=0)
    assert len(set(np.round(run.losses, 6))) > 1
    pmapped = scaling.run(tiny(section, grad_accum=2, mesh=dict(strategy="pmap")), batches,
                          devices=jax.devices()[:4])  # adapters replicated, the batch split
    np.testing.assert_allclose(pmapped.losses, one.losses, atol=1e-5, rtol=0)
    query = run.state.params["blocks"][0]["attn"]["query"]
    out = run.state.params["blocks"][0]["attn"]["out"]
    mesh = run.plan.mesh
    for x, spec in ((query["lora_a"], P("fsdp", None)), (query["lora_b"], P(None, "tensor")),
                    (out["lora_a"], P("tensor", None)), (out["lora_b"], P(None, "fsdp"))):
        assert x[...].sharding.is_equivalent_to(jax.sharding.NamedSharding(mesh, spec), 2), spec


def test_lora_r4_on_gpt2_124m_fits_the_papers_budget():
    """GPT-2 small's shape (eval_shape: nothing allocated): r=4 on attention and MLP trains
    <= 1% of the parameters with <= 2% of full fine-tuning's optimizer state."""
    cfg = Config.from_dict(dict(finetune=dict(method="lora", lora_rank=4,
                                              lora_targets="attention,mlp")))
    tx, _ = make_optimizer(cfg.optim, 10)
    abstract = jax.eval_shape(lambda: init_state(cfg.model, tx, 0, finetune.trainable(cfg)))
    info = finetune.run_info(cfg, abstract, tx)
    d, f, r = 768, 3072, 4
    per_block = 4 * r * (d + d) + r * (d + f) + r * (f + d)  # q, k, v, out; fc; proj
    assert info["trainable_params"] == 12 * per_block
    assert info["total_params"] == 124_439_808 + 12 * per_block  # GPT-2 small + adapters
    assert info["trainable_params"] / info["total_params"] <= 0.01
    assert info["optimizer_state_bytes"] <= 0.02 * info["full_finetune_optimizer_state_bytes"]


# ---- a LoRA run through the loop: run_info, adapters-only checkpoints, resume, merged load ------

def lora_run_config(tmp: pathlib.Path, **train_fields) -> dict:
    examples = [{"question": f"What comes after {i}?", "answer": str(i + 1)} for i in range(48)]
    (tmp / "qa.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples))
    return {
        "model": dict(vocab_size=0, dropout=0.0),
        "data": dict(dataset="task", task="qa", text_file=str(tmp / "qa.jsonl"),
                     tokenizer="init_from", seq_len=32, batch_size=8, val_fraction=0.25),
        "optim": dict(lr=1e-2, warmup_steps=0),
        "train": dict(num_steps=4, log_every=1, eval_every=4, eval_steps=1, checkpoint_every=2,
                      sample_tokens=0, init_from=str(tmp / "base"), **train_fields),
        "finetune": dict(method="lora", lora_rank=2, lora_alpha=4.0, lora_dropout=0.1,
                         lora_targets="attention,mlp"),
    }


def test_lora_run_checkpoints_adapters_resumes_bitwise_and_loads_merged(fast_compiles, tmp_path):
    shutil.copytree(TINY, tmp_path / "base")
    cfg = lora_run_config(tmp_path)
    seen = {}

    def keep(step, row, run):
        seen[step] = jax.device_get(run.state.params)

    train(cfg, tmp_path / "straight", callbacks=[keep])
    # Resumed from step 2's checkpoint (a copy of the run without its later one): kill-free.
    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "4")
    train(cfg, tmp_path / "resumed")
    losses = [[r["train_loss"] for r in map(json.loads, open(tmp_path / w / "metrics.jsonl"))
               if "train_loss" in r] for w in ("straight", "resumed")]
    assert losses[0] == losses[1] and len(losses[0]) == 4

    def saved(workdir, step):
        with ocp.CheckpointManager(workdir / "checkpoints", item_handlers={
                "state": ocp.StandardCheckpointHandler()}) as m:
            state = m.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
        return {jax.tree_util.keystr(p): np.asarray(x)
                for p, x in jax.tree_util.tree_leaves_with_path(state["state"]["params"])}

    straight, resumed = saved(tmp_path / "straight", 4), saved(tmp_path / "resumed", 4)
    assert straight.keys() and all("'lora_a'" in k or "'lora_b'" in k for k in straight)
    assert all(straight[k].tobytes() == resumed[k].tobytes() for k in straight)

    info = json.loads((tmp_path / "straight" / "run_info.json").read_text())
    assert info["method"] == "lora" and info["lora_rank"] == 2
    assert info["trainable_params"] == sum(x.size for x in straight.values())
    assert info["checkpoint_params"] == "adapters"

    # the frozen base never moved; from_pretrained gives the merged plain GPT
    base = flat(split(GPT.from_pretrained(TINY))[1])
    final = flat(seen[4])
    assert all(final[k].tobytes() == base[k].tobytes() for k in base)
    merged = GPT.from_pretrained(tmp_path / "straight")
    assert not merged.cfg.lora_rank and set(flat(split(merged)[1])) == set(base)
    lora_cfg = Config.from_dict(json.loads((tmp_path / "straight" / "config.json").read_text()))
    lora_model = nnx.merge(graphdef_of(lora_cfg.model), seen[4])
    tokens = jnp.asarray(batch_of(v=320)["inputs"])
    np.testing.assert_allclose(merged(tokens), lora_model(tokens), atol=1e-4)
    # exported as a Hugging Face GPT-2 folder: the merged weights, no adapters
    export(tmp_path / "straight", tmp_path / "hf")
    exported = GPT.from_pretrained(tmp_path / "hf")
    assert not exported.cfg.lora_rank
    np.testing.assert_allclose(exported(tokens), merged(tokens), atol=1e-5)

    # another method's optimizer state would not fit: refused before anything compiles
    with pytest.raises(ConfigError, match=r"finetune.method: checkpoint 'lora', config 'bitfit'"):
        train({**cfg, "finetune": dict(method="bitfit")}, tmp_path / "straight")
    # the base is read again at restore: gone, the run says so before anything compiles
    shutil.rmtree(tmp_path / "base")
    with pytest.raises(ConfigError, match=r"train.init_from="):
        train({**cfg, "train": {**cfg["train"], "num_steps": 6}}, tmp_path / "straight")


# ---- the config ---------------------------------------------------------------------------------

@pytest.mark.parametrize("sections,message", [
    (dict(finetune=dict(method="lora", lora_rank=0)), r"finetune.lora_rank=0 is invalid"),
    (dict(finetune=dict(method="lora", lora_targets="qury")), r"unknown target 'qury'"),
    (dict(finetune=dict(method="lora", lora_dropout=1.0)), r"finetune.lora_dropout=1.0"),
    (dict(finetune=dict(lora_rank=16)), r"lora_rank=16 is invalid: applies to "
                                        r"finetune.method='lora' only"),
    (dict(finetune=dict(method="bitfit"), train=dict(trainable="^lm_head/")),
     r"train.trainable='\^lm_head/' and finetune.method='bitfit' both choose"),
])
def test_bad_finetune_settings_are_refused(sections, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_dict(sections)


def test_settings_the_model_cannot_take_are_refused():
    # A method's name is checked where its registry lives, before data or compile.
    with pytest.raises(ConfigError, match=r"finetune.method='sgd' is invalid: choose one of"):
        finetune.check(Config.from_dict(dict(finetune=dict(method="sgd"))))
    with pytest.raises(ConfigError, match=r"freeze_layers=3 is invalid: the model has "
                                          r"model.num_layers=2"):
        finetune.check(tiny(dict(method="freeze", freeze_layers=3)))
    with pytest.raises(ConfigError, match=r"set train.init_from"):
        finetune.check(tiny(dict(method="lora")))
    with pytest.raises(ConfigError, match=r"lora_targets='blocks/9/attn/query' matches no "):
        GPT(tiny(dict(method="lora", lora_targets="blocks/9/attn/query")).model,
            rngs=nnx.Rngs(0))
    assert finetune.trainable(tiny(dict(method="freeze"))) is None  # freezing nothing: all


def test_every_config_takes_the_finetune_section():
    from configs.finetune_gpt2 import get_config

    for config in (default_config(), get_config("qa")):
        config.finetune.method = "lora"  # what --config.finetune.method=lora does
        config.finetune.lora_rank = 4
        cfg = Config.from_dict(config)
        assert (cfg.model.lora_rank, cfg.model.lora_targets) == (4, "query,value")
    assert Config.from_dict({}).model.lora_rank == 0
