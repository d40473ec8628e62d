"""Data: TFDS datasets (local text, an embedded offline corpus, the TFDS catalog) read with grain.

    data = build_data(config)                       # Data: .tokenizer .train .val_batches(n)
    batch = to_global(next(data.train), sharding)   # {'inputs', 'targets'}: global jax.Arrays

`data.train` is a grain DatasetIterator: `get_state()`/`set_state()` give its position, and
orbax saves it with `grain.checkpoint.CheckpointSave(data.train)` (restore with
`grain.checkpoint.CheckpointRestore(data.train)`).
"""

from gptjax.data.datasets import (DATASETS, Corpus, DatasetUnavailableError, load_corpus,
                                  network_available)
from gptjax.data.pipeline import Data, build_data, to_global
from gptjax.data.tokens import tokenize
from gptjax.data.windows import Windows, host_batches

__all__ = ["DATASETS", "Corpus", "Data", "DatasetUnavailableError", "Windows", "build_data",
           "host_batches", "load_corpus", "network_available", "to_global", "tokenize"]
