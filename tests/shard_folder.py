"""Tests' stand-in for experiments.prepare_data: a token-shard folder written straight from
arrays, following the "gptjax-tokens/1" contract (np.save + manifest.json + tokenizer/)."""

import json
import pathlib

import numpy as np

from gptjax.tokenizers import fingerprint


def write_shards(folder, tokenizer, splits: dict, *, name: str = "byte",
                 complete: bool = True) -> pathlib.Path:
    """`splits`: {'train': [shard tokens, ...], 'val': [...]}; returns the folder."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(folder / "tokenizer")
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    eos = tokenizer.eos_token_id
    manifest_splits = {}
    for split, shards in splits.items():
        entries, first = [], 0
        for i, tokens in enumerate(shards):
            file = f"{split}-{i:06d}.npy"
            np.save(folder / file, np.asarray(tokens, dtype))
            documents = int(np.sum(np.asarray(tokens) == eos)) if eos is not None else 0
            entries.append({"file": file, "tokens": len(tokens), "documents": documents,
                            "first_document": first})
            first += documents
        manifest_splits[split] = {"shards": entries, "complete": complete,
                                  "tokens": sum(len(s) for s in shards), "documents": first}
    manifest = {
        "format": "gptjax-tokens/1",
        "tokenizer": {"name": name, "fingerprint": fingerprint(tokenizer),
                      "vocab_size": tokenizer.vocab_size, "eos_token_id": eos},
        "dtype": np.dtype(dtype).name,
        "settings": {"inputs": ["docs/*.txt"], "text_field": "text", "val_fraction": 0.1,
                     "val_inputs": None, "shard_tokens": max(len(s) for s in splits["train"]),
                     "on_bad_document": "error"},
        "sources": [],
        "splits": manifest_splits,
        "complete": complete,
        "skipped_documents": 0,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return folder


def documents_stream(rng: np.random.Generator, num_tokens: int, eos: int, vocab: int,
                     mean_length: int = 20) -> np.ndarray:
    """`num_tokens` tokens of random documents, each followed by `eos`: int64 [num_tokens]."""
    tokens = rng.integers(0, vocab, num_tokens)
    tokens[tokens == eos] = (eos + 1) % vocab  # eos only where a document ends
    ends = np.cumsum(rng.integers(1, 2 * mean_length, num_tokens // 2))
    tokens[ends[ends < num_tokens]] = eos
    return tokens
