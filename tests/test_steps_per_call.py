"""train.steps_per_call: K train steps in one compiled call (lax.scan over K batches) make the
same updates as K calls of one step, with logging, evaluation, checkpoints and resume between
calls; the skip guard still counts skips in a row step by step."""

import jax
import numpy as np
import pytest

from gptjax.config import Config, ConfigError, default_config
from gptjax.training import skips
from gptjax.training.loop import train
from gptjax.training.metrics import window_row
from tests.test_training import read_metrics, saved_params, tiny_config

# 10 steps: with K=4, steps 1-4 and 5-8 run as two calls, 9 and 10 one by one.
TRAIN = dict(num_steps=10, log_every=4, eval_every=8, checkpoint_every=4)


class Crash(Exception):
    pass


def crash_at_4(step, row, run):
    if step == 4:
        raise Crash


def _cfg(tmp, **train_fields):
    return tiny_config(tmp, train={**TRAIN, **train_fields})


def _losses(workdir):
    return {r["step"]: r["train_loss"] for r in read_metrics(workdir) if "train_loss" in r}


def _params(workdir, step):
    return [np.asarray(x) for x in jax.tree.leaves(saved_params(workdir, step))]


def test_calls_of_k_steps_make_the_updates_of_single_steps_and_resume(tmp_path):
    one = train(_cfg(tmp_path), tmp_path / "one")
    seen = []
    four = train(_cfg(tmp_path, steps_per_call=4), tmp_path / "four",
                 callbacks=[lambda step, row, run: seen.append((step, run.call_steps))])
    assert seen == [(4, 4), (8, 4), (9, 1), (10, 1)]  # callbacks come between calls
    assert one["step"] == four["step"] == 10
    assert sorted(_losses(tmp_path / "four")) == [4, 8, 10]
    for step, loss in _losses(tmp_path / "one").items():  # a window's mean loss, every step in it
        assert _losses(tmp_path / "four")[step] == pytest.approx(loss, rel=1e-5)
    assert four["val_loss"] == pytest.approx(one["val_loss"], rel=1e-5)
    for step in (4, 8, 10):
        for a, b in zip(_params(tmp_path / "one", step), _params(tmp_path / "four", step)):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    # a crash after the first call's checkpoint; the resumed run ends where the straight one did
    with pytest.raises(Crash):
        train(_cfg(tmp_path, steps_per_call=4), tmp_path / "resumed", callbacks=[crash_at_4])
    resumed = train(_cfg(tmp_path, steps_per_call=4), tmp_path / "resumed")
    assert resumed["step"] == 10
    for a, b in zip(_params(tmp_path / "four", 10), _params(tmp_path / "resumed", 10)):
        np.testing.assert_array_equal(b, a)


@pytest.mark.parametrize("fields, message", [
    (dict(steps_per_call=0), r"train\.steps_per_call=0"),
    (dict(steps_per_call=3, log_every=10), r"steps_per_call=3 does not divide train\.log_every"),
    (dict(steps_per_call=5, log_every=5, checkpoint_every=12),
     r"does not divide train\.checkpoint_every=12"),
    (dict(steps_per_call=5, log_every=5, eval_every=250, checkpoint_every=500, choice_every=12),
     r"does not divide train\.choice_every=12"),
    (dict(choice_every=-1), r"train\.choice_every=-1 .* non-negative"),
    (dict(choice_examples=1.5), r"train\.choice_examples=1\.5"),
])
def test_a_steps_per_call_that_misses_a_period_is_refused(fields, message):
    d = default_config().to_dict()
    d["train"].update(fields)
    with pytest.raises((ConfigError, ValueError), match=message):
        Config.from_dict(d)


def test_pmap_runs_one_step_per_call():
    d = default_config().to_dict()
    d["train"].update(steps_per_call=2, log_every=10)
    d["mesh"].update(strategy="pmap")
    with pytest.raises(ConfigError, match="mesh.strategy='jit'"):
        Config.from_dict(d)


def test_skip_guard_counts_skips_in_a_row_inside_and_across_calls():
    guard = skips.SkipGuard(3, last_applied=0)
    # steps 1-4 in one call: 2, 3, 4 skipped; step 5 (alone) skipped: the third in a row is 4
    assert guard.observe(4, {"skipped_steps": np.array([0, 1, 1, 0])}, wait=True, steps=4) is None
    assert guard.last_applied == 4 and guard.streak == 0
    assert guard.observe(8, {"skipped_steps": np.array([0, 1, 1, 1])}, wait=True,
                         steps=4) == 8
    guard = skips.SkipGuard(3, last_applied=0)
    assert guard.observe(2, {"skipped_steps": np.array([1, 1])}, wait=True, steps=2) is None
    assert guard.observe(3, {"skipped_steps": np.array(1)}, wait=True) == 3  # across calls


def test_a_window_mixes_calls_of_one_step_and_of_several():
    rows = [{"loss": np.float32(4.0), "lr": np.float32(0.1), "skipped_steps": np.int32(1)},
            {"loss": np.array([1.0, 2.0, 3.0], np.float32), "lr": np.array([0.2, 0.3, 0.4]),
             "skipped_steps": np.array([0, 1, 1], np.int32)}]
    row = window_row(rows)
    assert row["train_loss"] == pytest.approx(2.5)  # the mean over the window's 4 steps
    assert row["lr"] == pytest.approx(0.4)  # the newest step's
    assert row["skipped_steps"] == 3  # a count: summed
