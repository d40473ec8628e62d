"""The training benchmark: its peer (nanoGPT, run by a script) and its report, which divides by
that peer's measurement of the same round and names the machine. No timings are asserted: the
peer here is a fake script printing the real runner's JSON line."""

import json
import os
import pathlib

import pytest

from gptjax.bench import generate as bench_generate
from gptjax.bench import host
from gptjax.bench import train as bench
from gptjax.config import Config

ROOT = pathlib.Path(__file__).resolve().parents[1]
RUNNER = ROOT.parent / "shared" / "baselines" / "nanogpt_cpu.sh"
# The flags of the real runner's train.py line, as it writes them.
RECIPE = ('"$VENV/bin/python" train.py config/train_shakespeare_char.py --device=cpu '
          '--compile=False --eval_iters=20 \\\n  --log_interval=10 --block_size=64 --batch_size=12 '
          '--n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 \\\n  --lr_decay_iters=2000 '
          '--dropout=0.0 --out_dir="$WORK/out" "$@"\n')


def _fake_runner(tmp_path, body: str) -> pathlib.Path:
    """A runner whose train.py line is RECIPE (never run: it sits after `exit`) and whose
    behaviour is `body`; it records its arguments in args.txt."""
    script = tmp_path / "nanogpt_cpu.sh"
    script.write_text(f'#!/usr/bin/env bash\necho "$@" > {tmp_path}/args.txt\n{body}\nexit\n'
                      + RECIPE)
    return script


def _recipe_config(**model):
    return Config.from_dict(dict(
        model={**dict(num_layers=4, num_heads=4, d_model=128, max_len=64, dropout=0.0), **model},
        data=dict(seq_len=64, batch_size=12)))


def test_fake_peer_json_is_parsed_with_the_command(tmp_path):
    line = {"tokens_per_sec": 18_000, "ms_per_iter": 42.7, "val_loss": 2.1, "wall_s": 9}
    script = _fake_runner(tmp_path, f"echo 'iter 10: some log'\necho '{json.dumps(line)}'")
    result = bench.run_nanogpt(script, tmp_path / "venv", steps=40)
    assert {k: result[k] for k in line} == line and result["steps"] == 40
    args = (tmp_path / "args.txt").read_text().split()
    assert args == [str(tmp_path / "venv"), "--max_iters=40", "--lr_decay_iters=40"]
    assert result["command"] == f"bash {script} {tmp_path / 'venv'} --max_iters=40 " \
                                "--lr_decay_iters=40"


def test_failing_or_silent_peer_raises_a_clear_error(tmp_path):
    script = _fake_runner(tmp_path, "echo 'ModuleNotFoundError: No module named torch' >&2\n"
                                    "exit 1")
    with pytest.raises(bench.PeerError, match=r"exit 1\): ModuleNotFoundError.*\n.*torch==2.13.0"
                       r".*--peer=none"):
        bench.run_nanogpt(script, tmp_path / "venv", steps=40)
    script = _fake_runner(tmp_path, "echo 'not json'")
    with pytest.raises(bench.PeerError, match="printed 'not json', not its JSON line"):
        bench.run_nanogpt(script, tmp_path / "venv", steps=40)


def test_missing_runner_names_the_fix(tmp_path):
    with pytest.raises(bench.PeerError, match=r"absent .*--peer_script=PATH, or pass --peer=none"):
        bench.check_same_recipe(_recipe_config(), tmp_path / "nowhere.sh")


def test_recipe_is_read_from_the_runner_and_checked(tmp_path):
    script = _fake_runner(tmp_path, "")
    recipe = bench.nanogpt_recipe(script)
    assert (recipe["n_layer"], recipe["block_size"], recipe["batch_size"]) == ("4", "64", "12")
    assert "out_dir" not in recipe  # a shell expression, not a value
    bench.check_same_recipe(_recipe_config(), script)
    with pytest.raises(bench.PeerError, match=r"model.num_layers=6 where nanoGPT runs "
                                              r"--n_layer=4.*--peer=none"):
        bench.check_same_recipe(_recipe_config(num_layers=6), script)


def test_the_cpu_config_is_the_recipe_the_real_runner_gives_nanogpt():
    if not RUNNER.exists():
        pytest.skip(f"{RUNNER} is absent (../shared is not beside this checkout)")
    import importlib.util

    path = ROOT / "configs" / "shakespeare_char_cpu.py"
    spec = importlib.util.spec_from_file_location("cpu", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    bench.check_same_recipe(Config.from_dict(module.get_config()), RUNNER)


def test_torch_missing_from_the_peer_venv_names_the_fix(tmp_path):
    assert bench.peer_torch(tmp_path / "unbuilt") is None  # the runner builds it on first use
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'torch'\" >&2\n"
                      "exit 1\n")
    os.chmod(python, 0o755)
    with pytest.raises(bench.PeerError, match=r"torch does not import.*No module named 'torch'.*"
                                              r"torch==2.13.0.*--peer=none"):
        bench.peer_torch(tmp_path / "venv")
    python.write_text("#!/bin/sh\necho 2.13.0+cpu\n")
    assert bench.peer_torch(tmp_path / "venv") == "2.13.0+cpu"


def test_model_name_from_lscpu_and_cpuinfo():
    assert host.parse_model_name("Architecture: x86_64\nModel name:    Intel(R) Xeon(R) "
                                  "Processor @ 2.80GHz\nStepping: 7\n") == \
        "Intel(R) Xeon(R) Processor @ 2.80GHz"
    assert host.parse_model_name("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n") == \
        "AMD EPYC 7B13"
    assert host.parse_model_name("processor\t: 0\n") is None
    # A name without its model number gets the family and model (lscpu's and cpuinfo's labels)
    assert host.parse_model_name("CPU family:  26\nModel:   2\nModel name:  AMD EPYC\n") == \
        "AMD EPYC (family 26, model 2)"
    assert host.parse_model_name("cpu family\t: 6\nmodel\t\t: 85\nmodel name\t: Intel(R) "
                                  "Xeon(R) CPU @ 2.80GHz\n") == \
        "Intel(R) Xeon(R) CPU @ 2.80GHz (family 6, model 85)"
    assert host.parse_model_name("cpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC "
                                  "7B13\n") == "AMD EPYC 7B13"
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    if cpuinfo.exists() and host.parse_model_name(cpuinfo.read_text()):
        assert bench.machine()["cpu_model"] == host.parse_model_name(cpuinfo.read_text())


def _round(peer_tps, step_tps, loop_tps, wall, to_target, peer_wall):
    m = lambda tps: {"tokens_per_sec": tps, "ms_per_step": 768e3 / tps,  # noqa: E731
                     "first_step_seconds": 4.0}
    return {"peer": {"tokens_per_sec": peer_tps, "ms_per_iter": 768e3 / peer_tps,
                     "val_loss": 1.886, "wall_s": peer_wall, "steps": 2000,
                     "command": "bash nanogpt_cpu.sh .venv --max_iters=2000"},
            "step": m(step_tps), "loop": m(loop_tps),
            "full": {"target": 1.89, "final_val_loss": 1.86, "final_step": 2000,
                     "wall_seconds": wall, "seconds_to_target": to_target, "step_at_target": 1750,
                     "evals": [(1000, 2.0, wall / 2), (2000, 1.86, wall)],
                     "command": "-m experiments.train --config=c.py --workdir=w"}}


MACHINE = {"cpu_model": "AMD EPYC 7B13", "cpus": 2, "cpus_usable": 2, "processor": "x86_64",
           "device": "cpu", "devices": 2, "jax": "0.10.2", "torch": "2.13.0+cpu",
           "torch_note": "nanoGPT's venv", "load_average": [0.5, 0, 0],
           "load_average_after": [2.0, 0, 0]}


def test_report_divides_by_the_peer_of_the_same_round(tmp_path):
    rounds = [_round(16_000, 20_000, 22_000, 90, 80, 97),
              _round(17_700, 17_700, 17_700, 100, None, 95),
              _round(20_000, 23_600, 21_000, 85, 75, 93)]
    path = bench.write_report({"machine": MACHINE, "rounds": rounds}, tmp_path / "b.md",
                              command="python -m experiments.bench_train --full")
    text = path.read_text()
    assert "    python -m experiments.bench_train --full\n" in text
    assert "Machine: AMD EPYC 7B13, 2 cores (2 usable), jax 0.10.2 on 2 cpu device(s), torch " \
           "2.13.0+cpu (nanoGPT's venv). Load average before/after: 0.5 / 2.0" in text
    assert "nanoGPT's run (`bash nanogpt_cpu.sh .venv --max_iters=2000`), then" in text
    # per-round ratios 1.25, 1.00, 1.18 (the ratio of the medians would be 1.13x)
    assert "| compiled step alone | 20,000 (17,700-23,600) |" in text
    assert "| 1.18x (1.00x-1.25x) |" in text
    assert "| training loop, steady state | 21,000 (17,700-22,000) |" in text
    assert "| nanoGPT (PyTorch eager, its own loop) | 17,700 (16,000-20,000) |" in text
    assert "Wall time 90 (85-100) s (nanoGPT: 95 (93-97) s)" in text
    assert "first after 78 (75-80) s in 2 of 3 runs; final val loss 1.8600 (nanoGPT: " \
           "1.8860)." in text
    assert text.count("\n| 2 | 17,700 | 17,700 | 17,700 | 100 | 95 | - | 1.8600 | 1.8860 |") == 1
    saved = json.loads(path.with_suffix(".json").read_text())
    assert saved["command"] == "python -m experiments.bench_train --full"
    assert saved["machine"]["cpu_model"] == "AMD EPYC 7B13"
    assert saved["rounds"] == json.loads(json.dumps(rounds))


def test_report_without_peer_divides_by_nothing(tmp_path):
    rounds = [{k: v for k, v in _round(1, 20_000, 22_000, 90, 80, 1).items() if k != "peer"}]
    text = bench.write_report({"machine": MACHINE, "rounds": rounds}, tmp_path / "b.md",
                              command="python -m experiments.bench_train --peer=none").read_text()
    assert "nanoGPT not run: --peer=none" in text
    assert "| compiled step alone | 20,000 (20,000-20,000) |" in text and "not measured |" in text
    assert "x (" not in text and "nanoGPT:" not in text


def test_generate_report_names_the_cpu(tmp_path):
    row = {"max_new_tokens": 200, "num_beams": 1, "eos_token_id": None, "new_tokens": 200,
           "gptjax_tokens_per_sec": 40.0, "gptjax_tokens_per_sec_best": 41.0,
           "compile_seconds": 8.0, "hf_tokens_per_sec": 20.0, "hf_tokens_per_sec_best": 25.0,
           "speedup": 2.0}
    m = {**MACHINE, "transformers": "5.24.0", "torch_note": "2 threads, transformers 5.24.0"}
    text = bench_generate.write_report({"machine": m, "prompt_tokens": 7,
                                        "cases": {"greedy": row}}, tmp_path / "g.md",
                                       command="python -m experiments.bench_generate")
    assert "Machine: AMD EPYC 7B13, 2 cores" in text
    assert "torch 2.13.0+cpu (2 threads, transformers 5.24.0)" in text
    assert "| 40.0 (best 41.0) | 20.0 (best 25.0) | 2.00x (best/best 1.64x) |" in text
    assert "not measured" not in text
    m = {k: v for k, v in MACHINE.items() if k not in ("torch", "torch_note")}
    row = {k: v for k, v in row.items() if not k.startswith("hf") and k != "speedup"}
    text = bench_generate.write_report({"machine": m, "prompt_tokens": 7,
                                        "cases": {"greedy": row}}, tmp_path / "g.md",
                                       command="python -m experiments.bench_generate")
    assert "transformers was not measured" in text and "| n/a | n/a |" in text
