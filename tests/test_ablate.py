"""The ablation runner: a 2-variant x 2-seed micro sweep through the real training path."""

import json
import pathlib

import ml_collections
import pytest

from gptjax import ablate

ROOT = pathlib.Path(__file__).resolve().parents[1]

MICRO = {"model": {"num_layers": 1, "d_model": 32, "num_heads": 2, "max_len": 32},
         "data": {"batch_size": 8, "seq_len": 32, "mqar_num_kv_pairs": 4},
         "train": {"num_steps": 6, "eval_every": 3, "eval_steps": 2, "log_every": 2,
                   "checkpoint_every": 6},
         "optim": {"warmup_steps": 2}}


def _sweep(**kw):
    sweep = ml_collections.ConfigDict()
    sweep.base = "configs/mqar.py"
    sweep.overrides = MICRO
    sweep.variants = [{"name": "mha", "model": {"num_kv_heads": 2}},
                      {"name": "mqa", "model": {"num_kv_heads": 1}}]
    sweep.seeds = (0, 1)
    sweep.metrics = ("val_accuracy", "val_loss")
    sweep.update(kw)
    return sweep


def test_micro_sweep_writes_table_plots_and_commands_and_resumes(tmp_path):
    report = ablate.run_sweep(_sweep(), tmp_path, log=lambda s: None)
    text = report.read_text()
    assert "| mha | " in text and "| mqa | " in text and " ± " in text
    assert (tmp_path / "loss_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert text.count("python -m experiments.train --config=configs/mqar.py") == 4
    assert "--config.model.num_kv_heads=1" in text
    finals = sorted(tmp_path.glob("runs/*/seed*/final.json"))
    assert len(finals) == 4
    for f in finals:
        final = json.loads(f.read_text())
        assert 0.0 <= final["val_accuracy"] <= 1.0 and final["step"] == 6
    # Seeds differ, so the table's std is a real spread.
    a, b = (json.loads((tmp_path / f"runs/mha/seed{s}/final.json").read_text())["val_loss"]
            for s in (0, 1))
    assert a != b
    # A second invocation trains nothing: every run finished.
    calls = []
    ablate.run_sweep(_sweep(), tmp_path, train_fn=lambda *a: calls.append(a), log=lambda s: None)
    assert calls == []


def test_bad_variant_fails_before_any_run(tmp_path):
    bad = _sweep(variants=[{"name": "ok"}, {"name": "bad", "model": {"num_kv_heads": 3}}])
    calls = []
    with pytest.raises(ValueError, match="num_kv_heads=3"):
        ablate.run_sweep(bad, tmp_path, train_fn=lambda *a: calls.append(a))
    assert calls == []
    with pytest.raises(KeyError, match="model.n_layers"):
        ablate.run_sweep(_sweep(variants=[{"name": "x", "model": {"n_layers": 2}}]), tmp_path)


def test_speeds_are_each_runs_median_window_and_run_info_fills_the_table(tmp_path):
    sweep = _sweep(metrics=("val_loss", "tokens_per_sec", "ms_per_step", "trainable_params"))
    runs = ablate.expand(sweep, tmp_path)
    for i, (run, windows) in enumerate(zip(runs, ([5.0, 100.0, 200.0, 300.0],
                                                  [5.0, 400.0, 500.0, 9000.0]))):
        run.workdir.mkdir(parents=True)
        (run.workdir / "final.json").write_text(json.dumps(
            {"val_loss": 1.0, "tokens_per_sec": windows[-1], "ms_per_step": 1e3 / windows[-1]}))
        (run.workdir / "metrics.jsonl").write_text("".join(
            json.dumps({"step": i, "tokens_per_sec": w, "ms_per_step": 1e3 / w}) + "\n"
            for i, w in enumerate(windows)))
        (run.workdir / "run_info.json").write_text(json.dumps(
            {"method": "lora", "trainable_params": 100 * (i + 1), "adapters": True}))
    summary = ablate.summarise(runs, sweep.metrics)
    mean, std, n = summary["mha"]["tokens_per_sec"]  # seeds 0 and 1 of the first variant
    assert (mean, n) == (pytest.approx((200.0 + 500.0) / 2), 2)
    assert summary["mha"]["ms_per_step"][0] == pytest.approx((1e3 / 200 + 1e3 / 500) / 2)
    assert summary["mha"]["trainable_params"][0] == pytest.approx(150.0)


PLAY = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n" * 6


def test_setup_runs_before_the_runs_once_and_outdir_fills_every_string(tmp_path):
    play = tmp_path / "play.txt"
    play.write_text(PLAY)
    out = tmp_path / "sweep"
    sweep = _sweep(variants=[{"name": "a", "data": {"text_file": "{outdir}/dlg/train.jsonl"}}],
                   seeds=(0,), setup=[{"name": "dialogues", "creates": "{outdir}/dlg/train.jsonl",
                                       "command": ["experiments.play_dialogues",
                                                   f"--text_file={play}", "--outdir={outdir}/dlg"]}])
    seen, logs = [], []

    def fake_train(config, workdir):  # the setup's file exists by the time a run starts
        seen.append(config.data.text_file)
        assert (out / "dlg" / "train.jsonl").read_text().count("\n") > 0
        return {"val_loss": 1.0, "val_accuracy": 0.5}

    report = ablate.run_sweep(sweep, out, train_fn=fake_train, log=logs.append)
    assert seen == [f"{out}/dlg/train.jsonl"]
    assert "setup **dialogues**: `python -m experiments.play_dialogues" in report.read_text()
    # A second sweep skips the setup whose output exists (and the finished run).
    logs.clear()
    ablate.run_sweep(sweep, out, train_fn=fake_train, log=logs.append)
    assert any("dlg/train.jsonl exists" in line for line in logs) and len(seen) == 1


def test_a_failing_setup_stops_the_sweep_before_any_run(tmp_path):
    sweep = _sweep(setup=[{"name": "broken", "command": ["experiments.play_dialogues",
                                                          "--text_file=/nonexistent.txt",
                                                          "--outdir={outdir}/x"]}])
    calls = []
    with pytest.raises(RuntimeError, match="setup step 'broken' failed"):
        ablate.run_sweep(sweep, tmp_path, train_fn=lambda *a: calls.append(a), log=lambda s: None)
    assert calls == []


def test_overrides_keep_the_base_configs_references():
    """finetune_gpt2's warm-up is 5% of train.num_steps: a sweep's num_steps moves it too."""
    base = ablate.load_config_file("configs/finetune_gpt2.py")
    assert ablate.apply_overrides(base, {"train.num_steps": 200}).optim.warmup_steps == 10
    assert base.optim.warmup_steps == 50  # the base itself is left as it was
    explicit = ablate.apply_overrides(base, {"optim.warmup_steps": 7, "train.num_steps": 200})
    assert explicit.optim.warmup_steps == 7


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "ablations").glob("*.py")),
                         ids=lambda p: p.name)
def test_every_sweep_config_plans_runs_that_pass_a_runs_checks(path, tmp_path, monkeypatch):
    """configs/ablations/*.py as they stand: every variant's config passes the checks a run
    makes before it reads data. (A change of the base config's steps_per_call once left two
    sweeps refused by every run, and nothing said so until someone ran them.)"""
    monkeypatch.chdir(ROOT)  # a sweep names its base config from the repository's root
    sweep = ablate.with_outdir(ablate.load_config_file(path), tmp_path)
    runs, configs = ablate.planned_runs(sweep, tmp_path)
    assert len(runs) == len(configs) == len(sweep.variants) * len(sweep.seeds)


def test_a_variant_a_run_would_refuse_stops_the_sweep_before_any_run(tmp_path):
    sweep = _sweep(variants=[{"name": "ok", "model": {"num_kv_heads": 2}},
                             {"name": "bad", "model": {"attention": "nope"}}])
    with pytest.raises(ablate.ConfigError, match=r"variant 'bad': .*nope"):
        ablate.run_sweep(sweep, tmp_path, log=lambda s: None)
    assert not (tmp_path / "runs").exists()
