"""prepare_data with TFDS catalog inputs (tfds:NAME[/CONFIG][:VERSION][@SPLIT]), offline: TFDS's
own `tfds.testing.mock_data` serves the examples (no download, no TensorFlow), over split
metadata written into tmp_path; the shards equal the examples' text tokenized one by one."""

import json
import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from gptjax.data import datasets
from gptjax.data.prepare import MANIFEST, PrepareError, PrepareSettings, prepare
from gptjax.tokenizers import Tokenizer

SHARD = 64
TEXTS = {"train": [f"Train {i}: to be, or not to be? é€😀 " * (i % 4) for i in range(30)],
         "validation": [f"Held out {i}." for i in range(7)],
         "test": [f"Test {i}." for i in range(5)]}


def metadata(root: pathlib.Path, name: str, splits: dict[str, int]) -> str:
    """Split metadata (dataset_info.json) of catalog dataset `name` under `root`: what a
    prepared dataset has besides its records, which mock_data then serves."""
    builder = tfds.builder(name, data_dir=str(root), file_format="array_record")
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=40 * n, filename_template=(
            tfds.core.ShardedFileTemplate(data_dir=builder.data_path, dataset_name=builder.name,
                                          split=s, filetype_suffix="array_record")))
        for s, n in splits.items()]))
    builder.info.set_file_format("array_record")
    builder.data_path.mkdir(parents=True)
    builder.info.write_to_directory(builder.data_path)
    return str(root)


def fake_source(self, split, **kwargs):
    """mock_data's hook for as_data_source: distinct documents per split (a list is a source)."""
    return [{"text": t.encode()} for t in TEXTS[split]]  # bytes, as array_record decodes Text


def run(tmp_path, inputs, name="out", **kw):
    kw.setdefault("num_workers", 0)
    settings = PrepareSettings(inputs=tuple(inputs), tokenizer="byte", outdir=str(tmp_path / name),
                               shard_tokens=SHARD, data_dir=str(tmp_path / "tfds"), **kw)
    return tmp_path / name, prepare(settings, progress=False)


def stream(outdir, manifest, split):
    return np.concatenate([np.load(outdir / s["file"])
                           for s in manifest["splits"][split]["shards"]])


def expected(docs) -> np.ndarray:
    tok = Tokenizer.byte()
    return np.array([t for d in docs for t in tok.encode(d) + [tok.eos_token_id]], np.uint16)


@pytest.fixture
def shakespeare(tmp_path):
    """tiny_shakespeare 'prepared' with train, validation and test splits, served by mock_data."""
    root = metadata(tmp_path / "tfds", "tiny_shakespeare",
                    {s: len(t) for s, t in TEXTS.items()})
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_FILES, data_dir=root,
                                as_data_source_fn=fake_source):
        yield


def test_mocked_examples_stream_into_shards_one_document_each(tmp_path):
    """TFDS's random mock examples through its real ArrayRecordDataSource: train -> train,
    validation -> val, byte-identical on a rerun into another folder."""
    root = metadata(tmp_path / "tfds", "tiny_shakespeare", {"train": 23, "validation": 23})
    with tfds.testing.mock_data(num_examples=23, policy=tfds.testing.MockPolicy.USE_FILES,
                                data_dir=root):
        docs = [ex["text"] for ex in tfds.data_source("tiny_shakespeare", split="train")]
        outdir, manifest = run(tmp_path, ["tfds:tiny_shakespeare"])
        again, _ = run(tmp_path, ["tfds:tiny_shakespeare"], name="again")
    docs = [d.decode() if isinstance(d, bytes) else d for d in docs]
    assert len(set(docs)) > 20 and all(isinstance(d, str) and d for d in docs)
    for split in ("train", "val"):  # mock_data serves the same examples for every split
        np.testing.assert_array_equal(stream(outdir, manifest, split), expected(docs))
    shards = manifest["splits"]["train"]["shards"]
    assert len(shards) > 3 and all(s["tokens"] == SHARD for s in shards[:-1])
    assert sum(s["documents"] for s in shards) == 23 and manifest["complete"]
    assert {p.name: p.read_bytes() for p in outdir.glob("*.npy")} == {
        p.name: p.read_bytes() for p in again.glob("*.npy")}


def test_splits_map_to_train_and_val_and_the_manifest_records_them(tmp_path, shakespeare):
    outdir, manifest = run(tmp_path, ["tfds:tiny_shakespeare"])
    np.testing.assert_array_equal(stream(outdir, manifest, "train"), expected(TEXTS["train"]))
    np.testing.assert_array_equal(stream(outdir, manifest, "val"), expected(TEXTS["validation"]))
    assert manifest["sources"] == [
        {"tfds": "tiny_shakespeare", "version": "1.0.0", "tfds_split": "train", "examples": 30,
         "bytes": 1200, "split": "train"},
        {"tfds": "tiny_shakespeare", "version": "1.0.0", "tfds_split": "validation",
         "examples": 7, "bytes": 280, "split": "val"}]
    assert manifest["settings"]["inputs"] == ["tfds:tiny_shakespeare@train"]
    assert manifest["settings"]["val_inputs"] == ["tfds:tiny_shakespeare@validation"]
    assert manifest["settings"]["val_fraction"] == 0.0
    # rerun: already complete, nothing rewritten; a finished manifest is what a reader sees
    assert run(tmp_path, ["tfds:tiny_shakespeare"])[1] == json.loads(
        (outdir / MANIFEST).read_text())


def test_val_fraction_or_explicit_splits_replace_the_held_out_split(tmp_path, shakespeare):
    f = 0.1
    outdir, manifest = run(tmp_path, ["tfds:tiny_shakespeare"], name="fraction", val_fraction=f)
    val = [i for i in range(30) if int((i + 1) * f) > int(i * f)]
    np.testing.assert_array_equal(stream(outdir, manifest, "val"),
                                  expected([TEXTS["train"][i] for i in val]))
    assert [s["tfds_split"] for s in manifest["sources"]] == ["train"]
    outdir, manifest = run(tmp_path, ["tfds:tiny_shakespeare:1.0.0@test"], name="explicit",
                           val_inputs=("tfds:tiny_shakespeare@validation",))
    np.testing.assert_array_equal(stream(outdir, manifest, "train"), expected(TEXTS["test"]))
    np.testing.assert_array_equal(stream(outdir, manifest, "val"), expected(TEXTS["validation"]))


def test_the_only_text_feature_is_the_default_text_field(tmp_path):
    root = metadata(tmp_path / "tfds", "pg19", {"train": 6})  # text in 'book_text'
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_FILES,
                                data_dir=root):
        docs = [ex["book_text"] for ex in tfds.data_source("pg19", split="train")]
        outdir, manifest = run(tmp_path, ["tfds:pg19"], val_fraction=0.0)
    docs = [d.decode() if isinstance(d, bytes) else d for d in docs]
    np.testing.assert_array_equal(stream(outdir, manifest, "train"), expected(docs))


def test_catalog_errors_name_the_cause_and_the_fix(tmp_path, shakespeare, monkeypatch):
    cases = [(["tfds:tiny_shakspeare"], {}, "not in TFDS's catalog .*did you mean "
                                            "'tiny_shakespeare'"),
             (["tfds:tiny_shakespeare:9.9.9"], {}, "not in TFDS's catalog .*only: 1.0.0"),
             (["tfds:tiny_shakespeare"], {"text_field": "body"},
              r"has no text feature 'body' \(features: text \(Text\)\); set --text_field"),
             (["tfds:tiny_shakespeare@nope"], {}, "@nope: .*splits: train, validation, test"),
             (["tfds:"], {}, "names no dataset")]
    for inputs, kw, words in cases:
        with pytest.raises(PrepareError, match=words) as e:
            run(tmp_path, inputs, name="err", **kw)
        assert "\n" not in str(e.value)


def test_several_text_features_without_text_must_be_chosen(tmp_path):
    root = metadata(tmp_path / "tfds", "ag_news_subset", {"train": 3})
    with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_FILES,
                                data_dir=root), pytest.raises(PrepareError) as e:
        run(tmp_path, ["tfds:ag_news_subset"], val_fraction=0.0)
    assert ("no text feature 'text' (features: label (ClassLabel), title (Text), description "
            "(Text)); set --text_field") in str(e.value)


def test_an_unprepared_dataset_offline_names_the_tfds_build_command(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "network_available", lambda *a, **k: False)
    with pytest.raises(PrepareError, match="not prepared in .*no network.*`tfds build "
                                           "tiny_shakespeare --file_format=array_record`"):
        run(tmp_path, ["tfds:tiny_shakespeare"])
    assert not (tmp_path / "out").exists()
