"""GPT-2 small (124M) pre-training for accelerators, after nanoGPT's config/train_gpt2.py:
context 1024, ~0.5M tokens per step, lr 6e-4 -> 6e-5 cosine after 2000 warmup steps, beta2 0.95,
weight decay 0.1, bf16 compute with fp32 parameters.

Data: token shards written once by experiments.prepare_data (GPT-2 BPE, uint16, memory-mapped;
each process reads only its rows). From FineWeb-Edu's 10B-token sample (parquet files) or
OpenWebText (.txt or .jsonl files), downloaded to DIR:

    python -m experiments.prepare_data --inputs='DIR/*.parquet' --tokenizer=gpt2 \
        --outdir=/data/fineweb10B          # resumable: rerun the same command after a stop
    python -m experiments.train --config=configs/gpt2_124m.py --workdir=gs://BUCKET/gpt2_124m \
        --config.data.tokens_dir=/data/fineweb10B

The tokenizer is the one saved with the shards. A TFDS catalog corpus streams into the same shards
(its train split; its validation or test split becomes val):

    python -m experiments.prepare_data --inputs=tfds:lm1b --tokenizer=gpt2 --outdir=/data/lm1b

--config.data.dataset=NAME reads a catalog dataset directly, in memory, as small datasets do.
HellaSwag accuracy along the run, as build-nanogpt tracks it: download hellaswag_val.jsonl (from
the rowanz/hellaswag repository's data/ folder) and add
--config.train.choice_file=hellaswag_val.jsonl (scored at every evaluation; gpt2's own weights
score with `python -m experiments.multiple_choice --checkpoint=gpt2 --data=hellaswag_val.jsonl`).
"""

from gptjax.config import default_config


def get_config():
    config = default_config()

    # GPT-2 small. The embedding and LM head are padded from GPT-2's 50257 tokens to 50304 rows
    # (a multiple of 64) for fast matmuls, as nanoGPT does; the padded logits are masked out of
    # the loss and never generated, and an export has GPT-2's 50257.
    config.model.vocab_size = 50257
    config.model.vocab_multiple = 64
    config.model.max_len = 1024
    config.model.num_layers = 12
    config.model.num_heads = 12
    config.model.d_model = 768
    config.model.dropout = 0.0
    config.model.attention = "xla"  # "cudnn" on GPUs
    config.model.dtype = "bfloat16"
    config.model.param_dtype = "float32"
    config.model.remat = False

    config.data.dataset = "tokens"
    config.data.tokens_dir = None  # required: --config.data.tokens_dir=DIR (see above)
    config.data.seq_len = 1024
    config.data.batch_size = 512  # 524,288 tokens per step (nanoGPT: 491,520)

    config.optim.lr = 6e-4
    config.optim.min_lr = 6e-5
    config.optim.schedule = "cosine"
    config.optim.warmup_steps = 2000
    config.optim.b1 = 0.9
    config.optim.b2 = 0.95
    config.optim.weight_decay = 0.1
    config.optim.grad_clip = 1.0
    config.optim.grad_accum = 1  # raise it when 512 x 1024 tokens do not fit in the devices

    config.train.num_steps = 600_000
    config.train.eval_every = 1000
    config.train.eval_steps = 20
    config.train.log_every = 10
    config.train.checkpoint_every = 2000
    config.train.keep_checkpoints = 3
    config.train.sample_tokens = 100

    config.mesh.strategy = "jit"
    config.mesh.data = -1  # every device data parallel; try mesh.fsdp for larger models
    return config
