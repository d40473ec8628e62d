"""The first run: a small character-level GPT on the documentation every CPython ships
(pydoc_data.topics, ~465k characters, no download). About a minute on a 2-core CPU; ends by
printing a sample of generated text.

    python -m experiments.train --config=configs/quickstart.py --workdir=/tmp/gptjax-quickstart
"""

from gptjax.config import default_config


def get_config():
    config = default_config()

    config.model.vocab_size = 0  # from the tokenizer: every character of the corpus
    config.model.num_layers = 4
    config.model.num_heads = 4
    config.model.d_model = 128
    config.model.max_len = 64
    config.model.dropout = 0.0
    config.model.attention = "reference"  # on a CPU the fastest kernel at this context length

    config.data.dataset = "embedded"
    config.data.tokenizer = "char"
    config.data.seq_len = 64
    config.data.batch_size = 16

    config.optim.lr = 2e-3
    config.optim.min_lr = 2e-4
    config.optim.warmup_steps = 50
    config.optim.b2 = 0.99
    config.optim.weight_decay = 0.1

    config.train.num_steps = 800
    config.train.eval_every = 200
    config.train.eval_steps = 10
    config.train.log_every = 50
    config.train.checkpoint_every = 400
    config.train.sample_tokens = 60  # the prompt and sample fill the model's 64 positions
    config.train.sample_prompt = "The "

    config.mesh.cpu_devices = -1  # a CPU host: data parallel over one JAX device per core
    return config
