"""The MQAR generator: answers correct by construction, deterministic, resumable."""

import numpy as np
import pytest

from gptjax.config import Config, ConfigError
from gptjax.data import build_data
from gptjax.data.mqar import IGNORE, mqar_batch


def test_every_scored_answer_is_the_value_of_its_key():
    rng = np.random.default_rng(0)
    b = mqar_batch(rng, 16, seq_len=64, vocab_size=128, num_kv_pairs=8)
    inputs, targets = b["inputs"], b["targets"]
    assert inputs.shape == targets.shape == (16, 64)
    for x, y in zip(inputs, targets):
        pairs = dict(zip(x[0:16:2].tolist(), x[1:16:2].tolist()))
        assert len(pairs) == 8 and all(1 <= k < 64 for k in pairs)
        assert all(64 <= v < 128 for v in pairs.values())
        scored = np.flatnonzero(y != IGNORE)
        assert len(scored) == 8  # every key is asked once
        assert all(p >= 16 for p in scored)  # queries come after the context
        for p in scored:
            assert y[p] == pairs[x[p]]  # the target after a query key is its value
            assert x[p + 1] == y[p] if p + 1 < 64 else True  # the value follows in the input


def test_queries_are_mostly_near_the_context():
    b = mqar_batch(np.random.default_rng(1), 256, seq_len=256, vocab_size=512, num_kv_pairs=4)
    pos = np.argwhere(b["targets"] != IGNORE)[:, 1]
    assert np.median(pos) < 8 + (256 - 8) / 2  # power-law gaps favour short distances


def _config(**data):
    d = {"dataset": "mqar", "seq_len": 32, "batch_size": 4, "mqar_num_kv_pairs": 4}
    d.update(data)
    return Config.from_dict({"model": {"vocab_size": 0, "max_len": 32, "num_layers": 1,
                                       "num_heads": 2, "d_model": 16}, "data": d})


def test_mqar_dataset_is_seeded_resumable_and_split_over_processes():
    data = build_data(_config(), process_index=0, process_count=1)
    assert data.vocab_size == 256
    first = [next(data.train) for _ in range(3)]
    state = data.train.get_state()
    fourth = next(data.train)
    data.train.set_state(state)
    np.testing.assert_array_equal(next(data.train)["inputs"], fourth["inputs"])
    again = build_data(_config(), process_index=0, process_count=1)
    np.testing.assert_array_equal(next(again.train)["targets"], first[0]["targets"])
    halves = [next(build_data(_config(), process_index=i, process_count=2).train)
              for i in range(2)]
    np.testing.assert_array_equal(np.concatenate([h["inputs"] for h in halves]),
                                  first[0]["inputs"])
    val_a = [b["inputs"] for b in data.val_batches(2)]
    val_b = [b["inputs"] for b in data.val_batches(2)]
    np.testing.assert_array_equal(val_a, val_b)
    assert not np.array_equal(val_a[0], first[0]["inputs"])


def test_sizes_that_cannot_hold_the_pairs():
    with pytest.raises(ConfigError, match="MQAR with 20 key-value pairs needs data.seq_len"):
        build_data(_config(mqar_num_kv_pairs=20), process_index=0, process_count=1)
