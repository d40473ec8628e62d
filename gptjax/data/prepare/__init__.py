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

The parts: settings.py (the flags, checked), documents.py (inputs -> documents), workers.py
(tokenizing in worker processes) and output.py (shards, manifest, continuing a rerun); this
module runs them.
"""

from __future__ import annotations

import math
import pathlib
import time
from collections.abc import Iterator

import numpy as np
import tqdm
from absl import logging

from gptjax.data.prepare.documents import SUFFIXES, Record, records, source_key, sources
from gptjax.data.prepare.output import (MANIFEST, TOKENIZER_DIR, ShardWriter, open_outdir,
                                        write_manifest)
from gptjax.data.prepare.settings import (BAD_DOCUMENT, TFDS_PREFIX, PrepareError,
                                          PrepareSettings, is_catalog)
from gptjax.data.prepare.workers import batches, encoder
from gptjax.tokenizers import Tokenizer

__all__ = ["BAD_DOCUMENT", "MANIFEST", "SUFFIXES", "TFDS_PREFIX", "PrepareError",
           "PrepareSettings", "Record", "is_catalog", "prepare", "records"]


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
        for batch, result in encode(batches(run.todo(files, bar.update))):
            run.add(batch, result)
            rate = (run.tokens() - run.start_tokens) / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix_str(f"{rate / 1e6:.2f}M tokens/s", refresh=False)
    run.finish()
    if run.examples:
        logging.warning("skipped %d bad documents, e.g. %s", manifest["skipped_documents"],
                        run.examples[0])
    return manifest
