"""Multi-query associative recall (MQAR), the synthetic recall task of the Zoology benchmark.

Arora et al. 2023, "Zoology: Measuring and Improving Recall in Efficient Language Models".
Each sequence lists key-value pairs (k1 v1 k2 v2 ...), then asks for some keys again later; the
model must answer each query key with its value. Only those answers are scored (targets elsewhere
are IGNORE), so recall accuracy is the fraction of queried values predicted exactly. Queries sit
at power-law distributed distances, as in Zoology. Generated on the fly from a seed: no download.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator

import grain
import numpy as np

from gptjax.config import Config, ConfigError

IGNORE = -1  # target of a position that is not scored
VAL_SEED_OFFSET = 1_000_003  # validation sequences come from another stream than training


def mqar_batch(rng: np.random.Generator, batch: int, seq_len: int, vocab_size: int,
               num_kv_pairs: int, power_a: float = 0.01) -> dict[str, np.ndarray]:
    """{'inputs', 'targets'}: int32 [batch, seq_len]; targets are IGNORE except at query keys.

    Keys come from [1, vocab/2), values from [vocab/2, vocab); filler tokens are random.
    """
    context = 2 * num_kv_pairs
    space = (seq_len + 1 - context) // 2  # query slots: a (key, value) pair each
    if num_kv_pairs < 1 or space < num_kv_pairs or vocab_size // 2 - 1 < num_kv_pairs:
        raise ConfigError(
            f"MQAR with {num_kv_pairs} key-value pairs needs data.seq_len >= "
            f"{4 * num_kv_pairs - 1} (got {seq_len}) and model vocab >= {2 * num_kv_pairs + 2} "
            f"(got {vocab_size}); lower data.mqar_num_kv_pairs or raise the others")
    half = vocab_size // 2
    keys = np.stack([rng.choice(np.arange(1, half), num_kv_pairs, replace=False)
                     for _ in range(batch)])
    values = rng.integers(half, vocab_size, size=(batch, num_kv_pairs))
    seq = rng.integers(0, vocab_size, size=(batch, seq_len + 1))  # random filler
    seq[:, 0:context:2], seq[:, 1:context:2] = keys, values
    # Zoology: query gaps drawn with p(g) ~ g^(power_a - 1), so most queries come soon.
    gaps = np.arange(1, space + 1, dtype=np.float64)
    p = power_a * gaps ** (power_a - 1)
    p /= p.sum()
    slots = np.stack([rng.choice(space, num_kv_pairs, replace=False, p=p) for _ in range(batch)])
    where = context + 2 * slots  # position of each query key
    rows = np.arange(batch)[:, None]
    seq[rows, where], seq[rows, where + 1] = keys, values
    targets = np.full((batch, seq_len + 1), IGNORE)
    targets[rows, where + 1] = values
    return {"inputs": seq[:, :-1].astype(np.int32), "targets": targets[:, 1:].astype(np.int32)}


@dataclasses.dataclass
class MQARData:
    """Same interface as gptjax.data.Data: .train (checkpointable), .val_batches, .vocab_size."""

    vocab: int
    train: grain.DatasetIterator
    val_dataset: grain.MapDataset
    tokenizer: None = None  # ids are the task; there is no text

    @property
    def vocab_size(self) -> int:
        return self.vocab

    def val_batches(self, num_batches: int) -> Iterator[dict[str, np.ndarray]]:
        return iter(self.val_dataset[:num_batches].to_iter_dataset())


def _batches(seed: int, global_batch: int, process_index: int, process_count: int,
             make) -> grain.MapDataset:
    """Batch t is a function of (seed, t) alone; each process takes its rows of it."""
    local = global_batch // process_count

    def batch(t: int):
        full = make(np.random.default_rng([seed, t]), global_batch)
        return {k: v[process_index * local:(process_index + 1) * local] for k, v in full.items()}

    return grain.MapDataset.range(sys.maxsize).map(batch)


def build_mqar(config: Config, *, process_index: int = 0, process_count: int = 1) -> MQARData:
    data = config.data
    vocab = config.model.vocab_size or data.mqar_vocab_size
    if data.batch_size % process_count:
        raise ConfigError(f"data.batch_size={data.batch_size} must be divisible by the number "
                          f"of processes ({process_count})")

    def make(rng, batch):
        return mqar_batch(rng, batch, data.seq_len, vocab, data.mqar_num_kv_pairs)

    make(np.random.default_rng(0), 1)  # bad sizes fail here, before anything compiles
    seed = config.train.seed % 2**32
    train = _batches(seed, data.batch_size, process_index, process_count, make)
    val = _batches(VAL_SEED_OFFSET, data.batch_size, process_index, process_count, make)
    return MQARData(vocab, iter(train.to_iter_dataset()), val)
