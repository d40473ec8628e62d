"""A corpus of any size -> fixed-size token shards and a manifest ("gptjax-tokens/1"), streaming.

    manifest = prepare(PrepareSettings(inputs=("data/*.jsonl.zst",), tokenizer="gpt2",
                                       outdir="/data/owt"))

Documents stream from .txt (a file is one document), .jsonl, .jsonl.gz, .jsonl.zst and .parquet
(by row group), and from TFDS catalog datasets: an input `tfds:NAME[/CONFIG][:VERSION][@SPLIT]`
reads the examples' text feature (gptjax.data.catalog_inputs; without a split, 'train', and the
'validation' or 'test' split as val unless a val split is asked for). Worker processes
tokenize ordered batches of them, eos after every document; the token stream is cut into
shards of exactly `shard_tokens` (the last shorter). Each shard is written under a .tmp name
and renamed, then manifest.json is replaced atomically, so a reader
(gptjax.data.shards) sees only whole shards. A rerun with the same settings continues after the
last finished shard. Validation: whole documents, either every document of `val_inputs` or, of
the training inputs, document i when floor((i+1) * val_fraction) > floor(i * val_fraction)
(exactly that fraction, spread evenly over the corpus). The format is in docs/design.md.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import glob
import gzip
import io
import json
import math
import multiprocessing
import os
import pathlib
import shutil
import sys
import time
import zlib
from collections.abc import Iterable, Iterator

import numpy as np
import tqdm
from absl import logging

from gptjax.tokenizers import Tokenizer, encode_documents, fingerprint

FORMAT = "gptjax-tokens/1"
MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"
TFDS_PREFIX = "tfds:"  # an input naming a TFDS catalog dataset instead of files
DEFAULT_VAL_FRACTION = 0.0005
SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet")
BAD_DOCUMENT = ("error", "skip")
BATCH_BYTES = 1 << 20  # text per worker task: big enough to amortise pickling, small in memory
BATCH_DOCUMENTS = 4096
IN_FLIGHT = 2  # batches queued per worker: keeps workers busy, bounds memory
SETTINGS = ("inputs", "text_field", "val_fraction", "val_inputs", "shard_tokens",
            "on_bad_document")  # what the shards depend on: a rerun must repeat them


class PrepareError(ValueError):
    """Bad input or settings: the message names the file (and line or row) and the fix."""


@dataclasses.dataclass(frozen=True)
class PrepareSettings:
    """What prepare_data was asked (experiments/prepare_data.py's flags)."""

    inputs: tuple[str, ...]
    tokenizer: str
    outdir: str
    text_field: str = "text"
    val_fraction: float | None = None  # None: DEFAULT_VAL_FRACTION, or 0 with val inputs
    val_inputs: tuple[str, ...] | None = None
    shard_tokens: int = 100_000_000
    on_bad_document: str = "error"
    num_workers: int = 1  # 0: tokenize in this process; never changes the shards
    data_dir: str | None = None  # prepared TFDS datasets (tfds: inputs); None: as for training

    def check(self) -> None:
        if not self.inputs:
            raise PrepareError("--inputs is empty: give one or more globs, e.g. "
                               "--inputs='data/*.jsonl.zst'")
        if self.val_fraction is not None and not 0.0 <= self.val_fraction < 1.0:
            raise PrepareError(f"--val_fraction={self.val_fraction} must be in [0, 1)")
        if self.val_inputs and self.val_fraction:
            raise PrepareError("give --val_inputs or --val_fraction, not both (set "
                               "--val_fraction=0 with --val_inputs)")
        if self.shard_tokens < 1:
            raise PrepareError(f"--shard_tokens={self.shard_tokens} must be positive")
        if self.on_bad_document not in BAD_DOCUMENT:
            raise PrepareError(f"--on_bad_document={self.on_bad_document!r}: allowed are "
                               f"{', '.join(BAD_DOCUMENT)}")
        if self.num_workers < 0:
            raise PrepareError(f"--num_workers={self.num_workers} must be >= 0")
        if self.tokenizer == "char":
            raise PrepareError(
                "--tokenizer=char builds its vocabulary from the whole corpus, which a streaming "
                "preparation never holds; use --tokenizer=byte (any text, 257 ids), gpt2, or a "
                "folder holding a saved tokenizer")

    def resolved(self) -> PrepareSettings:
        """These settings with every default made explicit (catalog inputs name their split)."""
        settings = self
        if any(map(is_catalog, self.inputs + (self.val_inputs or ()))):
            settings = _catalog().resolve(self)
        if settings.val_fraction is None:
            fraction = 0.0 if settings.val_inputs else DEFAULT_VAL_FRACTION
            settings = dataclasses.replace(settings, val_fraction=fraction)
        return settings

    def recorded(self) -> dict:
        """The settings as the manifest records them (lists, not tuples: JSON)."""
        out = {k: getattr(self, k) for k in SETTINGS}
        out["inputs"] = list(self.inputs)
        out["val_inputs"] = None if self.val_inputs is None else list(self.val_inputs)
        return out


@dataclasses.dataclass
class Record:
    """One document as read: `text` None when it is bad, with `problem` saying why."""

    index: int  # in the whole input stream: training inputs, then validation inputs
    path: str
    where: str  # "line 7", "row 12", "" for a .txt file
    text: str | None
    problem: str | None = None

    def name(self) -> str:
        return f"{self.path} {self.where}" if self.where else self.path


# ---- inputs -------------------------------------------------------------------------------------
def is_catalog(spec: str) -> bool:
    """Whether an --inputs entry names a TFDS catalog dataset rather than files."""
    return spec.startswith(TFDS_PREFIX)


def _catalog():
    """gptjax.data.catalog_inputs: TFDS and grain load only for a tfds: input (~4 s at start)."""
    from gptjax.data import catalog_inputs

    return catalog_inputs


def source_key(source: dict) -> str:
    """What names an input in messages and records: its path, or tfds:NAME:VERSION@SPLIT."""
    return source["path"] if "path" in source else _catalog().key(source)


def expand(globs: Iterable[str], flag: str) -> list[str]:
    """The files the globs name, sorted; a glob that names no file is an error."""
    files = set()
    for pattern in (g for g in globs if not is_catalog(g)):
        found = [p for p in glob.glob(os.path.expanduser(pattern), recursive=True)
                 if not os.path.isdir(p)]
        if not found:
            raise PrepareError(f"{flag}: no file matches {pattern!r}")
        for path in found:
            if not path.endswith(SUFFIXES):
                raise PrepareError(f"{path}: unknown format; prepare_data reads "
                                   f"{', '.join(SUFFIXES)}")
            files.add(os.path.abspath(path))
    return sorted(files)


def sources(settings: PrepareSettings) -> list[dict]:
    """The inputs in stream order (training, then validation; in each, the files sorted, then
    the catalog datasets as given), with sizes and splits."""
    train = expand(settings.inputs, "--inputs")
    val = expand(settings.val_inputs, "--val_inputs") if settings.val_inputs else []
    both = sorted(set(train) & set(val)) + sorted(
        set(filter(is_catalog, settings.inputs)) & set(settings.val_inputs or ()))
    if both:
        raise PrepareError(f"{both[0]} is in both --inputs and --val_inputs; a document "
                           "belongs to one split")
    out = []
    for split, files, given in (("train", train, settings.inputs),
                                ("val", val, settings.val_inputs or ())):
        out += [{"path": p, "bytes": _size(p), "split": split} for p in files]
        catalog = [g for g in given if is_catalog(g)]
        out += _catalog().sources(catalog, split, settings) if catalog else []
    return out


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError as e:  # e.g. a link to a file that is gone
        raise PrepareError(f"cannot read {path}: {e.strerror or e}") from None


def _lines(path: str, stream) -> Iterator[tuple[int, str | None, str | None]]:
    """(line number, text, problem) of each non-blank line of a binary stream."""
    offset, number = 0, 0
    try:
        for number, raw in enumerate(stream, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield number, None, (f"not UTF-8: byte 0x{raw[e.start]:02x} at byte offset "
                                     f"{offset + e.start}")
            else:
                if line.strip():
                    yield number, line, None
            offset += len(raw)
    except (OSError, EOFError, zlib.error) as e:
        where = f"after line {number}" if number else "at its start"
        raise PrepareError(f"{path}: corrupt or truncated {where}: {e}") from None
    except Exception as e:  # zstandard.ZstdError; imported only for .zst files
        if type(e).__name__ != "ZstdError":
            raise
        where = f"after line {number}" if number else "at its start"
        raise PrepareError(f"{path}: corrupt zstd data {where}: {e}") from None


def _json_text(line: str, field: str) -> tuple[str | None, str | None]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        return None, f"invalid JSON ({e})"
    if not isinstance(row, dict):
        return None, f"a JSON {type(row).__name__}, not an object with a {field!r} field"
    if field not in row:
        return None, (f"no field {field!r} (fields: {', '.join(map(str, row)) or 'none'}); "
                      "set --text_field")
    if not isinstance(row[field], str):
        return None, f"field {field!r} is {type(row[field]).__name__}, not a string"
    return row[field], None


def _open_lines(path: str, raw):
    if path.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw)
    if path.endswith(".zst"):
        import zstandard  # a dependency of this reader only

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw))
    return raw


def _read_jsonl(path: str, field: str) -> Iterator[tuple[str, str | None, str | None, int]]:
    with open(path, "rb") as raw:
        for number, line, problem in _lines(path, _open_lines(path, raw)):
            text = None
            if problem is None:
                text, problem = _json_text(line, field)
            yield f"line {number}", text, problem, raw.tell()


def _read_txt(path: str, field: str) -> Iterator[tuple[str, str | None, str | None, int]]:
    data = pathlib.Path(path).read_bytes()
    try:
        yield "", data.decode("utf-8"), None, len(data)
    except UnicodeDecodeError as e:
        yield "", None, f"not UTF-8: byte 0x{data[e.start]:02x} at byte offset {e.start}", len(data)


def _read_parquet(path: str, field: str) -> Iterator[tuple[str, str | None, str | None, int]]:
    import pyarrow as pa  # parquet inputs only
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise PrepareError(f"{path}: not a readable parquet file: {e}") from None
    names = parquet.schema_arrow.names
    if field not in names:
        raise PrepareError(f"{path} has no column {field!r} (columns: {', '.join(names)}); set "
                           "--text_field")
    row, size, groups = 0, os.path.getsize(path), parquet.num_row_groups
    for group in range(groups):
        try:
            texts = parquet.read_row_group(group, columns=[field]).column(0).to_pylist()
        except (pa.ArrowException, OSError, UnicodeDecodeError) as e:
            raise PrepareError(f"{path}: corrupt row group {group} (rows from {row}): "
                               f"{e}") from None
        for text in texts:
            bad = None if isinstance(text, str) else (
                f"column {field!r} is {type(text).__name__}, not a string")
            yield f"row {row}", text if bad is None else None, bad, size * (group + 1) // groups
            row += 1


def _reader(path: str):
    if path.endswith(".parquet"):
        return _read_parquet
    return _read_txt if path.endswith(".txt") else _read_jsonl


def records(files: list[dict], field: str, progress=None, data_dir: str | None = None
            ) -> Iterator[Record]:
    """Every document of `files` (sources) in order; `progress(n)` gets the input bytes read."""
    index = 0
    for source in files:
        path, done = source_key(source), 0
        read_source = (_reader(path)(path, field) if "path" in source
                       else _catalog().read(source, field, data_dir))
        try:
            for where, text, problem, read in read_source:
                yield Record(index, path, where, text, problem)
                index += 1
                if progress is not None and read > done:
                    progress(read - done)
                    done = read
        except OSError as e:
            raise PrepareError(f"cannot read {path}: {e.strerror or e}") from None


# ---- shards and the manifest --------------------------------------------------------------------
def _write_atomic(path: pathlib.Path, write) -> None:
    """write(file) under a .tmp name, synced, then renamed: readers see all of it or nothing."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_manifest(outdir: pathlib.Path, manifest: dict) -> None:
    _write_atomic(outdir / MANIFEST,
                  lambda f: f.write((json.dumps(manifest, indent=1) + "\n").encode()))


class ShardWriter:
    """One split's token stream cut into shards of exactly `shard_tokens`, from its cursor on.

    `state` is the split's entry in the manifest; its cursor (next_document, next_offset) is the
    first token not yet in a finished shard: a rerun skips everything before it.
    """

    def __init__(self, outdir: pathlib.Path, split: str, state: dict, shard_tokens: int,
                 dtype: np.dtype, commit):
        self.outdir, self.split, self.state, self.commit = outdir, split, state, commit
        self.buffer = np.empty(shard_tokens, dtype)  # pages never written cost no memory
        self.filled = 0
        self.first = (0, 0)  # (document, offset in it) of the buffer's first token
        self.starts = 0  # documents whose first token is in the buffer

    def needs(self, index: int) -> bool:
        return index >= self.state["next_document"]

    @property
    def pending(self) -> int:
        return self.filled

    def add(self, index: int, tokens: np.ndarray) -> None:
        """Append document `index`'s tokens (eos included); write each shard that fills."""
        offset = self.state["next_offset"] if index == self.state["next_document"] else 0
        while offset < len(tokens):
            if self.filled == 0:
                self.first = (index, offset)
            self.starts += offset == 0
            n = min(len(tokens) - offset, len(self.buffer) - self.filled)
            self.buffer[self.filled:self.filled + n] = tokens[offset:offset + n]
            self.filled, offset = self.filled + n, offset + n
            if self.filled == len(self.buffer):
                self.flush((index, offset) if offset < len(tokens) else (index + 1, 0))

    def flush(self, cursor: tuple[int, int]) -> None:
        """Write the buffer as the next shard (if it holds any token), then the manifest."""
        if self.filled:
            name = f"{self.split}-{len(self.state['shards']):06d}.npy"
            _write_atomic(self.outdir / name, lambda f: np.save(f, self.buffer[:self.filled]))
            self.state["shards"].append({
                "file": name, "tokens": self.filled, "documents": self.starts,
                "first_document": self.first[0], "first_offset": self.first[1]})
            self.state["tokens"] += self.filled
            self.state["documents"] += self.starts
            self.filled, self.starts = 0, 0
        self.state["next_document"], self.state["next_offset"] = cursor
        self.commit()


def _new_manifest(settings: PrepareSettings, tokenizer: Tokenizer, files: list[dict]) -> dict:
    splits = ["train"] + (["val"] if settings.val_fraction or settings.val_inputs else [])
    empty = {"shards": [], "complete": False, "tokens": 0, "documents": 0,
             "next_document": 0, "next_offset": 0}
    return {
        "format": FORMAT,
        "tokenizer": {"name": settings.tokenizer, "fingerprint": fingerprint(tokenizer),
                      "vocab_size": tokenizer.vocab_size,
                      "eos_token_id": tokenizer.eos_token_id},
        "dtype": "uint16" if tokenizer.vocab_size <= 1 << 16 else "uint32",
        "settings": settings.recorded(),
        "sources": files,
        "splits": {split: json.loads(json.dumps(empty)) for split in splits},
        "complete": False,
        "skipped_documents": 0,
    }


def _difference(old: dict, new: dict) -> str | None:
    """What makes an existing manifest another preparation than `new`; None if it is this one."""
    if old.get("format") != FORMAT:
        return f"its manifest is format {old.get('format')!r}, not {FORMAT!r}"
    was, now = old.get("tokenizer", {}), new["tokenizer"]
    if was.get("fingerprint") != now["fingerprint"]:
        return (f"it holds shards of another tokenizer ({was.get('name')!r}, fingerprint "
                f"{was.get('fingerprint')}; now {now['name']!r}, {now['fingerprint']})")
    for key, value in new["settings"].items():
        if old.get("settings", {}).get(key) != value:
            return (f"it was prepared with --{key}={old.get('settings', {}).get(key)!r}, "
                    f"not {value!r}")
    before = {source_key(s): s for s in old.get("sources", [])}
    for source in new["sources"]:
        name = source_key(source)
        if name not in before:
            return f"input {name} is new"
        if before.pop(name) != source:
            return f"input {name} changed (size, examples or split)"
    if before:
        return f"input {next(iter(before))} is gone"
    return None


def _ours(path: pathlib.Path) -> bool:
    """Leftovers of a preparation killed before its first manifest: safe to delete."""
    return path.name in (TOKENIZER_DIR, TOKENIZER_DIR + ".tmp") or path.name.endswith(".tmp")


def open_outdir(settings: PrepareSettings, tokenizer: Tokenizer, files: list[dict]) -> dict:
    """The manifest to continue: the existing one if it is this preparation, else a new one."""
    outdir = pathlib.Path(settings.outdir).expanduser()
    fix = f"use a new --outdir, or delete {outdir} to start over"
    new = _new_manifest(settings, tokenizer, files)
    if (outdir / MANIFEST).is_file():
        try:
            old = json.loads((outdir / MANIFEST).read_text())
        except (OSError, ValueError) as e:
            raise PrepareError(f"{outdir / MANIFEST} is unreadable ({e}); {fix}") from None
        why = _difference(old, new) if isinstance(old, dict) else "its manifest is no object"
        if why:
            raise PrepareError(f"{outdir} is another preparation: {why}; {fix}")
        for tmp in outdir.glob("*.tmp"):  # a shard cut short by a kill: never listed
            tmp.unlink()
        return old
    if outdir.is_file() or (outdir.is_dir() and not all(map(_ours, outdir.iterdir()))):
        raise PrepareError(f"{outdir} exists and holds no {MANIFEST} of prepare_data; {fix}")
    for leftover in outdir.glob("*") if outdir.is_dir() else []:
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    outdir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(outdir / (TOKENIZER_DIR + ".tmp"))
    os.replace(outdir / (TOKENIZER_DIR + ".tmp"), outdir / TOKENIZER_DIR)
    write_manifest(outdir, new)
    return new


# ---- tokenizing in worker processes -------------------------------------------------------------
@contextlib.contextmanager
def _unnamed_main():
    """Spawned workers re-run __main__ (the CLI imports JAX and TFDS: ~6 s and ~300 MB each)
    unless it has no name; they need only gptjax.tokenizers."""
    main = sys.modules["__main__"]
    saved = {k: main.__dict__[k] for k in ("__spec__", "__file__") if k in main.__dict__}
    main.__spec__ = None
    main.__dict__.pop("__file__", None)
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


@contextlib.contextmanager
def _serial_tokenizers(num_workers: int):
    """Workers spawned inside inherit TOKENIZERS_PARALLELISM=false (unless the user set it): with
    several workers the processes are the parallelism, and each worker's Rayon threads (as many
    as cores, for BPEs that tiktoken cannot encode) would only contend with the other workers."""
    if num_workers < 2 or "TOKENIZERS_PARALLELISM" in os.environ:
        yield
        return
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        del os.environ["TOKENIZERS_PARALLELISM"]


@contextlib.contextmanager
def encoder(num_workers: int, folder: str):
    """encode(batches of (Record, split)) -> (batch, encode_documents' result), in order, by
    `num_workers` processes (0: this one), IN_FLIGHT batches queued per worker (bounded memory)."""
    if num_workers == 0:
        yield lambda batches: ((b, encode_documents(folder, [r.text for r, _ in b]))
                               for b in batches)
        return
    # spawn: a fork of a process that has started JAX's threads can deadlock
    with _unnamed_main(), _serial_tokenizers(num_workers):
        pool = multiprocessing.get_context("spawn").Pool(num_workers)

    def encode(batches: Iterable[list[tuple[Record, str]]]):
        pending = collections.deque()
        for batch in batches:
            texts = [record.text for record, _ in batch]
            pending.append((batch, pool.apply_async(encode_documents, (folder, texts))))
            if len(pending) >= IN_FLIGHT * num_workers:
                batch, result = pending.popleft()
                yield batch, result.get()
        while pending:
            batch, result = pending.popleft()
            yield batch, result.get()

    try:
        yield encode
    finally:
        pool.terminate()
        pool.join()


def _batches(items: Iterator[tuple[Record, str]]) -> Iterator[list[tuple[Record, str]]]:
    batch, size = [], 0
    for item in items:
        batch.append(item)
        size += len(item[0].text)
        if size >= BATCH_BYTES or len(batch) >= BATCH_DOCUMENTS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


# ---- the preparation ----------------------------------------------------------------------------
class _Run:
    """One preparation's state: writers per split, the manifest, bad documents, the count read."""

    def __init__(self, settings: PrepareSettings, manifest: dict, outdir: pathlib.Path):
        self.settings, self.manifest, self.outdir = settings, manifest, outdir
        self.writers = {
            split: ShardWriter(outdir, split, state, settings.shard_tokens,
                               np.dtype(manifest["dtype"]), self.commit)
            for split, state in manifest["splits"].items()}
        self.skipped: list[tuple[int, str]] = []  # (document, split) skipped, not yet recorded
        self.examples: list[str] = []
        self.documents = 0  # documents read so far: the index after the last one
        self.start_tokens = self.tokens()

    def tokens(self) -> int:
        return sum(w.state["tokens"] + w.pending for w in self.writers.values())

    def commit(self) -> None:
        """Write the manifest; skipped documents behind a cursor count (a rerun skips them)."""
        behind = [s for s in self.skipped if not self.writers[s[1]].needs(s[0])]
        self.manifest["skipped_documents"] += len(behind)
        self.skipped = [s for s in self.skipped if self.writers[s[1]].needs(s[0])]
        write_manifest(self.outdir, self.manifest)

    def split_of(self, record: Record, source_split: str) -> str:
        f, i = self.settings.val_fraction, record.index
        return "val" if source_split == "val" or math.floor((i + 1) * f) > math.floor(i * f) \
            else "train"

    def bad(self, record: Record, split: str, problem: str) -> None:
        if self.settings.on_bad_document == "error":
            raise PrepareError(f"{record.name()}: {problem}; fix the input, or pass "
                               "--on_bad_document=skip to leave such documents out")
        self.skipped.append((record.index, split))
        if len(self.examples) < 5:
            self.examples.append(f"{record.name()}: {problem}")
            logging.warning("skipping %s: %s", record.name(), problem)

    def todo(self, files: list[dict], progress) -> Iterator[tuple[Record, str]]:
        """The documents still to tokenize, with their split: those behind a cursor are done."""
        split_by_path = {source_key(f): f["split"] for f in files}
        for record in records(files, self.settings.text_field, progress, self.settings.data_dir):
            self.documents = record.index + 1
            split = self.split_of(record, split_by_path[record.path])
            if not self.writers[split].needs(record.index):
                continue
            if record.text is None:
                self.bad(record, split, record.problem)
            else:
                yield record, split

    def add(self, batch: list[tuple[Record, str]], result) -> None:
        tokens, lengths, errors = result
        ends = np.cumsum(lengths)
        for k, (record, split) in enumerate(batch):
            if k in errors:
                self.bad(record, split, errors[k])
            else:
                self.writers[split].add(record.index, tokens[ends[k] - lengths[k]:ends[k]])

    def finish(self) -> None:
        for split, writer in self.writers.items():
            writer.state["complete"] = True
            writer.flush((self.documents, 0))
            if not writer.state["tokens"]:
                logging.warning("the %s split is empty: %d documents read", split,
                                self.documents)
        self.manifest["complete"] = True
        self.commit()


def load_tokenizer(name: str) -> Tokenizer:
    try:
        return Tokenizer.from_name(name)
    except (OSError, ValueError) as e:
        raise PrepareError(f"--tokenizer={name!r}: {e}") from None


def prepare(settings: PrepareSettings, progress: bool = True) -> dict:
    """Tokenize `settings.inputs` into shards in `settings.outdir`; returns the manifest."""
    settings.check()
    settings = settings.resolved()
    files = sources(settings)
    tokenizer = load_tokenizer(settings.tokenizer)
    manifest = open_outdir(settings, tokenizer, files)
    if manifest["complete"]:
        logging.info("%s is already complete", settings.outdir)
        return manifest
    outdir = pathlib.Path(settings.outdir).expanduser()
    run = _Run(settings, manifest, outdir)
    start = time.perf_counter()
    with tqdm.tqdm(total=sum(f["bytes"] for f in files), unit="B", unit_scale=True,
                   desc="prepare", disable=not progress, smoothing=0.1) as bar, \
            encoder(settings.num_workers, str(outdir / TOKENIZER_DIR)) as encode:
        for batch, result in encode(_batches(run.todo(files, bar.update))):
            run.add(batch, result)
            rate = (run.tokens() - run.start_tokens) / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix_str(f"{rate / 1e6:.2f}M tokens/s", refresh=False)
    run.finish()
    if run.examples:
        logging.warning("skipped %d bad documents, e.g. %s", manifest["skipped_documents"],
                        run.examples[0])
    return manifest
