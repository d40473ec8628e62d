"""The training loop end to end on a tiny model: loss falls, exact resume after SIGKILL, what the
workdir holds, and every bad input refused before anything is written."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from gptjax.config import ConfigError
from gptjax.training import checkpoint as ckpt_lib
from gptjax.training.loop import train

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. "
        "resolved.\n\nFirst Citizen:\nFirst, you know Caius Marcius is chief enemy to the "
        "people.\n\n") * 20

# The child trains the same config and stops dead at step 10, after starting that checkpoint;
# the test SIGKILLs it once the checkpoint is durable.
CHILD = """
import json, sys, time
from gptjax.training.loop import train
def hold(step, row, run):
    if step == 10:
        time.sleep(600)
train(json.loads(sys.argv[1]), sys.argv[2], callbacks=[hold])
"""


def tiny_config(tmp: pathlib.Path, **sections) -> dict:
    text = tmp / "tiny.txt"
    if not text.exists():
        text.write_text(TEXT)
    cfg = {
        "model": dict(vocab_size=0, max_len=32, num_layers=1, num_heads=2, d_model=32,
                      dropout=0.1),  # dropout: the per-step RNG must resume exactly too
        "data": dict(dataset="text_file", text_file=str(text), tokenizer="char", seq_len=32,
                     batch_size=8, data_dir=str(tmp / "tfds")),
        "optim": dict(lr=3e-3, min_lr=3e-4, warmup_steps=2),
        "train": dict(num_steps=20, log_every=1, eval_every=10, eval_steps=2,
                      checkpoint_every=10, sample_tokens=0),
    }
    for name, fields in sections.items():
        cfg[name].update(fields)
    return cfg


def read_metrics(workdir) -> list[dict]:
    return [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").open()]


def saved_params(workdir, step: int):
    with ocp.CheckpointManager(pathlib.Path(workdir) / "checkpoints",
                               item_handlers={"state": ocp.StandardCheckpointHandler()}) as m:
        state = m.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return state["state"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """20 steps straight; and 10 steps in a process killed with SIGKILL, then 10 resumed."""
    tmp = tmp_path_factory.mktemp("train")
    cfg = tiny_config(tmp)
    straight, killed = tmp / "straight", tmp / "killed"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(cfg), str(killed)],
                             cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        final = train(cfg, straight)  # meanwhile, in this process
        deadline = time.time() + 240
        while ckpt_lib.latest_step(killed / "checkpoints") != 10:
            assert child.poll() is None, child.stderr.read().decode()[-3000:]
            assert time.time() < deadline, "the child never finished its step-10 checkpoint"
            time.sleep(0.2)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    first_leg = read_metrics(killed)
    resumed = train(cfg, killed)
    return dict(cfg=cfg, tmp=tmp, straight=straight, killed=killed, final=final,
                resumed=resumed, first_leg=first_leg)


def test_tiny_run_loss_falls(runs):
    rows = [r for r in read_metrics(runs["straight"]) if "train_loss" in r]
    assert rows[0]["train_loss"] > np.log(20)  # about uniform over the ~35 characters
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.5
    assert runs["final"]["val_loss"] < rows[0]["train_loss"] - 0.5


def test_exact_resume_after_kill(runs):
    assert [r["step"] for r in runs["first_leg"]][-1] == 10  # the child died at step 10
    straight, resumed = read_metrics(runs["straight"]), read_metrics(runs["killed"])
    assert [r["step"] for r in resumed] == [r["step"] for r in straight] == list(range(1, 21))
    for a, b in zip(straight, resumed):
        for key in ("train_loss", "val_loss", "grad_norm", "lr"):
            assert a.get(key) == b.get(key), (a["step"], key)
    a, b = saved_params(runs["straight"], 20), saved_params(runs["killed"], 20)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # bitwise
    assert runs["resumed"]["val_loss"] == runs["final"]["val_loss"]


def test_workdir_contents(runs):
    workdir = runs["straight"]
    rows = read_metrics(workdir)
    for row in rows:
        assert {"step", "train_loss", "lr", "grad_norm"} <= set(row)
    assert all("tokens_per_sec" in r and "ms_per_step" in r for r in rows[1:])
    evaluated = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in evaluated] == [10, 20]
    assert all(r["val_perplexity"] == pytest.approx(np.exp(r["val_loss"])) for r in evaluated)
    assert "mfu" not in rows[-1]  # a CPU without train.peak_flops: MFU unknown, not guessed
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["model"]["vocab_size"] == len(set(TEXT))  # resolved from the tokenizer
    assert saved["train"]["num_steps"] == 20
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    from gptjax.tokenizers import Tokenizer

    tok = Tokenizer.from_pretrained(workdir / "tokenizer")
    assert tok.decode(tok.encode("First Citizen")) == "First Citizen"
    # keep_checkpoints=3 by default; both saves are there, complete
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [10, 20]


def _snapshot(path: pathlib.Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*")}


def test_resume_refuses_another_model_shape(runs):
    workdir = runs["straight"]
    before = _snapshot(workdir)
    cfg = tiny_config(runs["tmp"], model=dict(d_model=64, num_layers=2))
    with pytest.raises(ConfigError, match=r"model.num_layers: checkpoint 1, config 2; "
                                          r"model.d_model: checkpoint 32, config 64"):
        train(cfg, workdir)
    assert _snapshot(workdir) == before  # nothing overwritten, nothing deleted


def test_resume_may_change_dropout(runs, tmp_path):
    # dropout/kernel/dtype/remat do not change the parameters: allowed, no error at the check
    saved = ckpt_lib.saved_config(runs["straight"] / "checkpoints", 20)
    from gptjax.config import Config

    cfg = tiny_config(runs["tmp"], model=dict(dropout=0.0, remat=True))
    cfg["model"]["vocab_size"] = saved["model"]["vocab_size"]
    ckpt_lib.check_compatible(saved, Config.from_dict(cfg), "workdir")


@pytest.mark.parametrize("sections, message", [
    (dict(data=dict(seq_len=64)), r"data.seq_len=64 .*model.max_len=32"),
    (dict(data=dict(batch_size=12)), r"data.batch_size=12 does not divide over 8 devices"),
    (dict(data=dict(batch_size=8), optim=dict(grad_accum=2)),
     r"batch_size=8 does not divide over 8 devices in each of optim.grad_accum=2"),
    (dict(model=dict(vocab_size=10)), r"model.vocab_size=10 is smaller than the tokenizer"),
    (dict(train=dict(num_stepz=3)), r"unknown field\(s\) train.num_stepz"),
])
def test_bad_input_fails_before_writing(tmp_path, sections, message):
    if jax.device_count() != 8:
        pytest.skip("expects the 8 fake CPU devices of conftest.py")
    cfg = tiny_config(tmp_path, **sections)
    with pytest.raises(ConfigError, match=message):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_sinusoidal_positions_learn_as_fast_as_learned_ones(tmp_path):
    """The article's encoding has amplitude 1 and GPT-2's embeddings start at std 0.02: added
    unscaled, it drowns the tokens and the model stalls near the unigram loss (3.0 here)."""
    losses = {}
    for position in ("learned", "sinusoidal"):
        cfg = tiny_config(tmp_path, model=dict(position=position, dropout=0.0),
                          train=dict(num_steps=60, eval_every=60, checkpoint_every=60,
                                     log_every=10))
        losses[position] = train(cfg, tmp_path / position)["val_loss"]
    assert losses["sinusoidal"] < losses["learned"] + 0.15, losses


def test_samples_come_from_generation_within_max_len_and_callbacks_see_the_state(
        tmp_path, caplog):
    """A prompt + sample longer than the learned positions is shortened to fit (with a warning),
    sampled by gptjax.generation; callbacks get (step, row, run) with the state after the step."""
    from flax import nnx

    from gptjax import generation

    prompt = "First "
    cfg = tiny_config(tmp_path, model=dict(dropout=0.0),
                      train=dict(num_steps=2, eval_every=2, eval_steps=1, checkpoint_every=2,
                                 sample_tokens=40, sample_every=1, sample_prompt=prompt))
    seen = {}

    def check(step, row, run):
        seen[step] = (int(run.state.step), dict(row))
        if step == 2:  # the loop's sample of this step, redone by hand
            ids = run.data.tokenizer.encode(prompt)
            out = generation.generate(nnx.merge(run.graphdef, run.state.params), [ids],
                                      max_new_tokens=32 - len(ids), do_sample=True,
                                      temperature=0.8, top_k=200, seed=run.cfg.train.seed + 2)
            seen["expected"] = run.data.tokenizer.decode(out[0, len(ids):].tolist())

    with caplog.at_level("WARNING"):
        final = train(cfg, tmp_path / "run", callbacks=[check])
    assert "exceed the model's 32 learned positions" in caplog.text
    assert len(final["sample"]) == 32 - len(prompt)  # char tokenizer: one character a token
    assert set(final["sample"]) <= set(TEXT)
    assert final["sample"] == seen["expected"]
    assert seen[1][0] == 1 and seen[2][0] == 2  # the state after each step
    assert seen[2][1]["val_loss"] == final["val_loss"]  # the row metrics.jsonl got


def test_partial_training_resumes_bitwise_and_leaves_the_frozen_weights(tmp_path):
    """train.trainable='^lm_head/': a run stopped after its step-3 checkpoint and resumed ends
    bitwise where an uninterrupted run ends; only the LM head ever changed."""
    cfg = tiny_config(tmp_path, model=dict(tie_embeddings=False),
                      train=dict(num_steps=6, checkpoint_every=3, eval_every=6,
                                 trainable="^lm_head/"))

    class Stop(Exception):
        pass

    def stop_after_3(step, row, run):
        if step == 3:
            raise Stop

    train(cfg, tmp_path / "straight")
    with pytest.raises(Stop):
        train(cfg, tmp_path / "resumed", callbacks=[stop_after_3])
    train(cfg, tmp_path / "resumed")
    losses = [[r["train_loss"] for r in read_metrics(tmp_path / w) if "train_loss" in r]
              for w in ("straight", "resumed")]
    assert losses[0] == losses[1][:3] + losses[1][-3:]
    at3, at6 = saved_params(tmp_path / "straight", 3), saved_params(tmp_path / "straight", 6)
    resumed = saved_params(tmp_path / "resumed", 6)
    flat = lambda tree: {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(x)  # noqa
                         for path, x in jax.tree_util.tree_leaves_with_path(tree)}
    at3, at6, resumed = flat(at3["params"]), flat(at6["params"]), flat(resumed["params"])
    for name in at6:
        assert at6[name].tobytes() == resumed[name].tobytes(), name
        changed = at6[name].tobytes() != at3[name].tobytes()
        assert changed == name.startswith("lm_head"), name
    state = saved_params(tmp_path / "straight", 6)
    head = [x.shape for name, x in at6.items() if name.startswith("lm_head")]
    assert {x.shape for x in jax.tree.leaves(state["opt_state"]) if np.ndim(x)} == set(head)
