"""Multi-query associative recall (MQAR), the synthetic recall task of the Zoology benchmark.

Arora et al. 2023, "Zoology: Measuring and Improving Recall in Efficient Language Models".
Each sequence lists key-value pairs (k1 v1 k2 v2 ...), then asks for some keys again later; the
model must answer each query key with its value. Only those answers are scored (targets elsewhere
are IGNORE), so recall accuracy is the fraction of queried values predicted exactly. Queries sit
at power-law distributed distances, as in Zoology. Generated on the fly from a seed: no download.
"""

from __future__ import annotations

import grain
import numpy as np

from gptjax.config import Config, ConfigError
from gptjax.data.base import Batch, BatchData, endless_batches

# Generating a batch is ~5 ms of numpy for the configs/mqar.py sizes: worth grain's threads.
PREFETCH = grain.ReadOptions()  # grain's default threads and buffer

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


def build_mqar(config: Config, tokenizer, process_index: int, process_count: int) -> BatchData:
    """The registry's 'mqar': ids in [0, model.vocab_size or data.mqar_vocab_size), no text;
    `tokenizer` is ignored. Batch t is a function of (seed, t) alone."""
    data = config.data
    vocab = config.model.vocab_size or data.mqar_vocab_size

    def make(rng, batch):
        return mqar_batch(rng, batch, data.seq_len, vocab, data.mqar_num_kv_pairs)

    make(np.random.default_rng(0), 1)  # bad sizes fail here, before anything compiles

    def batches(seed: int) -> grain.MapDataset:
        def fetch(t: int, rows: np.ndarray) -> Batch:  # this process's rows of global batch t
            full = make(np.random.default_rng([seed, t]), data.batch_size)
            return {k: v[rows - t * data.batch_size] for k, v in full.items()}

        return endless_batches(fetch, data.batch_size, process_index, process_count)

    train = batches(config.train.seed % 2**32)
    return BatchData(None, iter(train.to_iter_dataset(PREFETCH)),
                     batches(VAL_SEED_OFFSET), vocab, read_options=PREFETCH)
