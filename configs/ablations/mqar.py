"""Multi-query associative recall (Zoology's MQAR): head layouts and position encodings of a
2-layer model, scored by recall accuracy on held-out sequences.

    python -m experiments.ablate --config=configs/ablations/mqar.py --outdir=docs/ablations/mqar
"""

import ml_collections


def get_config():
    sweep = ml_collections.ConfigDict()
    sweep.title = "MQAR recall (Zoology)"
    sweep.base = "configs/mqar.py"
    sweep.overrides = {}
    sweep.variants = [
        {"name": "mha rope", "model": {"num_kv_heads": 4, "position": "rope"}},
        {"name": "mqa rope", "model": {"num_kv_heads": 1, "position": "rope"}},
        {"name": "mha learned", "model": {"num_kv_heads": 4, "position": "learned"}},
        {"name": "mha alibi", "model": {"num_kv_heads": 4, "position": "alibi"}},
    ]
    sweep.seeds = (0, 1)
    sweep.metrics = ("val_accuracy", "val_loss")
    return sweep
