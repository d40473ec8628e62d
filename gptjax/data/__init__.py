"""Data: datasets by name (local text, an embedded offline corpus, MQAR, fine-tuning tasks,
prepared token shards, the TFDS catalog) read with grain.

    data = build_data(config)                       # a Data: .tokenizer .vocab_size .train
    batch = to_global(next(data.train), sharding)   # {'inputs', 'targets'}: global jax.Arrays
                                                    # (+ 'segment_ids'[, 'positions'])
    for batch in data.val_batches(n): ...            # the same n batches on every call

`data.train` is a grain DatasetIterator: `get_state()`/`set_state()` give its position, and
orbax saves it with `grain.checkpoint.CheckpointSave(data.train)` (restore with
`grain.checkpoint.CheckpointRestore(data.train)`). DATASETS is the registry of builders.
"""

import importlib

# Names load on first use: `python -m experiments.prepare_data` imports gptjax.data.prepare, which
# needs neither JAX, grain nor TFDS (~4 s of CPU at every start, before any worker can begin).
_NAMES = {"BatchData": "base", "Data": "base", "Corpus": "datasets",
          "DatasetUnavailableError": "datasets", "network_available": "datasets",
          "DATASETS": "pipeline", "build_data": "pipeline", "to_global": "pipeline",
          "TextData": "text", "tokenize": "tokens", "Windows": "windows",
          "host_batches": "windows"}


def __getattr__(name):
    if name not in _NAMES:
        raise AttributeError(f"module 'gptjax.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"gptjax.data.{_NAMES[name]}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


__all__ = sorted(_NAMES)
