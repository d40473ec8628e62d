"""The attention benchmark on tiny cases: every kernel x length x layout recorded, OOM a result."""

import csv

import numpy as np
import pytest

from gptjax.bench import attention as bench

KERNELS = ["reference", "xla", "blockwise", "cudnn"]


@pytest.fixture(scope="module")
def cases():
    return bench.run(KERNELS, [32, 64], ["mha", "mqa"], ["fwd", "fwd+bwd"], log=lambda _: None,
                     heads=2, head_dim=8, repeats=1, min_seconds=0.0)


def test_every_case_is_recorded(cases):
    assert len(cases) == len(KERNELS) * 2 * 2 * 2
    for c in cases:
        if c.kernel == "cudnn":  # this CPU has no GPU: a result, not a crash
            assert c.status == "unavailable" and "GPU" in c.note
        else:
            assert c.status == "ok", c
            assert c.time_ms > 0 and c.memory_mib > 0 and c.compile_s > 0


def test_report_has_table_speed_ratios_and_plots(cases, tmp_path):
    path = bench.write_report(cases, tmp_path, command="python -m experiments.bench_attention")
    text = path.read_text()
    assert "Speed against xla" in text and "python -m experiments.bench_attention" in text
    with open(tmp_path / "attention.csv") as f:
        assert len(list(csv.DictReader(f))) == len(cases)
    for name in ("attention_time.png", "attention_memory.png"):
        assert (tmp_path / name).stat().st_size > 0
    speed = bench.speed_ratios(cases)
    assert (f"xla at least as fast as reference in {sum(r[3][0] >= 1 for r in speed)} of "
            f"{len(speed)} cases; blockwise within 2x of xla in "
            f"{sum(r[4][0] <= 2 for r in speed)} of {len(speed)}") in text
    by = {(c.kernel, c.layout, c.pass_, c.seq_len): c.rounds_ms for c in cases}
    for layout, pass_, n, ref_over_xla, blk_over_xla in speed:
        xla = by["xla", layout, pass_, n]
        for ratio, other in ((ref_over_xla, "reference"), (blk_over_xla, "blockwise")):
            paired = [a / b for a, b in zip(by[other, layout, pass_, n], xla)]
            assert ratio == pytest.approx((np.median(paired), min(paired), max(paired)))


def test_report_names_dtype_and_share_of_peak(tmp_path):
    cases = bench.run(["xla", "cudnn"], [32], ["mha"], ["fwd"], log=lambda _: None, heads=2,
                      head_dim=8, dtype="bfloat16", repeats=1, min_seconds=0.0)
    assert cases[1].status == "unavailable"  # cudnn: GPU only
    peak = 4 * cases[0].tflops  # so the xla case runs at 25% of it
    text = bench.write_report(cases, tmp_path, heads=2, head_dim=8, dtype="bfloat16",
                              peak_tflops=peak).read_text()
    assert "2 query heads of 8, bfloat16" in text and "% of peak" in text
    row = next(line for line in text.splitlines() if line.startswith("| xla | mha | fwd | 32"))
    assert float(row.split("|")[10]) == pytest.approx(25.0, abs=0.06)


def test_kernels_of_one_length_are_timed_in_shared_rounds():
    cases = bench.measure_together(["reference", "xla", "blockwise"], 32, "mqa", "fwd+bwd",
                                   heads=2, head_dim=8, repeats=4, min_seconds=0.05)
    rounds = {len(c.rounds_ms) for c in cases}
    assert len(rounds) == 1 and rounds.pop() >= 4
    for c in cases:
        assert c.time_ms == pytest.approx(np.median(c.rounds_ms))
        assert sum(c.rounds_ms) >= 50 or len(c.rounds_ms) == 200  # min_seconds, or the cap


def test_a_case_over_the_memory_budget_is_oom_and_so_are_longer_ones():
    cases = bench.run(["reference"], [64, 128], ["mha"], ["fwd"], log=lambda _: None,
                      heads=2, head_dim=8, repeats=1, min_seconds=0.0, memory_budget=1)
    assert [c.status for c in cases] == ["oom", "oom"]
    assert cases[0].memory_mib > 0 and "available" in cases[0].note


def test_a_case_over_half_the_budget_first_runs_in_a_child(monkeypatch):
    """Plans between half and all of the budget are tried in a spawned process first; one that
    survives is then timed as usual."""
    trials, in_child = [], bench._in_child
    monkeypatch.setattr(bench, "_in_child", lambda *a: trials.append(a) or in_child(*a))
    planned = _planned_bytes()
    assert not trials
    case = bench.measure_together(["xla"], 64, "mha", "fwd", heads=2, head_dim=8, repeats=1,
                                  min_seconds=0.0, memory_budget=int(1.5 * planned))[0]
    assert [t[1:4] for t in trials] == [("xla", 64, "fwd")]
    assert case.status == "ok" and case.time_ms > 0


def test_a_trial_run_the_os_kills_is_recorded_not_fatal(monkeypatch):
    """The child dying (here by SIGABRT, as by the OOM killer's SIGKILL) makes the case out of
    memory; the benchmark goes on."""
    import os

    assert bench._in_child(os.getpid)[0] is True  # a child that lives returns its result
    in_child = bench._in_child
    monkeypatch.setattr(bench, "_in_child", lambda fn, *a: in_child(os.abort))
    planned = _planned_bytes()
    cases = bench.measure_together(["xla", "reference"], 64, "mha", "fwd", heads=2, head_dim=8,
                                   repeats=1, min_seconds=0.0, memory_budget=int(1.5 * planned))
    assert cases[0].status == "oom" and "killed by the OS" in cases[0].note


def _planned_bytes():
    case = bench.measure_together(["xla"], 64, "mha", "fwd", heads=2, head_dim=8, repeats=1,
                                  min_seconds=0.0)[0]
    return case.memory_mib * 2**20
