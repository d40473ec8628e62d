"""Every bad config value fails before any compile, naming the field and what is allowed.

Values and shapes fail when the Config is built; names chosen from a registry (kernel, position,
schedule) fail in the registry's check, which a run calls before it reads data or compiles
(gptjax.training.start.check_config).
"""

import importlib.util
import pathlib

import ml_collections
import pytest

from gptjax.config import Config, ConfigError, ModelConfig
from gptjax.model import check_config as check_model
from gptjax.training.start import check_config


@pytest.mark.parametrize("kwargs, match", [
    (dict(d_model=100, num_heads=12), r"model.d_model=100 .*divisible by model.num_heads=12"),
    (dict(num_heads=12, num_kv_heads=5), r"model.num_heads=12 .*num_kv_heads=5"),
    (dict(num_layers=0), r"model.num_layers=0 .*positive integer"),
    (dict(vocab_size=-3), r"model.vocab_size=-3 .*positive integer"),
    (dict(d_ff=0), r"model.d_ff=0"),
    (dict(dropout=1.5), r"model.dropout=1.5"),
    (dict(window=4096), r"model.window=4096 .*max_len=1024"),
    (dict(dtype="float8"), r"model.dtype='float8'"),
])
def test_bad_model_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(attention="flash9"), r"model.attention='flash9' .*choose one of .*reference"),
    (dict(position="spiral"), r"model.position='spiral' .*learned.*rope.*alibi"),
    (dict(position="rope", d_model=66, num_heads=6), r"RoPE needs an even head_dim"),
    (dict(position="sinusoidal", d_model=63, num_heads=3), r"sinusoidal positions need an even"),
])
def test_bad_registry_names_and_their_shapes(kwargs, match):
    cfg = ModelConfig(**kwargs)  # a name is the registry's to judge
    with pytest.raises(ConfigError, match=match):
        check_model(cfg)


def test_sequence_longer_than_learned_positions():
    cfg = ModelConfig(max_len=64, num_layers=1, d_model=32, num_heads=4)
    check_model(cfg, 64)
    with pytest.raises(ConfigError, match="data.seq_len=70 is invalid: must not exceed model.max_len=64"):
        check_model(cfg, 70)
    check_model(ModelConfig(max_len=64, num_layers=1, d_model=32, num_heads=4, position="rope"),
                70)
    with pytest.raises(ConfigError, match="data.seq_len=128 is invalid: must not exceed model.max_len=64"):
        check_config(Config.from_dict({"model": {"max_len": 64}, "data": {"seq_len": 128}}))


def test_from_config_dict_and_unknown_fields():
    cd = ml_collections.ConfigDict({"model": {"num_layers": 2, "d_model": 64, "num_heads": 4},
                                    "optim": {"lr": 1e-3}})
    cfg = Config.from_dict(cd)
    assert cfg.model.num_layers == 2 and cfg.model.d_ff == 256 and cfg.optim.lr == 1e-3
    assert cfg.model.num_kv_heads == 4
    with pytest.raises(ConfigError, match="unknown field.*model.n_layer"):
        Config.from_dict({"model": {"n_layer": 2}})
    with pytest.raises(ConfigError, match="unknown config section.*modle"):
        Config.from_dict({"modle": {}})


@pytest.mark.parametrize("section, field, value, match", [
    ("optim", "min_lr", 1.0, "optim.min_lr=1.0"),
    ("optim", "grad_accum", 0, "optim.grad_accum=0"),
    ("data", "batch_size", 0, "data.batch_size=0"),
    ("train", "num_steps", -1, "train.num_steps=-1"),
    ("mesh", "strategy", "pjit2", "mesh.strategy='pjit2'"),
])
def test_bad_other_sections(section, field, value, match):
    with pytest.raises(ConfigError, match=match):
        Config.from_dict({section: {field: value}})


def test_unknown_schedule_is_the_registry_s_to_refuse():
    cfg = Config.from_dict({"optim": {"schedule": "exp"}})
    with pytest.raises(ConfigError, match="optim.schedule='exp' .*cosine"):
        check_config(cfg)


def test_mesh_allows_one_fill_axis():
    with pytest.raises(ConfigError, match="at most one axis may be -1"):
        Config.from_dict({"mesh": {"data": -1, "fsdp": -1}})


# Attention options that do not fit together fail in the kernel's check, before any data or
# compile.
@pytest.mark.parametrize("kwargs, match", [
    (dict(attention="cudnn"), r"model.dtype='float32' .*'cudnn' computes in \['bfloat16', "
     r"'float16'\] only; set model.dtype='bfloat16'"),
    (dict(attention="cudnn", dtype="bfloat16", d_model=48, num_heads=4),
     r"model.num_heads=4 .*'cudnn' needs head_dim .*multiple of 8 .*48/4=12"),
    (dict(attention="cudnn", dtype="bfloat16", d_model=1024, num_heads=2),
     r"model.num_heads=2 .*at most 256 .*1024/2=512"),
    (dict(attention="cudnn", dtype="float16", dropout=0.1),
     r"model.dropout=0.1 .*'cudnn' has no attention-weight dropout.*model.dropout=0"),
])
def test_attention_options_that_do_not_fit(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        check_model(ModelConfig(**kwargs))


@pytest.mark.parametrize("kwargs, match", [
    (dict(position="rope", rope_theta=0.0), r"model.rope_theta=0.0 .*must be a positive number"),
    (dict(rope_theta=-10000), r"model.rope_theta=-10000 .*positive"),
])
def test_bad_rope_theta(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig(**kwargs)


def test_cudnn_config_is_valid_off_gpu_and_needs_even_training_lengths():
    # The config is the machine's business only at run start (kernels.check_available).
    cudnn = {"attention": "cudnn", "dtype": "bfloat16"}
    check_config(Config.from_dict({"model": cudnn, "data": {"seq_len": 256}}))
    with pytest.raises(ConfigError, match=r"data.seq_len=255 .*'cudnn' trains on even sequence"):
        check_config(Config.from_dict({"model": cudnn, "data": {"seq_len": 255}}))


def _config_files():
    root = pathlib.Path(__file__).resolve().parents[1] / "configs"
    return sorted(p for p in root.glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("path", _config_files(), ids=lambda p: p.name)
def test_every_config_file_is_a_valid_config(path):
    """Each experiment config, with each of its arguments, validates as it stands."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for arg in getattr(module, "TASKS", [None]):
        config = module.get_config() if arg is None else module.get_config(arg)
        check_config(Config.from_dict(config))


@pytest.mark.parametrize("section, field", [("optim", "lr"), ("optim", "min_lr"),
                                            ("optim", "b2"), ("model", "dropout"),
                                            ("model", "rope_theta"), ("data", "val_fraction"),
                                            ("optim", "grad_clip")])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_float_fields_refuse_non_finite_values(section, field, value):
    with pytest.raises(ConfigError, match=rf"{section}\.{field}=.*finite"):
        Config.from_dict({section: {field: value}})
