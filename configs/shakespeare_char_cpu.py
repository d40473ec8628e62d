"""nanoGPT's CPU recipe for Shakespeare, character level (karpathy/nanoGPT README, "I only have a
macbook"): config/train_shakespeare_char.py with --device=cpu --eval_iters=20 --block_size=64
--batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000
--dropout=0.0. nanoGPT reaches val loss 1.886 at step 2000 with it on this repo's 2-core CPU.

    python -m experiments.train --config=configs/shakespeare_char_cpu.py \
        --config.data.text_file=../shared/data/tinyshakespeare.txt --workdir=/tmp/shakespeare_cpu
"""

from gptjax.config import default_config


def get_config():
    config = default_config()

    config.model.vocab_size = 0  # from the tokenizer: every character of the text (65)
    config.model.num_layers = 4
    config.model.num_heads = 4
    config.model.d_model = 128
    config.model.max_len = 64
    config.model.dropout = 0.0
    config.model.attention = "reference"  # on a CPU the fastest kernel at this context length

    config.data.dataset = "text_file"  # the text: --config.data.text_file=PATH
    config.data.tokenizer = "char"
    config.data.val_fraction = 0.1  # nanoGPT's prepare.py: first 90% train, last 10% val
    config.data.seq_len = 64
    config.data.batch_size = 12

    config.optim.lr = 1e-3
    config.optim.min_lr = 1e-4
    config.optim.schedule = "cosine"
    config.optim.warmup_steps = 100
    config.optim.b1 = 0.9
    config.optim.b2 = 0.99
    config.optim.weight_decay = 0.1
    config.optim.grad_clip = 1.0

    config.train.num_steps = 2000
    config.train.eval_every = 250  # nanoGPT's eval_interval
    config.train.eval_steps = 20  # eval_iters=20
    config.train.log_every = 50
    config.train.checkpoint_every = 1000
    config.train.sample_tokens = 63  # with the one-token prompt: the model's 64 positions

    config.train.steps_per_call = 10  # one compiled call of 10 steps: less host work per step

    config.mesh.cpu_devices = -1  # a CPU host: data parallel over one JAX device per core
    return config
