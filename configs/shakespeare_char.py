"""nanoGPT's GPU recipe for Shakespeare, character level (config/train_shakespeare_char.py): a
"baby GPT" of 6 layers, 6 heads, 384 wide, context 256; nanoGPT reports val loss ~1.47.

    python -m experiments.train --config=configs/shakespeare_char.py \
        --config.data.text_file=../shared/data/tinyshakespeare.txt --workdir=/tmp/shakespeare

(--config.data.dataset=tiny_shakespeare takes TFDS's copy instead, with TFDS's splits.)
"""

from gptjax.config import default_config


def get_config():
    config = default_config()

    config.model.vocab_size = 0  # from the tokenizer: every character of the text
    config.model.num_layers = 6
    config.model.num_heads = 6
    config.model.d_model = 384
    config.model.max_len = 256
    config.model.dropout = 0.2

    config.data.dataset = "text_file"
    config.data.tokenizer = "char"
    config.data.val_fraction = 0.1
    config.data.seq_len = 256
    config.data.batch_size = 64

    config.optim.lr = 1e-3
    config.optim.min_lr = 1e-4
    config.optim.schedule = "cosine"
    config.optim.warmup_steps = 100
    config.optim.b2 = 0.99  # the model is small and the batches few: a shorter memory
    config.optim.weight_decay = 0.1
    config.optim.grad_clip = 1.0

    config.train.num_steps = 5000
    config.train.eval_every = 250
    config.train.eval_steps = 200
    config.train.log_every = 10
    config.train.checkpoint_every = 500
    config.train.sample_tokens = 255  # with the one-token prompt: the model's 256 positions
    return config
