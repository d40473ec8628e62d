"""Attention kernels x head layouts on character-level Shakespeare (nanoGPT's CPU model, a
300-step schedule), 2 seeds each. The kernels compute the same function, so their losses agree
to float error; what differs is speed (tokens_per_sec). The head layouts (MHA 4 K/V heads,
GQA 2, MQA 1) trade quality for a smaller KV cache.

    python -m experiments.ablate --config=configs/ablations/attention.py \
        --outdir=docs/ablations/attention
"""

import ml_collections


def get_config():
    sweep = ml_collections.ConfigDict()
    sweep.title = "attention kernels x heads (char-level Shakespeare)"
    sweep.base = "configs/shakespeare_char_cpu.py"
    sweep.overrides = {
        "data": {"text_file": "../shared/data/tinyshakespeare.txt"},
        "optim": {"warmup_steps": 30},
        "train": {"num_steps": 300, "eval_every": 100, "eval_steps": 10, "log_every": 20,
                  "checkpoint_every": 300, "sample_tokens": 0},
    }
    sweep.variants = [
        {"name": f"{kernel} {heads}", "model": {"attention": kernel, "num_kv_heads": kv}}
        for kernel in ("reference", "xla", "blockwise")
        for heads, kv in (("mha", 4), ("gqa", 2), ("mqa", 1))
    ]
    sweep.seeds = (0, 1)
    sweep.metrics = ("val_loss", "val_accuracy", "tokens_per_sec")
    return sweep
