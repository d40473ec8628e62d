"""A train step that cannot fit in the devices' memory is refused before it runs, by XLA's own
plan for the compiled program, with the fields that make it smaller (gptjax.training.memory)."""

import types

import jax
import pytest

from gptjax.config import Config, ConfigError, default_config
from gptjax.training import memory
from gptjax.training.checkpoint import steps
from gptjax.training.loop import train

GIB = 2 ** 30


def plan(argument=1, output=1, alias=1, temp=10):
    """A compiled program's memory analysis, in GiB."""
    stats = types.SimpleNamespace(argument_size_in_bytes=argument * GIB,
                                  output_size_in_bytes=output * GIB,
                                  alias_size_in_bytes=alias * GIB, temp_size_in_bytes=temp * GIB)
    return types.SimpleNamespace(memory_analysis=lambda: stats)


def config(batch_size=64):
    c = default_config()
    c.data.update(batch_size=batch_size)
    return Config.from_dict(c.to_dict())


def test_planned_bytes_count_donated_outputs_once():
    assert memory.planned_bytes(plan().memory_analysis()) == 11 * GIB


def test_a_step_that_fits_passes_and_one_that_does_not_names_the_fixes(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: (12 * GIB, "on each test chip"))
    memory.check_fits(plan(temp=10), config())  # 11 GiB of 12: fits
    with pytest.raises(ConfigError) as e:
        memory.check_fits(plan(temp=40), config())  # 41 GiB; temporaries must shrink 40/11 x
    text = str(e.value)
    assert "needs 41.00 GiB per device by XLA's plan" in text
    assert "more than the 12.00 GiB on each test chip; nothing was trained" in text
    # the smallest divisor of the batch (64) at least 40/11 = 3.6 times grad_accum=1
    assert "optim.grad_accum=4 (micro-batches of 16)" in text
    assert "model.remat=True" in text
    # micro-batches must still split over the batch's shards: 48 / 3 = 16 does not split 12 ways
    assert "optim.grad_accum=3 (micro-batches of 16)" in memory.advice(config(48), 3.0)
    assert "optim.grad_accum=4 (micro-batches of 12)" in memory.advice(config(48), 3.0, shards=12)
    assert "grad_accum" not in memory.advice(config(48), 5.0, shards=12)


def test_unknown_memory_checks_nothing(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: None)
    memory.check_fits(plan(temp=10 ** 6), config())


def test_cpu_devices_share_the_hosts_available_ram():
    found = memory.available_bytes(jax.local_devices()[0])
    assert found is not None and 0 < found[0] * jax.local_device_count() < 2 ** 50
    assert "available memory (RAM and swap)" in found[1]


def test_training_stops_before_the_first_step_when_it_cannot_fit(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: (2 ** 20, "on each test chip"))
    c = default_config()
    c.model.update(num_layers=1, num_heads=2, d_model=16, max_len=32)
    c.data.update(data_dir=str(tmp_path / "data"), seq_len=32, batch_size=8)
    c.train.update(num_steps=4, eval_every=2, checkpoint_every=2, sample_tokens=0)
    with pytest.raises(ConfigError, match=r"the train step needs .* more than the 0\.00 GiB"):
        train(c, tmp_path / "run")
    assert not steps(tmp_path / "run" / "checkpoints")
    assert not (tmp_path / "run" / "metrics.jsonl").read_text().strip()
    assert not (tmp_path / "run" / "config.json").exists()  # no half-made run is left
    monkeypatch.undo()  # the same run, with the memory there, trains
    assert train(c, tmp_path / "run")["step"] == 4
    # A resume refused for its memory leaves the run's config.json, which still describes
    # its checkpoints, as it was.
    written = (tmp_path / "run" / "config.json").read_text()
    monkeypatch.setattr(memory, "available_bytes", lambda device: (2 ** 20, "on each test chip"))
    c.train.num_steps, c.data.batch_size = 6, 16
    with pytest.raises(ConfigError, match="the train step needs"):
        train(c, tmp_path / "run")
    assert (tmp_path / "run" / "config.json").read_text() == written
    assert max(steps(tmp_path / "run" / "checkpoints")) == 4
