"""The documents of prepare_data's inputs, in stream order: files (.txt, .jsonl[.gz|.zst],
.parquet) and TFDS catalog datasets (gptjax.data.catalog_inputs), each document a Record, a bad
one carrying the problem instead of its text."""

from __future__ import annotations

import dataclasses
import glob
import gzip
import io
import json
import os
import pathlib
import zlib
from collections.abc import Iterable, Iterator

from gptjax.data.prepare.settings import PrepareError, PrepareSettings, catalog, is_catalog

SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet")


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


def source_key(source: dict) -> str:
    """What names an input in messages and records: its path, or tfds:NAME:VERSION@SPLIT."""
    return source["path"] if "path" in source else catalog().key(source)


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
        datasets = [g for g in given if is_catalog(g)]
        out += catalog().sources(datasets, split, settings) if datasets else []
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
                       else catalog().read(source, field, data_dir))
        try:
            for where, text, problem, read in read_source:
                yield Record(index, path, where, text, problem)
                index += 1
                if progress is not None and read > done:
                    progress(read - done)
                    done = read
        except OSError as e:
            raise PrepareError(f"cannot read {path}: {e.strerror or e}") from None
