"""Position encodings on character-level Shakespeare, trained at T=64 and evaluated at 2T and 4T
(length extrapolation; learned positions cannot go past max_len and show n/a there).

    python -m experiments.ablate --config=configs/ablations/positions.py \
        --outdir=docs/ablations/positions
"""

import ml_collections


def get_config():
    sweep = ml_collections.ConfigDict()
    sweep.title = "position encodings, with length extrapolation (char-level Shakespeare)"
    sweep.base = "configs/shakespeare_char_cpu.py"
    sweep.overrides = {
        "data": {"text_file": "../shared/data/tinyshakespeare.txt"},
        "optim": {"warmup_steps": 50},
        "train": {"num_steps": 500, "eval_every": 100, "eval_steps": 10, "log_every": 20,
                  "checkpoint_every": 500, "sample_tokens": 0},
    }
    sweep.variants = [{"name": p, "model": {"position": p}}
                      for p in ("learned", "sinusoidal", "rope", "alibi", "none")]
    sweep.seeds = (0, 1)
    sweep.metrics = ("val_loss", "val_accuracy")
    sweep.eval_lengths = (2, 4)
    return sweep
