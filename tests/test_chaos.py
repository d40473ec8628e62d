"""The chaos harness end to end, short form: a real `experiments.train` process killed with SIGKILL
twice at seeded random moments, once while an asynchronous save is being written, resumed each
time, ends bitwise equal to an uninterrupted run. The long form is experiments/chaos.py."""

import json
import os
import pathlib
import sys

from gptjax.bench import chaos

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 24


def command(tmp: pathlib.Path) -> list[str]:
    return [sys.executable, "-m", "experiments.train", "--config=configs/quickstart.py",
            "--config.model.num_layers=1", "--config.model.d_model=32",
            "--config.model.num_heads=2", "--config.model.dropout=0.1",
            f"--config.train.num_steps={STEPS}", "--config.train.checkpoint_every=3",
            "--config.train.log_every=1", f"--config.train.eval_every={STEPS}",
            "--config.train.eval_steps=1", "--config.train.sample_tokens=0",
            "--config.mesh.cpu_devices=0", f"--config.data.data_dir={tmp / 'data'}"]


def test_random_sigkills_resume_bitwise(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1",
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1", PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)  # one device: the quickstart's mesh.cpu_devices is set to 0
    cmd = command(tmp_path)
    straight = chaos.launch(cmd, tmp_path / "straight", env, tmp_path / "straight-log")
    chaos.wait_until(straight, lambda: chaos.last_step(tmp_path / "straight") >= 1,
                     "step 1 (the data prepared)", tmp_path / "straight-log", 300)
    kills = chaos.killed_run(cmd, tmp_path / "killed", env, kills=2, num_steps=STEPS, seed=1)
    assert chaos.finish(straight, tmp_path / "straight-log", 300) == 0
    assert len(kills) == 2
    assert any(k.during_save for k in kills)  # a save's temporary folder was left behind
    assert all(k.steps_lost >= 0 for k in kills)
    assert not chaos.saving(tmp_path / "killed")  # the resumed run cleaned the leftovers
    compared, diff = chaos.differing(tmp_path / "straight", tmp_path / "killed")
    assert compared > 10 and diff == []
    assert chaos.last_step(tmp_path / "killed") == STEPS
    straight_rows = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    killed_rows = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert [_loss(r) for r in killed_rows] == [_loss(r) for r in straight_rows]


def _loss(line: str):
    row = json.loads(line)
    return row["step"], row.get("train_loss"), row.get("val_loss")
