"""prepare_data's output folder: token shards written whole (a .tmp name, then renamed), the
manifest that lists them and each split's cursor, and the check that a rerun continues the same
preparation. The format ("gptjax-tokens/1") is in docs/design.md; gptjax.data.shards reads it."""

from __future__ import annotations

import json
import os
import pathlib
import shutil

import numpy as np

from gptjax.data.prepare.documents import source_key
from gptjax.data.prepare.settings import PrepareError, PrepareSettings
from gptjax.tokenizers import Tokenizer, fingerprint

FORMAT = "gptjax-tokens/1"
MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"


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


def new_manifest(settings: PrepareSettings, tokenizer: Tokenizer, files: list[dict]) -> dict:
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
    new = new_manifest(settings, tokenizer, files)
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
