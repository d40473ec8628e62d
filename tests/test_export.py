"""experiments.export: a run's workdir or a Hugging Face GPT-2 folder -> a Hugging Face GPT-2
folder whose logits equal gptjax's (through gptjax's own reader always, through transformers
where installed), with the true vocabulary size and the source's tokenizer files; and the
README's fine-tuning flow, run on the GPT-2 that tests/golden ships."""

import json
import logging
import os
import pathlib
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before any transformers import

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from safetensors import safe_open  # noqa: E402

from gptjax import GPT, Tokenizer  # noqa: E402
from gptjax.config import Config  # noqa: E402
from gptjax.model import apply, split  # noqa: E402
from gptjax.training.export import export  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = "tests/golden/tiny-gpt2"  # as the README names it: 2 layers, 64 wide, vocab 320
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TOL = 1e-4
IDS = (np.arange(48).reshape(2, 24) * 37) % 320


def logits_of(model: GPT) -> np.ndarray:
    """The first 320 logits (a padded vocabulary's extra columns are masked, not exported)."""
    graphdef, params = split(model)
    return np.asarray(jax.jit(lambda p, x: apply(graphdef, p, x))(params, IDS))[..., :320]


def hf_logits(folder) -> np.ndarray | None:
    """transformers' logits of the folder, or None where torch or transformers is absent."""
    try:
        import torch
        import transformers
    except ImportError:
        return None
    model = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(torch.from_numpy(IDS).long()).logits.numpy()


def assert_same_model(source, outdir, through_hf: bool = False) -> None:
    ours = logits_of(GPT.from_pretrained(source))
    assert np.abs(logits_of(GPT.from_pretrained(outdir)) - ours).max() < TOL
    theirs = hf_logits(outdir) if through_hf else None
    if theirs is not None:
        assert np.abs(theirs - ours).max() < TOL


def run(module: str, *argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="",  # one device: fast compile
               JAX_DISABLE_MOST_OPTIMIZATIONS="1")
    proc = subprocess.run([sys.executable, "-m", module, *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module", autouse=True)
def _fast(fast_compiles):
    """Tiny models: compile time dominates."""


@pytest.fixture(scope="module")
def readme_flow(tmp_path_factory):
    """README's `experiments.finetune --config=configs/finetune_gpt2.py:qa --init_from=TINY`,
    3 steps with a vocabulary padded to 384 rows, then exported as `experiments.export` does."""
    tmp = tmp_path_factory.mktemp("readme")
    data = tmp / "qa.jsonl"
    data.write_text("".join(json.dumps({"question": f"What comes after {WORDS[i % 9]}?",
                                        "answer": WORDS[i % 9 + 1]}) + "\n" for i in range(40)))
    tuned = run("experiments.finetune", "--config=configs/finetune_gpt2.py:qa",
                f"--init_from={TINY}", f"--config.data.text_file={data}",
                f"--workdir={tmp / 'run'}", "--config.train.num_steps=3",
                "--config.train.eval_steps=1", "--config.model.vocab_multiple=128")
    # experiments.export is this call and one log line (its bad inputs: tests/test_cli_errors.py)
    export(tmp / "run", tmp / "hf")
    return dict(workdir=tmp / "run", outdir=tmp / "hf", log=tuned.stderr)


def test_readme_finetune_flow_fits_the_tiny_model(readme_flow):
    saved = Config.from_dict(json.loads((readme_flow["workdir"] / "config.json").read_text()))
    assert saved.data.seq_len == 128 and saved.model.max_len == 128  # the config asks 256
    assert "data.seq_len=256 capped at the model's context, max_len=128" in readme_flow["log"]
    assert saved.optim.warmup_steps == 3 // 20  # 5% of the run, not the 1000-step run's 50
    rows = [json.loads(line) for line in (readme_flow["workdir"] / "metrics.jsonl").open()]
    assert any(r.get("step") == 3 and np.isfinite(r.get("train_loss", np.nan)) for r in rows)


def test_export_of_a_padded_run_has_the_true_vocabulary_and_the_same_logits(readme_flow):
    workdir, outdir = readme_flow["workdir"], readme_flow["outdir"]
    assert GPT.from_pretrained(workdir).cfg.padded_vocab == 384
    assert json.loads((outdir / "config.json").read_text())["vocab_size"] == 320
    with safe_open(outdir / "model.safetensors", framework="np") as f:
        assert f.get_slice("transformer.wte.weight").get_shape() == [320, 64]
    assert_same_model(workdir, outdir, through_hf=True)
    text = "Question: What comes after two?\nAnswer: three"
    assert (Tokenizer.from_pretrained(outdir).encode(text)
            == Tokenizer.from_pretrained(workdir).encode(text))
    generation = json.loads((outdir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == Tokenizer.from_pretrained(workdir).eos_token_id


def test_export_of_a_gpt2_folder_keeps_its_files(tmp_path):
    summary = export(ROOT / TINY, tmp_path / "hf")
    assert summary["vocab_size"] == 320 and summary["tokenizer"] == "bpe"
    for name in ("vocab.json", "merges.txt", "tokenizer.json", "generation_config.json"):
        assert (tmp_path / "hf" / name).read_bytes() == (ROOT / TINY / name).read_bytes(), name
    assert_same_model(ROOT / TINY, tmp_path / "hf")


def test_a_char_tokenizer_is_copied_with_a_warning(tmp_path, caplog):
    source = tmp_path / "char-model"
    source.mkdir()
    for name in ("config.json", "model.safetensors"):
        (source / name).write_bytes((ROOT / TINY / name).read_bytes())
    Tokenizer.char("abc xyz").save(source)
    with caplog.at_level(logging.WARNING):
        summary = export(source, tmp_path / "hf")
    assert summary["tokenizer"] == "char"
    assert Tokenizer.from_pretrained(tmp_path / "hf").encode("cab") == [3, 1, 2]
    assert "transformers cannot load this tokenizer" in caplog.text


def fake_run(folder: pathlib.Path, **model) -> pathlib.Path:
    """A run's workdir as far as its config goes: export must refuse before reading weights."""
    folder.mkdir()
    (folder / "checkpoints").mkdir()
    cfg = Config.from_dict({"model": dict(num_layers=1, num_heads=4, d_model=32, **model)})
    (folder / "config.json").write_text(json.dumps(cfg.to_dict()))
    return folder


@pytest.mark.parametrize("field, value", [("position", "rope"), ("position", "alibi"),
                                          ("position", "sinusoidal"), ("num_kv_heads", 2),
                                          ("window", 16)])
def test_what_gpt2_cannot_hold_is_refused_naming_the_field(tmp_path, field, value):
    source = fake_run(tmp_path / "run", **{field: value})
    with pytest.raises(ValueError, match=rf"model\.{field}={value!r}.*cannot be saved as a "
                                         "Hugging Face GPT-2"):
        export(source, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_outdir_rules(tmp_path):
    outdir = tmp_path / "hf"
    outdir.mkdir()
    (outdir / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty.*--overwrite"):
        export(ROOT / TINY, outdir)
    Tokenizer.char("abc").save(outdir)  # a stale tokenizer that would shadow the BPE one
    export(ROOT / TINY, outdir, overwrite=True)
    assert Tokenizer.from_pretrained(outdir).kind == "bpe"
    assert (outdir / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="is the source folder"):
        export(outdir, outdir, overwrite=True)
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    (untrained / "config.json").write_text(json.dumps(Config.from_dict({}).to_dict()))
    with pytest.raises(FileNotFoundError, match="gptjax run with no checkpoints"):
        export(untrained, tmp_path / "out")
