"""A run survives what a long run meets: SIGTERM and Ctrl-C (save the step, stop, resume), two
processes of which only one is preempted, a truncated / partial / unfinished newest checkpoint,
a half-written metrics.jsonl line, a raised train.num_steps, a full disk, an unwritable workdir.
Every resume is checked bitwise against an uninterrupted run.

Run as a script, this file is one of the two jax.distributed workers of the preemption test.
"""

import errno
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_training import read_metrics, saved_params, tiny_config  # noqa: E402

from gptjax.training import checkpoint as ckpt_lib  # noqa: E402
from gptjax.training.loop import train  # noqa: E402

STOP_AT = 13  # the in-process SIGTERM lands during this step: not a checkpoint_every multiple
COMPARED = ("train_loss", "val_loss", "grad_norm", "lr")


def config(tmp: pathlib.Path, **train_fields) -> dict:
    return tiny_config(tmp, train=dict(checkpoint_every=5, **train_fields))


def send_at(step: int, *signums):
    """A callback that sends this process each signal in `signums` after `step`."""
    def callback(s, row, run):
        if s == step:
            for signum in signums:
                os.kill(os.getpid(), signum)
                time.sleep(0.05)  # the handler runs between bytecodes of the main thread
    return callback


CACHE_FLAGS = {"jax_persistent_cache_min_compile_time_secs": 0,
               "jax_persistent_cache_min_entry_size_bytes": -1}


@pytest.fixture(scope="module", autouse=True)
def compile_once(tmp_path_factory):
    """Every run here compiles the same programs: a persistent compilation cache makes the
    first compile the only one (about 25 s on 2 busy cores, against 2 s from the cache)."""
    from jax._src import compilation_cache

    cache = tmp_path_factory.mktemp("jax_cache")
    names = ["jax_compilation_cache_dir", *CACHE_FLAGS]
    before = {name: getattr(jax.config, name) for name in names}
    for name, value in {"jax_compilation_cache_dir": str(cache), **CACHE_FLAGS}.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(cache)  # the subprocesses share it
    yield
    os.environ.pop("JAX_COMPILATION_CACHE_DIR")
    for name, value in before.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """20 steps straight; and the same run stopped by a real SIGTERM during step 13."""
    tmp = tmp_path_factory.mktemp("survive")
    cfg = config(tmp)
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    straight = train(cfg, tmp / "straight")
    stopped = train(cfg, tmp / "stopped", callbacks=[send_at(STOP_AT, signal.SIGTERM)])
    after = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    return dict(tmp=tmp, cfg=cfg, straight=straight, stopped=stopped, handlers=(before, after))


def copy_run(runs, name: str, tmp_path: pathlib.Path) -> pathlib.Path:
    target = tmp_path / name
    shutil.copytree(runs["tmp"] / name, target)
    return target


def assert_same_as_straight(runs, workdir: pathlib.Path, last: int = 20) -> None:
    straight = read_metrics(runs["tmp"] / "straight")
    resumed = read_metrics(workdir)
    assert [r["step"] for r in resumed] == [r["step"] for r in straight] == list(range(1, 21))
    for a, b in zip(straight, resumed):
        assert {k: a.get(k) for k in COMPARED} == {k: b.get(k) for k in COMPARED}, a["step"]
    a, b = saved_params(runs["tmp"] / "straight", last), saved_params(workdir, last)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()  # bitwise


def largest_file(folder: pathlib.Path) -> pathlib.Path:
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_sigterm_saves_the_step_and_stops(runs):
    stopped = runs["stopped"]
    assert stopped["preempted"] is True and stopped["step"] == STOP_AT
    workdir = runs["tmp"] / "stopped"
    assert ckpt_lib.steps(workdir / "checkpoints") == [STOP_AT, 10, 5]
    assert read_metrics(workdir)[-1]["step"] == STOP_AT
    assert not runs["straight"].get("preempted")
    before, after = runs["handlers"]
    assert after == before  # the default handlers are back


def test_truncated_newest_checkpoint_falls_back_and_resumes_bitwise(runs, tmp_path, caplog):
    """Checkpoint 13 truncated, a half-written metrics line, a killed save's leftover: one
    warning, step 10 restored, 13 kept aside as 13.corrupt, and the run ends as the straight one."""
    workdir = copy_run(runs, "stopped", tmp_path)
    ckpts = workdir / "checkpoints"
    for victim in (ckpts / str(STOP_AT) / "state").rglob("*"):  # every array file cut short
        if victim.is_file() and victim.parent.name == "d":
            with victim.open("r+b") as f:
                f.truncate(victim.stat().st_size // 2)
    with (workdir / "metrics.jsonl").open("a") as f:
        f.write('{"step": 14, "train_loss": 3.1')  # killed mid-line
    (ckpts / "14.orbax-checkpoint-tmp-1234").mkdir()
    with caplog.at_level("WARNING"):
        final = train(runs["cfg"], workdir)
    assert final["step"] == 20 and not final.get("preempted")
    unreadable = [r for r in caplog.records if "is unreadable" in r.getMessage()]
    assert len(unreadable) == 1 and f"checkpoints/{STOP_AT} is unreadable" in (
        unreadable[0].getMessage())
    assert "do not parse" in caplog.text
    assert (ckpts / f"{STOP_AT}.corrupt").is_dir()
    assert not list(ckpts.glob("*orbax-checkpoint-tmp*"))  # the leftover is cleaned
    assert_same_as_straight(runs, workdir)


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(runs, tmp_path):
    workdir = copy_run(runs, "stopped", tmp_path)
    ckpts = workdir / "checkpoints"
    for step in (5, 10, STOP_AT):
        largest_file(ckpts / str(step) / "state").unlink()  # a file missing from each
    rows = (workdir / "metrics.jsonl").read_text()
    for _ in range(2):  # the second time: refused before any compile, the same way
        with pytest.raises(ckpt_lib.CheckpointError, match=rf"{workdir} holds a run, but none "
                           r"of its checkpoints restores .*5.corrupt, 10.corrupt, 13.corrupt"):
            train(runs["cfg"], workdir)
    assert ckpt_lib.steps(ckpts) == []
    assert (workdir / "metrics.jsonl").read_text() == rows  # nothing trained over it


def test_raised_num_steps_keeps_the_schedule(runs, tmp_path, caplog):
    """A finished 20-step run extended to 26: the cosine schedule keeps its 20-step horizon and
    the new steps train at optim.min_lr, said in one INFO line; config.json records it."""
    workdir = copy_run(runs, "straight", tmp_path)
    cfg = config(runs["tmp"], num_steps=26)
    with caplog.at_level("INFO"):
        train(cfg, workdir)
    assert "schedule was made for 20 steps: it is kept (optim.decay_steps=20)" in caplog.text
    rows = read_metrics(workdir)
    assert [r["step"] for r in rows] == list(range(1, 27))
    min_lr = cfg["optim"]["min_lr"]
    assert all(r["lr"] == pytest.approx(min_lr, rel=1e-6) for r in rows[20:])
    assert rows[:20] == read_metrics(runs["tmp"] / "straight")
    assert json.loads((workdir / "config.json").read_text())["optim"]["decay_steps"] == 20


def test_full_disk_at_a_save_is_a_clear_error_and_keeps_the_checkpoints(runs, tmp_path,
                                                                        monkeypatch):
    import orbax.checkpoint as ocp

    workdir = copy_run(runs, "stopped", tmp_path)
    real = ocp.JsonCheckpointHandler._save_fn

    async def full_disk(self, x, directory):  # the config's write, in the background commit
        if "15" in pathlib.Path(directory).parent.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return await real(self, x, directory)

    monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", full_disk)
    with pytest.raises(ckpt_lib.CheckpointError,
                       match=rf"save in {workdir}/checkpoints failed .*: ENOSPC .*steps "
                             rf"5, 10, {STOP_AT}\) are intact"):
        train(runs["cfg"], workdir)
    monkeypatch.undo()
    assert ckpt_lib.steps(workdir / "checkpoints") == [STOP_AT, 10, 5]
    _, params = ckpt_lib.load_params(workdir)  # the newest intact one restores, unchanged
    ref = saved_params(runs["tmp"] / "stopped", STOP_AT)["params"]
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(ref), strict=True):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


def test_unwritable_workdir_fails_before_the_data(runs, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    cfg = config(tmp_path)  # its own data_dir: nothing may be built there
    with pytest.raises(ckpt_lib.CheckpointError, match=r"--workdir .*a_file/run is not "
                                                       r"writable \(ENOTDIR"):
        train(cfg, blocker / "run")
    if os.geteuid() != 0:  # root writes through permission bits
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ckpt_lib.CheckpointError, match=r"not writable \(EACCES"):
            train(cfg, locked / "run")
    assert not (tmp_path / "tfds").exists()


def test_second_ctrl_c_stops_at_once_and_keeps_the_last_checkpoint(runs, tmp_path):
    workdir = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        train(runs["cfg"], workdir, callbacks=[send_at(7, signal.SIGINT, signal.SIGINT)])
    assert signal.getsignal(signal.SIGINT) == before
    assert ckpt_lib.steps(workdir / "checkpoints") == [5]  # step 7 was not saved
    assert not list((workdir / "checkpoints").glob("*tmp*"))


# --- real processes: the command line, and two jax.distributed processes -------------------------

def _env(devices: int) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1",
               **{name.upper(): str(value) for name, value in CACHE_FLAGS.items()},
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(key, None)
    return env


def _wait_for_step(workdir: pathlib.Path, step: int, procs, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while True:
        path = workdir / "metrics.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        if lines and lines[-1].endswith("}") and json.loads(lines[-1])["step"] >= step:
            return
        for p in procs:
            assert p.poll() is None, p.communicate()[1][-3000:]
        assert time.time() < deadline, f"no step {step} within {timeout} s"
        time.sleep(0.2)


def test_command_line_sigterm_exits_0_with_the_resume_line(runs, tmp_path):
    cfg = config(runs["tmp"], num_steps=5000)
    cfg["mesh"] = dict(data=1)
    cfg_file = tmp_path / "cfg.py"
    cfg_file.write_text("import json\nimport ml_collections\n\n\ndef get_config():\n"
                        f"    return ml_collections.ConfigDict(json.loads({json.dumps(cfg)!r}))\n")
    workdir = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "experiments.train", f"--config={cfg_file}",
                          f"--workdir={workdir}"], cwd=ROOT, env=_env(1), text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_step(workdir, 3, [p])
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 0, err[-3000:]
    step = read_metrics(workdir)[-1]["step"]
    assert f"stopped at step {step}; run the same command to resume" in out
    assert ckpt_lib.steps(workdir / "checkpoints")[0] == step
    assert "Traceback" not in err


def worker(process_id: int, port: int, workdir: str, cfg_json: str, out: str) -> None:
    from gptjax import parallel

    try:
        parallel.initialize_distributed(f"127.0.0.1:{port}", 2, process_id)
    except Exception as e:  # the environment cannot join processes: the test skips
        print(f"INIT_FAILED: {e!r}", file=sys.stderr)
        sys.exit(3)
    final = train(json.loads(cfg_json), workdir)
    pathlib.Path(out).write_text(json.dumps({k: final.get(k) for k in ("step", "preempted")}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_workers(tmp_path, workdir, cfg, tag):
    port, outs = _free_port(), [tmp_path / f"{tag}{i}.json" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, __file__, str(i), str(port), str(workdir),
                               json.dumps(cfg), str(outs[i])], cwd=ROOT, env=_env(1),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    return procs, outs


def _finish(procs, outs, timeout=180):
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout)[1])
    finally:
        for p in procs:
            p.kill()
    if any(p.returncode == 3 for p in procs):
        pytest.skip("jax.distributed could not join two local processes")
    for p, err in zip(procs, logs):
        assert p.returncode == 0, err[-3000:]
    return [json.loads(o.read_text()) for o in outs]


@pytest.fixture(scope="module")
def two_processes(runs, tmp_path_factory):
    """Two jax.distributed processes; only process 1 gets SIGTERM after step 3; then both
    resume for 2 more steps."""
    tmp = tmp_path_factory.mktemp("two_processes")
    workdir = tmp / "run"
    cfg = config(runs["tmp"], num_steps=5000)  # runs["tmp"]: the data is prepared already
    procs, outs = _two_workers(tmp, workdir, cfg, "first")
    _wait_for_step(workdir, 3, procs)
    procs[1].send_signal(signal.SIGTERM)
    first = _finish(procs, outs)
    step = first[0]["step"]
    newest_at_stop = ckpt_lib.steps(workdir / "checkpoints")[0]
    cfg["train"]["num_steps"] = step + 2
    resumed = _finish(*_two_workers(tmp, workdir, cfg, "resumed"))
    return dict(workdir=workdir, cfg=cfg, step=step, first=first, resumed=resumed,
                newest_at_stop=newest_at_stop)


def test_two_processes_stop_at_the_same_step_when_one_is_preempted(two_processes):
    """jax's preemption sync point stops both after the same step, which both checkpoint; both
    exit 0, and both resume from it."""
    step = two_processes["step"]
    assert two_processes["first"] == [{"step": step, "preempted": True}] * 2
    assert two_processes["newest_at_stop"] == step
    assert two_processes["resumed"] == [{"step": step + 2, "preempted": None}] * 2
    assert [r["step"] for r in read_metrics(two_processes["workdir"])] == list(
        range(1, step + 3))


def test_two_processes_stop_together_when_one_cannot_read_the_newest_checkpoint(two_processes,
                                                                               tmp_path):
    """The newest step reads on process 0 but not on process 1 (its own data-iterator file is
    garbled). Before, process 1 fell back to an older step alone while process 0 resumed from
    the newest, and the first mismatched collective aborted both. Now the resume stops on both
    processes, trains nothing, names the checkpoint and the process; the step is moved aside,
    and the same command run again resumes both processes from the step before it."""
    workdir = tmp_path / "run"
    shutil.copytree(two_processes["workdir"], workdir)
    ckpts = workdir / "checkpoints"
    newest, older = ckpt_lib.steps(ckpts)[:2]
    (ckpts / str(newest) / "data" / "process_1-of-2.json").write_text("{truncated")
    cfg = dict(two_processes["cfg"], train=dict(two_processes["cfg"]["train"],
                                                num_steps=newest + 2))
    procs, outs = _two_workers(tmp_path, workdir, cfg, "broken")
    try:
        logs = [p.communicate(timeout=180)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode != 0 for p in procs] == [True, True], logs[1][-3000:]
    assert (f"CheckpointError: checkpoint {ckpts}/{newest} is unreadable on process 1 of 2 "
            "(JSONDecodeError") in logs[1]
    assert f"run the same command again and every process resumes from step {older}" in logs[1]
    # Process 0 reads the step, and stops because process 1 could not (the processes agree
    # before orbax's restore, whose barrier would otherwise keep process 0 waiting for minutes)
    assert (f"CheckpointError: checkpoint {ckpts}/{newest} is unreadable on process 1 of 2, "
            "which moves it aside") in logs[0]
    assert [r["step"] for r in read_metrics(workdir)] == list(range(1, newest + 1))
    assert ckpt_lib.steps(ckpts)[0] == older and ckpt_lib.corrupt_steps(ckpts) == [
        f"{newest}.corrupt"]
    assert _finish(*_two_workers(tmp_path, workdir, cfg, "again")) == [
        {"step": newest + 2, "preempted": None}] * 2
    assert [r["step"] for r in read_metrics(workdir)] == list(range(1, newest + 3))


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
