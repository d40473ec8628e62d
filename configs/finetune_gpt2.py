r"""Fine-tune GPT-2 for an application: the task is the config's argument.

    python -m experiments.finetune --config=configs/finetune_gpt2.py:qa --init_from=gpt2 \
        --config.data.text_file=train.jsonl --workdir=/tmp/gpt2-qa

Tasks (one JSON object per line of data.text_file; gptjax/data/tasks.py):
    completion   {"prompt": ..., "completion": ...}                      text generation
    qa           {"question": ..., "answer": ..., "context": optional}  question answering
    translation  {"source": ..., "target": ..., "source_lang": "English", "target_lang": "French"}
    dialogue     {"messages": [{"role": "user", "content": ...},
                               {"role": "assistant", "content": ...}, ...]}   then experiments.chat

Only the answer, translation or assistant turns are scored, so the validation loss is theirs.
The model's shape comes from --init_from (gpt2, gpt2-medium, ... or a local folder), the
tokenizer too (data.tokenizer='init_from'). Hyperparameters follow common GPT-2 fine-tuning
practice: a small learning rate (5e-5) with a short warmup and linear decay, dropout 0.1.

The config fits the model it starts from: data.seq_len (256; 512 for dialogue) is capped at the
source's context (a smaller model's max_len), with one log line saying so. The warm-up is 5% of
train.num_steps, so it scales with --config.train.num_steps (50 of the default 1000; 1 of a
30-step run): a fixed 50 would leave a short run in its warm-up, never at the full learning
rate. An explicit --config.optim.warmup_steps wins, and one over half the run logs a warning.
"""

from gptjax.config import default_config

TASKS = ("completion", "qa", "translation", "dialogue")


def get_config(task: str = "completion"):
    if task not in TASKS:
        raise ValueError(f"configs/finetune_gpt2.py:{task}: the task is one of {TASKS}, as in "
                         "--config=configs/finetune_gpt2.py:qa")
    config = default_config()

    config.model.dropout = 0.1
    config.model.attention = "xla"  # "cudnn" on GPUs with --config.model.dtype=bfloat16

    config.data.dataset = "task"
    config.data.task = task
    config.data.tokenizer = "init_from"
    config.data.seq_len = 512 if task == "dialogue" else 256
    config.data.batch_size = 16

    config.optim.lr = 5e-5
    config.optim.min_lr = 0.0
    config.optim.schedule = "linear"
    # 5% of the run, whatever --config.train.num_steps says (a reference, resolved at the end).
    config.optim.warmup_steps = config.train.get_ref("num_steps") // 20
    config.optim.weight_decay = 0.0
    config.optim.grad_clip = 1.0

    config.train.num_steps = 1000
    config.train.eval_every = 100
    config.train.eval_steps = 10
    config.train.log_every = 10
    config.train.checkpoint_every = 200
    config.train.sample_tokens = 0  # the samples of a pretraining run say little here
    return config
