r"""Dialogue fine-tuning on a CPU: a char-level Shakespeare model learns to answer a speech with
the next one (article section 2.2, pre-training then fine-tuning; section 6.4, dialogue).

    python -m experiments.train --config=configs/shakespeare_char_cpu.py \
        --config.data.text_file=../shared/data/tinyshakespeare.txt --config.model.max_len=256 \
        --config.data.seq_len=256 --config.train.num_steps=1500 --workdir=/tmp/shakespeare256
    python -m experiments.play_dialogues --text_file=../shared/data/tinyshakespeare.txt \
        --outdir=/tmp/shakespeare_dialogue --max_chars=200
    python -m experiments.finetune --config=configs/shakespeare_chat_cpu.py \
        --init_from=/tmp/shakespeare256 --workdir=/tmp/shakespeare_chat
    python -m experiments.chat --checkpoint=/tmp/shakespeare_chat

The pretraining run and the dialogue files split the text at the same place (the last 10% is
validation), so the validation dialogues are speeches the model has never read. The model
fields match the pretraining run's (init_from's win anyway); training from scratch with the
same recipe is `experiments.train` with --config.data.tokenizer=char.
"""

from gptjax.config import default_config


def get_config():
    config = default_config()

    config.model.vocab_size = 0
    config.model.num_layers = 4
    config.model.num_heads = 4
    config.model.d_model = 128
    config.model.max_len = 256
    config.model.dropout = 0.0
    config.model.attention = "xla"

    config.data.dataset = "task"
    config.data.task = "dialogue"
    config.data.text_file = "/tmp/shakespeare_dialogue/train.jsonl"
    config.data.val_text_file = "/tmp/shakespeare_dialogue/val.jsonl"
    config.data.tokenizer = "init_from"
    config.data.seq_len = 256
    config.data.batch_size = 12

    config.optim.lr = 3e-4
    config.optim.min_lr = 3e-5
    config.optim.schedule = "cosine"
    config.optim.warmup_steps = 20
    config.optim.b2 = 0.99
    config.optim.weight_decay = 0.1

    config.train.num_steps = 400
    config.train.eval_every = 100
    config.train.eval_steps = 20
    config.train.log_every = 50
    config.train.checkpoint_every = 200
    config.train.sample_tokens = 0

    config.mesh.cpu_devices = -1
    return config
