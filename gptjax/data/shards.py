"""Prepared token shards as a dataset: data.dataset='tokens', data.tokens_dir=DIR.

DIR is what experiments.prepare_data writes (format "gptjax-tokens/1"): manifest.json,
tokenizer/ and train-000000.npy ..., val-000000.npy ..., 1-D uint16/uint32 arrays. Only the
shards the manifest lists are read, each memory-mapped (np.load mmap_mode='r'), and a split's
shards are one token stream that is never concatenated in memory: windows.py's phased,
epoch-wise shuffled windows run over the whole stream, and a window that crosses a shard
boundary is read from both shards, so the shard size changes no batch.

The run's tokenizer is the one saved in DIR/tokenizer. data.tokenizer may stay at its default
('char'), name the shards' tokenizer (the manifest's name) or any tokenizer with the same
fingerprint (gptjax.tokenizers.fingerprint); another one is a ConfigError, since its ids would
not be the shards'.

With data.document_mask each batch also holds 'segment_ids' (documents numbered from 0 within a
row; a document ends with its eos token) and, with data.document_positions, 'positions'
(restarting at 0 after each eos): int32 [local_batch, seq_len] like 'inputs'.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import grain
import numpy as np

from gptjax.config import Config, ConfigError, DataConfig
from gptjax.data.base import Batch, BatchData
from gptjax.data.prepare.output import FORMAT, MANIFEST, TOKENIZER_DIR
from gptjax.data.windows import check_one_window, split_batches
from gptjax.tokenizers import Tokenizer, fingerprint

SPLITS = ("train", "val")
DTYPES = ("uint16", "uint32")


def _rerun(folder: pathlib.Path) -> str:
    return (f"run `python -m experiments.prepare_data --inputs=... --tokenizer=... "
            f"--outdir={folder}` (the same arguments again continue an interrupted one)")


# --- the folder ---------------------------------------------------------------------------------

def read_manifest(folder: str | pathlib.Path) -> dict:
    """DIR/manifest.json of a finished prepare_data run, checked; a ConfigError says what is
    wrong and how to mend it."""
    folder = pathlib.Path(folder).expanduser()
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise ConfigError(f"data.tokens_dir={str(folder)!r} {what}; {_rerun(folder)}")
    path = folder / MANIFEST
    if not path.is_file():
        raise ConfigError(f"data.tokens_dir={str(folder)!r} holds no manifest.json, so it is not "
                          f"a folder prepare_data finished; {_rerun(folder)}")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, OSError) as e:
        raise ConfigError(f"{path} is not readable JSON ({e}); {_rerun(folder)}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise ConfigError(f"{path} has format {found!r}, and this gptjax reads {FORMAT!r}: "
                          "prepare the data again with this version's experiments.prepare_data")
    if manifest.get("complete") is not True:
        raise ConfigError(f"data.tokens_dir={str(folder)!r}: prepare_data has not finished "
                          f"(manifest.json says complete=false); {_rerun(folder)}")
    if manifest.get("dtype") not in DTYPES or not isinstance(manifest.get("splits"), dict):
        raise ConfigError(f"{path} is damaged (dtype {manifest.get('dtype')!r}, splits "
                          f"{type(manifest.get('splits')).__name__}); {_rerun(folder)}")
    return manifest


def open_split(folder: pathlib.Path, manifest: dict, split: str) -> list[np.ndarray]:
    """The memory-mapped shards of `split`, each checked against its manifest entry."""
    entries = manifest["splits"].get(split, {}).get("shards", [])
    dtype = np.dtype(manifest["dtype"])
    arrays = []
    for entry in entries:
        path = folder / str(entry.get("file"))
        if not path.is_file():
            raise ConfigError(f"shard {path} is listed in manifest.json but missing; "
                              f"{_rerun(folder)}")
        try:
            tokens = np.load(path, mmap_mode="r")
        except (ValueError, OSError) as e:  # a truncated or foreign file
            raise ConfigError(f"shard {path} is damaged ({e}); delete it and "
                              f"{_rerun(folder)}") from None
        if tokens.shape != (entry.get("tokens"),) or tokens.dtype != dtype:
            raise ConfigError(
                f"shard {path} holds {tokens.dtype} {tokens.shape}, but manifest.json lists "
                f"{dtype} ({entry.get('tokens')},): the file is not the one prepare_data "
                f"wrote; delete it and {_rerun(folder)}")
        arrays.append(tokens)
    return arrays


class ShardStream:
    """A split's shards as one token stream: len() and windows(starts, length), for Windows."""

    def __init__(self, arrays: list[np.ndarray]):
        self.arrays = [np.asarray(a) for a in arrays if len(a)]  # plain views: memmap slicing
        # is slow
        self.bounds = np.cumsum([0] + [len(a) for a in self.arrays]).tolist()
        self.dtype = self.arrays[0].dtype if self.arrays else np.uint16

    def __len__(self) -> int:
        return self.bounds[-1]

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        """[len(starts), length] tokens from stream positions `starts` (read across shards)."""
        out = np.empty((len(starts), length), self.dtype)
        shards = np.searchsorted(self.bounds, starts, side="right") - 1
        for row, start, shard in zip(out, starts.tolist(), shards.tolist()):
            done = 0
            while done < length:  # more than once only for a window crossing a boundary
                offset = start + done - self.bounds[shard]
                piece = self.arrays[shard][offset:offset + length - done]
                row[done:done + len(piece)] = piece
                done += len(piece)
                shard += 1
        return out


def document_ids(inputs: np.ndarray, eos: int, positions: bool) -> Batch:
    """{'segment_ids'[, 'positions']}: int32 like `inputs`; a document ends at its eos."""
    starts = np.zeros(inputs.shape, bool)  # a new document begins after each eos
    starts[:, 1:] = inputs[:, :-1] == eos
    out = {"segment_ids": np.cumsum(starts, axis=1, dtype=np.int32)}
    if positions:
        index = np.arange(inputs.shape[1], dtype=np.int32)
        first = np.maximum.accumulate(np.where(starts, index, 0), axis=1)
        out["positions"] = index - first
    return out


# --- the dataset --------------------------------------------------------------------------------

@dataclasses.dataclass(kw_only=True)
class TokensData(BatchData):
    """Windows of prepared token shards; a gptjax.data.Data."""

    train_dataset: grain.IterDataset  # iter() of it starts again from the first batch
    folder: pathlib.Path
    manifest: dict
    train_tokens: int
    val_tokens: int
    train_windows: int  # per epoch
    val_windows: int


def _tokenizer(data: DataConfig, folder: pathlib.Path, manifest: dict, given: Any):
    """The shards' tokenizer, after checking that the one asked for (if any) is the same."""
    try:
        tokenizer = Tokenizer.from_pretrained(folder / TOKENIZER_DIR)
    except (OSError, ValueError) as e:
        raise ConfigError(f"data.tokens_dir: {e}; {_rerun(folder)}") from None
    saved = manifest.get("tokenizer") or {}
    mine = fingerprint(tokenizer)
    if saved.get("fingerprint") not in (None, mine):
        raise ConfigError(f"{folder / TOKENIZER_DIR} is not the tokenizer manifest.json names "
                          f"(fingerprint {mine}, not {saved.get('fingerprint')}); "
                          f"{_rerun(folder)}")
    asked, what = given, "the tokenizer given to build_data"
    if asked is None and data.tokenizer not in ("char", saved.get("name")):
        what = f"data.tokenizer={data.tokenizer!r}"
        try:
            asked = Tokenizer.from_name(data.tokenizer)
        except (OSError, ValueError) as e:
            raise ConfigError(f"{what}: {e}") from None
    if asked is not None and fingerprint(asked) != mine:
        raise ConfigError(
            f"{what} is not the tokenizer the shards in {folder} were made with "
            f"({saved.get('name')!r}, fingerprint {mine}), so its ids would not be the shards'; "
            "leave data.tokenizer at its default to use the shards' tokenizer, or prepare the "
            "data again with that tokenizer")
    return tokenizer


def _streams(data: DataConfig, folder: pathlib.Path, manifest: dict) -> list[ShardStream]:
    """The train and val streams, each long enough for one window."""
    streams = [ShardStream(open_split(folder, manifest, split)) for split in SPLITS]
    for split, stream in zip(SPLITS, streams):
        check_one_window(len(stream), data.seq_len, f"the {split} split of {folder}",
                         "or prepare more data" + (" (a larger --val_fraction, or --val_inputs)"
                                                   if split == "val" else ""))
    return streams


def build_tokens(config: Config, tokenizer, process_index: int,
                 process_count: int) -> TokensData:
    """The registry's 'tokens': windows of the shards in data.tokens_dir, this process's rows."""
    data = config.data
    if not data.tokens_dir:
        raise ConfigError("data.dataset='tokens' needs data.tokens_dir: pass "
                          "--config.data.tokens_dir=DIR, a folder written by "
                          "`python -m experiments.prepare_data`")
    folder = pathlib.Path(data.tokens_dir).expanduser()
    manifest = read_manifest(folder)
    tokenizer = _tokenizer(data, folder, manifest, tokenizer)
    extras = None
    if data.document_mask:
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ConfigError(
                f"data.document_mask=True finds documents by their eos token, and the shards' "
                f"tokenizer ({tokenizer.kind}) has none, so {folder} does not mark them; "
                "set data.document_mask=False or prepare the data with a tokenizer that has "
                "an eos token (byte, gpt2)")
        extras = lambda inputs: document_ids(inputs, eos, data.document_positions)  # noqa
    train_stream, val_stream = _streams(data, folder, manifest)
    batches = split_batches(config, train_stream, val_stream, process_index, process_count,
                            extras)
    return TokensData(
        tokenizer=tokenizer, train=iter(batches.train_dataset),
        train_dataset=batches.train_dataset, val_dataset=batches.val_dataset,
        vocab_size=tokenizer.vocab_size, folder=folder, manifest=manifest,
        train_tokens=len(train_stream), val_tokens=len(val_stream),
        train_windows=batches.train_windows, val_windows=batches.val_windows)
