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

from gptjax.data.base import BatchData, Data
from gptjax.data.datasets import Corpus, DatasetUnavailableError, network_available
from gptjax.data.pipeline import DATASETS, build_data, to_global
from gptjax.data.text import TextData
from gptjax.data.tokens import tokenize
from gptjax.data.windows import Windows, host_batches

__all__ = ["DATASETS", "BatchData", "Corpus", "Data", "DatasetUnavailableError", "TextData",
           "Windows", "build_data", "host_batches", "network_available", "to_global",
           "tokenize"]
