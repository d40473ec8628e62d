"""Multi-query associative recall (Zoology): 8 key-value pairs in 64 tokens, vocabulary 256,
generated from the seed. val_accuracy is recall accuracy over the queried values.

    python -m experiments.train --config=configs/mqar.py --workdir=/tmp/mqar
"""

from gptjax.config import default_config


def get_config():
    config = default_config()

    config.model.vocab_size = 0  # data.mqar_vocab_size
    config.model.num_layers = 2
    config.model.num_heads = 4
    config.model.d_model = 64
    config.model.max_len = 64
    config.model.position = "rope"

    config.data.dataset = "mqar"
    config.data.seq_len = 64
    config.data.batch_size = 32
    config.data.mqar_num_kv_pairs = 8
    config.data.mqar_vocab_size = 256

    config.optim.lr = 3e-3
    config.optim.min_lr = 3e-4
    config.optim.warmup_steps = 100
    config.optim.weight_decay = 0.1

    config.train.num_steps = 1500
    config.train.eval_every = 250
    config.train.eval_steps = 8
    config.train.log_every = 50
    config.train.checkpoint_every = 1500
    config.train.sample_tokens = 0  # ids, not text
    return config
