"""gptjax.data: TFDS builders for local text and the embedded corpus, the grain pipeline, errors."""

import tempfile
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from gptjax.config import Config, ConfigError
from gptjax.data import (DATASETS, BatchData, Data, DatasetUnavailableError, Windows, build_data,
                         datasets, to_global, tokenize, tokens)
from gptjax.data.base import Epochs, endless_batches, host_rows
from gptjax.data.text_builder import chunks, split_at_end
from gptjax.tokenizers import Tokenizer
from shard_folder import write_shards

TEXT = "".join(f"Line {i}: the quick brown fox jumps over {i % 7} lazy dogs.\n"
               for i in range(60))  # 3,300 characters


def make_config(tmp_path, seed=0, **data):
    data = {"data_dir": str(tmp_path / "tfds"), "seq_len": 16, "batch_size": 4, **data}
    return Config.from_dict({
        "model": {"vocab_size": 0, "max_len": 64, "num_layers": 1, "num_heads": 1,
                  "d_model": 8},
        "data": data, "train": {"seed": seed}})


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "input.txt"
    path.write_text(TEXT, encoding="utf-8")
    return str(path)


def build(tmp_path, text_file=None, *, process_index=0, process_count=1, seed=0, **data):
    if text_file is not None:
        data = {"dataset": "text_file", "text_file": text_file, **data}
    return build_data(make_config(tmp_path, seed, **data), process_index=process_index,
                      process_count=process_count)


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["inputs"], y["inputs"])
        np.testing.assert_array_equal(x["targets"], y["targets"])


# ---- windows ------------------------------------------------------------------------------------
def test_windows_are_the_text_in_order_with_targets_shifted_by_one(tmp_path, text_file):
    data = build(tmp_path, text_file, shuffle=False)
    train_text = TEXT[:int(len(TEXT) * 0.9)]  # nanoGPT's split: the last 10% is validation
    assert data.tokenizer.kind == "char" and data.vocab_size == len(set(TEXT))
    assert data.train_tokens == len(train_text) and data.val_tokens == len(TEXT) - len(train_text)
    batches = take(data.train, data.train_windows // 4)
    rows = np.concatenate([b["inputs"] for b in batches])
    targets = np.concatenate([b["targets"] for b in batches])
    assert rows.dtype == np.int32 and rows.shape[1] == 16
    np.testing.assert_array_equal(targets[:, :-1], rows[:, 1:])  # targets = inputs shifted
    np.testing.assert_array_equal(targets[:-1, -1], rows[1:, 0])  # windows share one token
    decoded = data.tokenizer.decode(rows.reshape(-1)) + data.tokenizer.decode(targets[-1, -1:])
    assert decoded == train_text[:len(decoded)]  # tokens round-trip to the text


def test_an_epoch_covers_every_window_once_and_the_next_is_reshuffled_at_a_new_phase():
    seq_len, stream = 8, np.arange(1000, dtype=np.uint32)  # a window's first token is its start
    windows = Windows(stream, seq_len, seed=3, shuffle=True, phased=True)
    count = windows.count
    assert count == (1000 - seq_len) // seq_len
    epochs = [windows.rows(e * count + np.arange(count)) for e in range(3)]
    for rows in epochs:
        np.testing.assert_array_equal(rows, rows[:, :1] + np.arange(seq_len + 1))
        starts = np.sort(rows[:, 0])
        np.testing.assert_array_equal(starts, starts[0] + seq_len * np.arange(count))
    assert not np.array_equal(epochs[0][:, 0], epochs[1][:, 0])  # reshuffled
    assert len({int(np.min(rows[:, 0])) for rows in epochs}) > 1  # another phase
    across = windows.rows(np.arange(count - 5, count + 5))  # a batch across two epochs
    np.testing.assert_array_equal(across, np.concatenate([epochs[0][-5:], epochs[1][:5]]))
    again = Windows(stream, seq_len, seed=3, shuffle=True, phased=True)
    np.testing.assert_array_equal(again.rows(np.arange(count)), epochs[0])
    other = Windows(stream, seq_len, seed=4, shuffle=True, phased=True)
    assert not np.array_equal(other.rows(np.arange(count)), epochs[0])
    ordered = Windows(stream, seq_len, seed=3, shuffle=False, phased=False)
    np.testing.assert_array_equal(ordered.rows(np.arange(3))[:, 0], [0, 8, 16])


def test_documents_join_with_eos_and_chunks_of_one_document_without():
    tok = Tokenizer.byte()
    ids = tokenize(iter([(0, "ab"), (0, "c"), (1, "de")]), tok)
    assert ids.tolist() == [97, 98, 99, tok.eos_token_id, 100, 101]
    char = Tokenizer.char("abcde")  # no eos: documents simply follow each other
    assert tokenize(iter([(0, "ab"), (1, "c")]), char).tolist() == [0, 1, 2]
    text = "one\ntwo\nthree\n" * 5
    pieces = list(chunks(text, size=10))
    assert "".join(pieces) == text and all(p.endswith("\n") for p in pieces)


def test_split_takes_the_validation_text_from_the_end():
    assert split_at_end(["abcdef", "ghij"], 0.3) == (["abcdef", "g"], ["hij"])
    assert split_at_end(["abcdef", "ghij"], 0.4) == (["abcdef"], ["ghij"])


# ---- the iterator's position --------------------------------------------------------------------
def test_train_iterator_resumes_at_the_same_batch(tmp_path, text_file):
    data = build(tmp_path, text_file, seed=1)
    take(data.train, 5)
    state = data.train.get_state()
    expected = take(data.train, 4)
    again = build(tmp_path, text_file, seed=1)  # a new process: fresh iterator, restored position
    again.train.set_state(state)
    assert_same_batches(take(again.train, 4), expected)
    data.train.set_state(state)
    assert_same_batches(take(data.train, 4), expected)
    other = build(tmp_path, text_file, seed=2)  # the seed decides the order
    other.train.set_state(state)
    assert not np.array_equal(next(other.train)["inputs"], expected[0]["inputs"])


def test_train_iterator_saves_and_restores_through_orbax(tmp_path, text_file):
    import grain
    import orbax.checkpoint as ocp

    data = build(tmp_path, text_file)
    take(data.train, 3)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(data.train)))
        manager.wait_until_finished()
    expected = take(data.train, 3)
    again = build(tmp_path, text_file)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.restore(3, args=ocp.args.Composite(
            data=grain.checkpoint.CheckpointRestore(again.train)))
    assert_same_batches(take(again.train, 3), expected)


def test_global_batch_is_the_same_whatever_the_process_count(tmp_path, text_file):
    single = build(tmp_path, text_file, batch_size=4)
    hosts = [build(tmp_path, text_file, batch_size=4, process_index=i, process_count=2)
             for i in range(2)]
    assert hosts[0].local_batch_size == 2
    for name, get in (("train", lambda d: take(d.train, 6)),
                      ("validation", lambda d: list(d.val_batches(3)))):
        whole, parts = get(single), [get(h) for h in hosts]
        assert len(whole) == len(parts[0]) == len(parts[1]), name
        for step, batch in enumerate(whole):
            for key in ("inputs", "targets"):
                joined = np.concatenate([parts[0][step][key], parts[1][step][key]])
                np.testing.assert_array_equal(joined, batch[key], err_msg=f"{name} {step}")


def test_validation_batches_are_the_same_every_time(tmp_path, text_file):
    data = build(tmp_path, text_file, batch_size=2)
    first, second = list(data.val_batches(3)), list(data.val_batches(3))
    assert len(first) == 3 and first[0]["inputs"].shape == (2, 16)
    assert_same_batches(first, second)
    other_seed = build(tmp_path, text_file, batch_size=2, seed=5)  # runs compare on one set
    assert_same_batches(list(other_seed.val_batches(3)), first)


def test_to_global_makes_one_array_over_the_devices(tmp_path, text_file):
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(jax.devices()), ("data",))
    data = build(tmp_path, text_file, batch_size=len(jax.devices()))
    batch = next(data.train)
    arrays = to_global(batch, NamedSharding(mesh, PartitionSpec("data")))
    assert arrays["inputs"].shape == batch["inputs"].shape
    np.testing.assert_array_equal(np.asarray(arrays["targets"]), batch["targets"])
    if len(jax.devices()) > 1:
        odd = {k: v[:len(jax.devices()) - 1] for k, v in batch.items()}
        with pytest.raises(ValueError, match="divide"):
            to_global(odd, NamedSharding(mesh, PartitionSpec("data")))


# ---- datasets -----------------------------------------------------------------------------------
def test_embedded_corpus_builds_offline_with_a_char_vocabulary_from_its_text(tmp_path,
                                                                             monkeypatch):
    from pydoc_data import topics

    monkeypatch.setattr(datasets, "network_available", lambda *a, **k: pytest.fail("online"))
    data = build(tmp_path, dataset="embedded", seq_len=32)
    corpus = "".join(text for _, text in sorted(topics.topics.items()))
    assert data.vocab_size == len(set(corpus))
    assert data.train_tokens + data.val_tokens == len(corpus)
    row = data.tokenizer.decode(next(data.train)["inputs"][0])
    assert len(row) == 32 and row in corpus


def test_bpe_tokenizer_from_a_folder(tmp_path, text_file):
    from conftest import GOLDEN

    data = build(tmp_path, text_file, tokenizer=str(GOLDEN / "tiny-gpt2"), shuffle=False)
    assert data.vocab_size == Tokenizer.from_pretrained(GOLDEN / "tiny-gpt2").vocab_size
    batch = next(data.train)
    assert data.tokenizer.decode(batch["inputs"][0]) == TEXT[:len(
        data.tokenizer.decode(batch["inputs"][0]))]


def test_a_changed_file_is_prepared_again_and_unchanged_tokens_come_from_the_cache(
        tmp_path, text_file, monkeypatch):
    build(tmp_path, text_file)
    monkeypatch.setattr(tokens, "tokenize", lambda *a: pytest.fail("tokenized again"))
    build(tmp_path, text_file)  # same text, same tokenizer: read from the cache
    monkeypatch.undo()
    with open(text_file, "a", encoding="utf-8") as f:
        f.write("Zebras! " * 20)
    data = build(tmp_path, text_file)
    assert "Z" in data.tokenizer.decode(range(data.vocab_size))


def test_preparing_a_text_leaves_no_temporary_folder(tmp_path, text_file, monkeypatch):
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where tempfile.mkdtemp makes them
    build(tmp_path, text_file)
    assert not list(temp.iterdir())


def test_separate_validation_file(tmp_path, text_file):
    val = tmp_path / "val.txt"
    val.write_text("a held-out text, " * 10, encoding="utf-8")
    data = build(tmp_path, text_file, val_text_file=str(val), shuffle=False)
    assert data.train_tokens == len(TEXT) and data.val_tokens == len(val.read_text())
    row = data.tokenizer.decode(next(data.val_batches(1))["inputs"][0])
    assert row in val.read_text()


def test_shakespeare_splits_as_nanogpt(tmp_path, shakespeare_path):
    data = build(tmp_path, str(shakespeare_path), seq_len=64, batch_size=12)
    assert (data.vocab_size, data.train_tokens, data.val_tokens) == (65, 1003854, 111540)


# ---- the registry and what every dataset shares -------------------------------------------------
def test_every_registered_dataset_builds_a_data(tmp_path, text_file):
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(f'{{"question": "q{i}?", "answer": "a{i}"}}\n' for i in range(10)))
    shards = write_shards(tmp_path / "shards", Tokenizer.byte(),
                          {"train": [np.arange(300) % 257], "val": [np.arange(40) % 257]})
    configs = {"text_file": dict(text_file=text_file), "embedded": dict(seq_len=32),
               "mqar": dict(seq_len=32, mqar_num_kv_pairs=4),
               "task": dict(text_file=str(qa), task="qa", seq_len=32),
               "tokens": dict(tokens_dir=str(shards))}
    assert set(configs) == set(DATASETS)  # a new dataset adds its case here
    for name, fields in configs.items():
        data = build(tmp_path, dataset=name, **fields)
        assert isinstance(data, Data), name
        batch = next(data.train)
        assert batch["inputs"].shape == batch["targets"].shape == (4, fields.get("seq_len", 16))
        assert 0 <= batch["inputs"].min() and batch["inputs"].max() < data.vocab_size, name
        position = data.train.get_state()
        following = next(data.train)
        data.train.set_state(position)
        assert_same_batches([next(data.train)], [following])
        assert_same_batches(list(data.val_batches(2)), list(data.val_batches(2)))


def _toy_dataset(config, tokenizer, process_index, process_count):
    """Row n of the stream is n, repeated along the sequence: a registry entry for tests."""
    seq = config.data.seq_len

    def fetch(t, rows):
        ids = np.repeat(rows[:, None], seq, axis=1).astype(np.int32) % 50
        return {"inputs": ids, "targets": ids}

    batches = endless_batches(fetch, config.data.batch_size, process_index, process_count)
    return BatchData(tokenizer, iter(batches.to_iter_dataset()), batches, 50)


def test_a_registered_builder_gets_the_shared_checks(tmp_path, monkeypatch):
    monkeypatch.setitem(DATASETS, "toy", _toy_dataset)
    data = build(tmp_path, dataset="toy", process_index=1, process_count=2)
    assert next(data.train)["inputs"][:, 0].tolist() == [2, 3]  # rows 2, 3 of batch 0
    assert next(data.train)["inputs"][:, 0].tolist() == [6, 7]
    with pytest.raises(ConfigError, match="data.batch_size=4 .*divisible.*processes"):
        build(tmp_path, dataset="toy", process_count=3)
    with pytest.raises(ValueError, match="process_index=2 not in"):
        build(tmp_path, dataset="toy", process_index=2, process_count=2)
    config = make_config(tmp_path, dataset="toy")
    small = Config.from_dict({**config.to_dict(), "model": {**config.to_dict()["model"],
                                                           "vocab_size": 40}})
    with pytest.raises(ConfigError, match="model.vocab_size=40 is smaller than the tokenizer's 50"):
        build_data(small, process_index=0, process_count=1)
    with pytest.raises(ConfigError, match=r"'toy'.*TFDS catalog"):
        build(tmp_path, dataset="no_such_dataset_xyz")


def test_host_rows_split_each_global_batch_in_process_order():
    whole = host_rows(3, 6, 0, 1)
    np.testing.assert_array_equal(whole, np.arange(18, 24))
    np.testing.assert_array_equal(np.concatenate([host_rows(3, 6, i, 3) for i in range(3)]),
                                  whole)


def test_epochs_visit_every_item_once_and_reshuffle():
    epochs = Epochs(7, seed=1, shuffle=True)
    orders = [epochs.locate(e * 7 + np.arange(7))[1] for e in range(3)]
    for order in orders:
        assert sorted(order.tolist()) == list(range(7))
    assert len({tuple(o.tolist()) for o in orders}) > 1
    np.testing.assert_array_equal(epochs.locate(np.arange(5, 9))[1],
                                  np.concatenate([orders[0][5:], orders[1][:2]]))
    np.testing.assert_array_equal(Epochs(7, seed=1, shuffle=False).locate(np.arange(9))[1],
                                  [0, 1, 2, 3, 4, 5, 6, 0, 1])


# ---- errors -------------------------------------------------------------------------------------
def test_missing_text_file_names_the_path_and_the_fix(tmp_path):
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match="nope.txt.*--config.data.text_file"):
        build(tmp_path, missing)
    with pytest.raises(ConfigError, match="needs data.text_file"):
        build(tmp_path, dataset="text_file")
    with pytest.raises(ConfigError, match="dataset=text_file"):
        build(tmp_path, dataset="embedded", text_file=missing)


def test_non_utf8_text_file(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\u00e9 ".encode("latin-1") * 100)
    with pytest.raises(ValueError, match="not UTF-8"):
        build(tmp_path, str(path))


def test_unknown_dataset_lists_the_registry_and_the_tfds_catalog(tmp_path):
    with pytest.raises(ConfigError, match=r"embedded.*text_file.*tokens.*TFDS catalog"):
        build(tmp_path, dataset="no_such_dataset_xyz")


def test_catalog_dataset_offline_fails_fast_naming_the_local_way(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "network_available", lambda *a, **k: False)
    start = time.perf_counter()
    with pytest.raises(DatasetUnavailableError,
                       match="--config.data.dataset=text_file --config.data.text_file=PATH"):
        build(tmp_path, dataset="tiny_shakespeare")
    assert time.perf_counter() - start < 10


def test_catalog_download_failure_gives_the_same_way_out(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise ConnectionError("simulated")

    monkeypatch.setattr(datasets, "network_available", lambda *a, **k: True)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", fail)
    with pytest.raises(DatasetUnavailableError, match="simulated.*--config.data.text_file=PATH"):
        build(tmp_path, dataset="tiny_shakespeare")


def test_batch_not_divisible_by_processes(tmp_path, text_file):
    with pytest.raises(ConfigError, match="data.batch_size=6.*processes"):
        build(tmp_path, text_file, batch_size=6, process_count=4)


def test_seq_len_longer_than_the_text(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("x" * 30 + "y" * 20, encoding="utf-8")
    with pytest.raises(ConfigError, match="data.seq_len=60 .*train split.*only 45 tokens"):
        build(tmp_path, str(short), seq_len=60)
    with pytest.raises(ConfigError, match="validation split.*data.val_fraction"):
        build(tmp_path, str(short), seq_len=20)
