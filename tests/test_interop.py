"""Hugging Face GPT-2 interop: golden logits, export round trip, clear errors, live HF checks.

The golden and round-trip tests need neither torch nor transformers; the live tests at the end
run only where both are installed.
"""

import json
import os
import pathlib
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before any transformers import

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from gptjax import GPT, ModelConfig  # noqa: E402
from gptjax import interop  # noqa: E402
from gptjax.interop import hf  # noqa: E402
from gptjax.model import apply, split  # noqa: E402

GOLDEN = pathlib.Path(__file__).resolve().parent / "golden"
TINY = GOLDEN / "tiny-gpt2"
TOL = 1e-4  # max abs logit difference, float32


def params_of(model) -> dict:
    """'blocks/0/attn/query/kernel' -> numpy array."""
    flat = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param).to_pure_dict())[0]
    return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v) for path, v in flat}


def random_gpt(**overrides) -> GPT:
    """A small GPT with every parameter drawn at random, so no bias is 0 and no LayerNorm is 1."""
    fields = dict(vocab_size=61, max_len=24, num_layers=2, num_heads=2, d_model=16, d_ff=40)
    cfg = ModelConfig(**{**fields, **overrides})
    graphdef, state = nnx.split(nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    rng = np.random.default_rng(0)
    state = jax.tree.map(lambda x: jax.numpy.asarray(rng.normal(0, 0.2, x.shape), x.dtype), state)
    return nnx.merge(graphdef, state)


def logits_of(model: GPT, ids) -> np.ndarray:
    """Jitted forward pass (eager NNX dispatch is several times slower on this CPU)."""
    graphdef, params = split(model)
    return np.asarray(jax.jit(lambda p, x: apply(graphdef, p, x))(params, ids))


def copy_golden(tmp_path) -> pathlib.Path:
    folder = tmp_path / "model"
    shutil.copytree(TINY, folder)
    return folder


def edit_config(folder, **changes) -> None:
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


# ---- golden: logits of a random Hugging Face GPT-2, made by tests/make_golden.py -------------

@pytest.fixture(scope="module")
def tiny():
    return GPT.from_pretrained(TINY)


def test_golden_config_maps(tiny):
    cfg = tiny.cfg
    assert (cfg.vocab_size, cfg.max_len, cfg.num_layers, cfg.num_heads, cfg.d_model,
            cfg.d_ff) == (320, 128, 2, 4, 64, 256)
    assert cfg.position == "learned" and cfg.tie_embeddings and cfg.num_kv_heads == 4


def test_golden_logits(tiny):
    expected = np.load(GOLDEN / "tiny-gpt2-logits.npz")
    lengths = []
    for i in range(len(expected.files) // 2):
        prompt, want = expected[f"prompt_{i}"], expected[f"logits_{i}"]
        got = logits_of(tiny, prompt)
        assert got.shape == want.shape and got.dtype == np.float32
        diff = np.abs(got - want).max()
        assert diff < TOL, f"prompt {i} ({prompt.shape[1]} tokens): max abs diff {diff:.2e}"
        lengths.append(prompt.shape[1])
    assert tiny.cfg.max_len in lengths  # one prompt fills every learned position


def test_load_overrides_dtype():
    model = GPT.from_pretrained(TINY, param_dtype="bfloat16", dtype="bfloat16",
                                attention="reference")
    assert model.wte.embedding[...].dtype == jax.numpy.bfloat16
    assert model.cfg.attention == "reference"


def test_sharded_and_unprefixed_weights_load_the_same(tmp_path, tiny):
    """model.safetensors.index.json shards and GPT2Model's unprefixed keys (+ old buffers)."""
    tensors = load_file(str(TINY / "model.safetensors"))
    bare = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    bare["h.0.attn.bias"] = np.tril(np.ones((1, 1, 128, 128), np.float32))  # a buffer: ignored
    names = sorted(bare)
    folder = tmp_path / "sharded"
    folder.mkdir()
    shutil.copy(TINY / "config.json", folder)
    weight_map = {}
    for j, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        file = f"model-0000{j + 1}-of-00002.safetensors"
        save_file({k: bare[k] for k in part}, str(folder / file))
        weight_map.update(dict.fromkeys(part, file))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    loaded = params_of(GPT.from_pretrained(folder))
    for name, value in params_of(tiny).items():
        np.testing.assert_array_equal(loaded[name], value, err_msg=name)


# ---- export round trip: gptjax -> save_pretrained -> from_pretrained ------------------------

@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_export_round_trip(tmp_path, tie):
    model = random_gpt(tie_embeddings=tie)
    model.save_pretrained(tmp_path)
    keys = set(load_file(str(tmp_path / "model.safetensors")))
    assert "transformer.h.1.attn.c_attn.weight" in keys
    assert ("lm_head.weight" in keys) == (not tie)  # HF omits a tied head
    loaded = GPT.from_pretrained(tmp_path)
    assert loaded.cfg == model.cfg
    want, got = params_of(model), params_of(loaded)
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_a_padded_vocabulary_exports_its_true_size_and_loads_padded_again(tmp_path, tie):
    """vocab 61 padded to 64 rows: the file has 61 (what transformers expects), loading it with
    vocab_multiple=8 gives back the padded model's real rows and zero padding."""
    model = GPT(ModelConfig(vocab_size=61, vocab_multiple=8, max_len=24, num_layers=2,
                            num_heads=2, d_model=16, tie_embeddings=tie), rngs=nnx.Rngs(0))
    model.save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    assert tensors["transformer.wte.weight"].shape == (61, 16)
    assert json.loads((tmp_path / "config.json").read_text())["vocab_size"] == 61
    if not tie:
        assert tensors["lm_head.weight"].shape == (61, 16)
    plain = GPT.from_pretrained(tmp_path)
    assert plain.cfg.padded_vocab == 61
    padded = GPT.from_pretrained(tmp_path, vocab_multiple=8)
    ids = np.arange(20)[None] % 61
    np.testing.assert_allclose(padded(ids)[..., :61], plain(ids), atol=1e-6)
    np.testing.assert_allclose(padded(ids), model(ids), atol=1e-6)
    assert params_of(padded)["wte/embedding"][61:].tobytes() == bytes(3 * 16 * 4)


def test_export_config_is_gpt2(tmp_path):
    random_gpt().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"] and config["model_type"] == "gpt2"
    assert (config["n_embd"], config["n_layer"], config["n_head"], config["n_inner"],
            config["n_positions"], config["vocab_size"]) == (16, 2, 2, 40, 24, 61)


@pytest.mark.parametrize("field,value", [("position", "rope"), ("num_kv_heads", 1),
                                         ("window", 4)])
def test_export_rejects_non_gpt2(tmp_path, field, value):
    model = nnx.eval_shape(lambda: GPT(ModelConfig(
        vocab_size=61, max_len=24, num_layers=1, num_heads=2, d_model=16, **{field: value}),
        rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=f"model.{field}="):
        hf.save_gpt(model, tmp_path)
    assert not (tmp_path / "model.safetensors").exists()


# ---- errors a user can cause ------------------------------------------------------------------

def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no folder .*missing"):
        GPT.from_pretrained(tmp_path / "missing")


def test_folder_of_unknown_format(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(FileNotFoundError, match="config.json.*model.safetensors.*notes.txt"):
        GPT.from_pretrained(tmp_path)


def test_missing_weights(tmp_path):
    shutil.copy(TINY / "config.json", tmp_path)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        GPT.from_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="safetensors only"):
        GPT.from_pretrained(tmp_path)


def test_missing_config(tmp_path):
    shutil.copy(TINY / "model.safetensors", tmp_path)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        GPT.from_pretrained(tmp_path)


@pytest.mark.parametrize("key,value", [("model_type", "llama"), ("activation_function", "relu"),
                                       ("scale_attn_by_inverse_layer_idx", True),
                                       ("scale_attn_weights", False),
                                       ("add_cross_attention", True)])
def test_non_gpt2_config(tmp_path, key, value):
    folder = copy_golden(tmp_path)
    edit_config(folder, **{key: value})
    with pytest.raises(ValueError, match=f"config.json: {key}="):
        GPT.from_pretrained(folder)


def test_missing_tensor(tmp_path):
    folder = copy_golden(tmp_path)
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["transformer.h.1.mlp.c_fc.bias"]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"model.safetensors: tensor 'transformer.h.1.mlp.c_fc"
                                         r".bias' is missing \(expected shape \(256,\)"):
        GPT.from_pretrained(folder)


def test_shape_mismatch(tmp_path):
    folder = copy_golden(tmp_path)
    edit_config(folder, n_positions=64)
    with pytest.raises(ValueError, match=r"model.safetensors: tensor 'transformer.wpe.weight' "
                                         r"has shape \(128, 64\) but config.json implies "
                                         r"\(64, 64\)"):
        GPT.from_pretrained(folder)


def test_invalid_shape_in_config(tmp_path):
    folder = copy_golden(tmp_path)
    edit_config(folder, n_head=5)
    with pytest.raises(ValueError, match="config.json: .*d_model"):
        GPT.from_pretrained(folder)


def test_only_shape_free_overrides():
    with pytest.raises(ValueError, match="cannot override"):
        hf.config_from_hf({"model_type": "gpt2"}, d_model=32)


def test_hub_name_without_hub_is_a_clear_error(monkeypatch):
    hub = pytest.importorskip("huggingface_hub")

    def offline(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(hub, "snapshot_download", offline)
    with pytest.raises(FileNotFoundError, match="no folder 'someone/gpt2-nowhere'.*hub"):
        GPT.from_pretrained("someone/gpt2-nowhere")


def test_hub_id_gets_the_snapshot_generation_defaults(monkeypatch):
    """A hub id loads from its downloaded snapshot folder, generation_config.json included."""
    hub = pytest.importorskip("huggingface_hub")
    asked = []

    def snapshot(repo_id, **kwargs):
        asked.append(repo_id)
        return str(TINY)

    monkeypatch.setattr(hub, "snapshot_download", snapshot)
    model = GPT.from_pretrained("someone/tiny-gpt2")
    declared = json.loads((TINY / "generation_config.json").read_text())
    assert asked == ["someone/tiny-gpt2"]
    assert model.generation_config.eos_token_id == declared["eos_token_id"]


def test_registered_format_is_dispatched(tmp_path, monkeypatch):
    (tmp_path / "checkpoint.marker").write_text("")
    seen = {}

    def load(folder, **kwargs):
        seen.update(folder=folder, **kwargs)
        return "a model"

    monkeypatch.setitem(interop.FORMATS, "fake",
                        (lambda f: (f / "checkpoint.marker").exists(), load))
    assert GPT.from_pretrained(tmp_path, dtype="bfloat16") == "a model"
    assert seen == {"folder": tmp_path, "dtype": "bfloat16"}


# ---- live: against transformers' PyTorch GPT-2, where installed -------------------------------

def hf_logits(model, ids: np.ndarray) -> np.ndarray:
    torch = pytest.importorskip("torch")
    with torch.no_grad():
        return model(torch.from_numpy(ids).long()).logits.numpy()


@pytest.fixture(scope="module")
def transformers():
    pytest.importorskip("torch")
    return pytest.importorskip("transformers")


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_hf_loads_export(tmp_path, transformers, tie):
    model = random_gpt(tie_embeddings=tie)
    model.save_pretrained(tmp_path)
    theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    ids = np.random.default_rng(0).integers(0, 61, (2, 24))
    diff = np.abs(hf_logits(theirs, ids) - logits_of(model, ids)).max()
    assert diff < TOL, f"max abs diff {diff:.2e}"


GPT2_SHAPES = {  # name: (GPT2Config fields, prompt length)
    "odd": (dict(n_layer=3, n_embd=48, n_head=3, n_inner=100, vocab_size=101, n_positions=37,
                 tie_word_embeddings=False, bos_token_id=0, eos_token_id=0), 37),
    "upcast": (dict(n_layer=1, n_embd=32, n_head=4, vocab_size=50, n_positions=16,
                    reorder_and_upcast_attn=True, activation_function="gelu_pytorch_tanh",
                    bos_token_id=0, eos_token_id=0), 16),
    "124M": (dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024), 6),
}


@pytest.mark.parametrize("shape", list(GPT2_SHAPES))
def test_gptjax_loads_hf_of_any_shape(tmp_path, transformers, shape):
    torch = pytest.importorskip("torch")
    fields, length = GPT2_SHAPES[shape]
    torch.manual_seed(0)
    theirs = transformers.GPT2LMHeadModel(transformers.GPT2Config(**fields)).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(0.02 * torch.randn_like(p))
    theirs.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(tmp_path)
    ids = np.random.default_rng(0).integers(0, fields["vocab_size"], (1, length))
    diff = np.abs(hf_logits(theirs, ids) - logits_of(ours, ids)).max()
    assert diff < TOL, f"{shape}: max abs diff {diff:.2e}"
