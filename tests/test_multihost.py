"""Two local processes joined by jax.distributed (127.0.0.1, CPU, gloo), 4 devices each: jit
(data x fsdp x tensor over all 8 devices) and pmap train the same losses as one process on one
device, and the orbax checkpoint they write together restores on one device.

Run as a script, this file is one of the two workers.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 3
MESHES = {"jit_dp_fsdp_tp": dict(data=2, fsdp=2, tensor=2), "pmap": dict(strategy="pmap")}


def tiny(mesh: dict):
    from gptjax.config import Config

    return Config.from_dict({
        "model": dict(vocab_size=64, max_len=16, num_layers=1, num_heads=4, d_model=32,
                      attention="reference"),
        "data": dict(seq_len=16, batch_size=8),
        "optim": dict(lr=1e-2, warmup_steps=0),
        "train": dict(num_steps=STEPS, seed=0),
        "mesh": mesh})


ROWS = [([1, 2, 3, 4, 5], 2), ([7, 8, 9], 1), ([3, 1, 4, 1, 5, 9, 2, 6], 3)]  # (tokens, scored)


def choice_logprobs(params) -> np.ndarray:
    """multiple_choice's scores of ROWS under `params` (the periodic scoring a run does, from
    host numpy batches and the run's sharded params)."""
    from flax import nnx

    from gptjax import multiple_choice
    from gptjax.training.state import graphdef_of

    model = nnx.merge(graphdef_of(tiny({}).model), params)
    return multiple_choice.choice_logprobs(model, ROWS, batch_size=2)


def worker(process_id: int, num_processes: int, port: int, out: str) -> None:
    import jax

    from gptjax import parallel
    from gptjax.bench import scaling

    try:
        parallel.initialize_distributed(f"127.0.0.1:{port}", num_processes, process_id)
    except Exception as e:  # the environment cannot join processes: the test skips
        print(f"INIT_FAILED: {e!r}", file=sys.stderr)
        sys.exit(3)
    import orbax.checkpoint as ocp

    result = {"process_index": jax.process_index(), "process_count": jax.process_count(),
              "devices": jax.device_count(), "local_devices": jax.local_device_count()}
    batches = scaling.synthetic_batches(tiny({}), STEPS)
    for name, mesh in MESHES.items():
        run = scaling.run(tiny(mesh), batches)
        result[name] = run.losses
        result[f"{name}_choices"] = choice_logprobs(run.state.params).tolist()
        if name.startswith("jit"):
            with ocp.StandardCheckpointer() as ckptr:  # every process writes its shards
                ckptr.save(pathlib.Path(out).parent / "ckpt", run.state.params)
            from jax.experimental import multihost_utils

            full = multihost_utils.process_allgather(run.state.params, tiled=True)
            if jax.process_index() == 0:
                leaves = jax.tree_util.tree_leaves_with_path(full)
                np.savez(pathlib.Path(out).parent / "params.npz",
                         **{jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves})
    parallel.distributed.sync("done")
    pathlib.Path(out).write_text(json.dumps(result))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_device(tmp_path):
    import jax
    import orbax.checkpoint as ocp

    from gptjax.bench import scaling
    from gptjax.parallel import make_plan

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1",  # compile faster
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get(
                   "PYTHONPATH", ""))
    for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(key, None)
    port = _free_port()
    outs = [tmp_path / f"out{i}.json" for i in range(2)]
    try:
        procs = [subprocess.Popen([sys.executable, __file__, str(i), "2", str(port), str(outs[i])],
                                  env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i in range(2)]
    except OSError as e:
        pytest.skip(f"cannot spawn worker processes here: {e}")

    # Meanwhile, the reference: one process, one device, the same batches and seed.
    batches = scaling.synthetic_batches(tiny({}), STEPS)
    ref = scaling.run(tiny(dict(data=1)), batches, devices=jax.devices()[:1])

    logs = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("two-process workers did not finish in 240 s")
        logs.append(err)
    if any(p.returncode == 3 for p in procs):
        pytest.skip("jax.distributed could not join two local processes: "
                    + " | ".join(e.strip().splitlines()[-1] for e in logs if "INIT_FAILED" in e))
    for p, err in zip(procs, logs):
        assert p.returncode == 0, err[-3000:]

    results = [json.loads(o.read_text()) for o in outs]
    assert [r["process_index"] for r in results] == [0, 1]
    assert all(r["process_count"] == 2 and r["devices"] == 8 and r["local_devices"] == 4
               for r in results)
    want = choice_logprobs(ref.state.params)
    for name in MESHES:
        for r in results:
            np.testing.assert_allclose(r[name], ref.losses, atol=1e-5, rtol=0, err_msg=name)
            # scoring questions from host batches works across processes, on the same params
            np.testing.assert_allclose(r[f"{name}_choices"], want, rtol=1e-4, err_msg=name)

    # The checkpoint both processes wrote restores onto one device (resharding 8 -> 1) and
    # holds exactly the params they trained.
    one = make_plan(tiny(dict(data=1)), devices=jax.devices()[:1])
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(tmp_path / "ckpt", one.abstract(ref.state.params))
    saved = np.load(tmp_path / "params.npz")
    leaves = jax.tree_util.tree_leaves_with_path(params)
    assert sorted(saved.files) == sorted(jax.tree_util.keystr(k) for k, _ in leaves)
    for k, a in leaves:
        assert a.sharding.device_set == {jax.devices()[0]}
        np.testing.assert_array_equal(np.asarray(a), saved[jax.tree_util.keystr(k)])


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
