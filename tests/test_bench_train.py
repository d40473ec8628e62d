"""The training benchmark's report: medians and ranges over fresh-process rounds."""

import json

from gptjax.bench import train as bench


def _round(step_tps, loop_tps, wall, to_target):
    m = lambda tps: {"tokens_per_sec": tps, "ms_per_step": 768e3 / tps,  # noqa: E731
                     "first_step_seconds": 4.0}
    return {"step": m(step_tps), "loop": m(loop_tps),
            "full": {"target": 1.89, "final_val_loss": 1.86, "final_step": 2000,
                     "wall_seconds": wall, "seconds_to_target": to_target, "step_at_target": 1750,
                     "evals": [(1000, 2.0, wall / 2), (2000, 1.86, wall)],
                     "command": "-m experiments.train --config=c.py --workdir=w"}}


def test_report_gives_medians_ranges_and_every_round(tmp_path):
    rounds = [_round(20_000, 22_000, 90, 80), _round(17_700, 17_700, 100, None),
              _round(23_600, 21_000, 85, 75)]
    path = bench.write_report({"machine": {"cpus": 2}, "rounds": rounds}, tmp_path / "b.md",
                              command="python -m experiments.bench_train",
                              baseline_tokens_per_sec=17_700, baseline_wall=95)
    text = path.read_text()
    assert "| compiled step alone | 20,000 (17,700-23,600) |" in text
    assert "| 1.13x (1.00x-1.33x) |" in text
    assert "| training loop, steady state | 21,000 (17,700-22,000) |" in text
    assert "Wall time 90 s (85-100) (nanoGPT: 95 s)" in text
    assert "first after 78 s (75-80) in 2 of 3 runs" in text
    assert text.count("\n| 2 | 17,700 | 17,700 | 100 | - | 1.8600 |") == 1
    assert json.loads(path.with_suffix(".json").read_text())["rounds"] == json.loads(
        json.dumps(rounds))
