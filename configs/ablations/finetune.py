r"""Fine-tuning methods on a CPU: a char-level Shakespeare model learns to answer a speech with
the next one (the dialogue task of configs/shakespeare_chat_cpu.py), by full fine-tuning, LoRA at
three ranks, freezing the lower half and BitFit, against the same recipe from scratch.

    python -m experiments.ablate --config=configs/ablations/finetune.py \
        --outdir=docs/ablations/finetune

The sweep makes what it starts from (its setup, each step skipped once done): the dialogue files
(speeches of up to 100 characters with their replies; the last 10% of the play is validation)
and a pretrained model (the nanoGPT CPU recipe's shape at 128 characters of context, trained on
the same first 90%, so validation speeches are unseen). Every method gets the same steps, batch
and schedule; the learning rate is the method's own (adapters and biases need a larger one, as
in the LoRA and BitFit papers). Each run is scored on validation dialogues: answer loss (the
validation loss counts only the reply), chrF/BLEU of a greedy reply (gptjax.evaluate), and the
accuracy of picking the true reply among four (play_dialogues' val_choices.jsonl, scored by the
run as train.choice_file; chance is 25%).
"""

import ml_collections

TEXT = "../shared/data/tinyshakespeare.txt"
STEPS = 150


def get_config():
    sweep = ml_collections.ConfigDict()
    sweep.title = "fine-tuning methods on Shakespeare dialogues (char-level, CPU)"
    sweep.base = "configs/shakespeare_chat_cpu.py"
    sweep.setup = [
        {"name": "dialogues", "creates": "{outdir}/data/val_choices.jsonl",
         "command": ["experiments.play_dialogues", f"--text_file={TEXT}",
                     "--outdir={outdir}/data", "--max_chars=100"]},
        {"name": "pretrain", "creates": "{outdir}/pretrained/checkpoints/1000",
         "command": ["experiments.train", "--config=configs/shakespeare_char_cpu.py",
                     f"--config.data.text_file={TEXT}", "--config.model.max_len=128",
                     "--config.data.seq_len=128", "--config.train.num_steps=1000",
                     "--config.train.eval_every=250", "--config.train.sample_tokens=0",
                     "--config.train.checkpoint_every=1000", "--workdir={outdir}/pretrained"]},
    ]
    sweep.overrides = {
        "model": {"max_len": 128},
        "data": {"text_file": "{outdir}/data/train.jsonl",
                 "val_text_file": "{outdir}/data/val.jsonl", "seq_len": 128, "batch_size": 16},
        "optim": {"warmup_steps": 15, "lr": 3e-4, "min_lr": 3e-5},
        "train": {"init_from": "{outdir}/pretrained", "num_steps": STEPS, "eval_every": 50,
                  "eval_steps": 10, "log_every": 10, "checkpoint_every": STEPS,
                  "sample_tokens": 0, "choice_file": "{outdir}/data/val_choices.jsonl",
                  "choice_every": STEPS},
    }
    half = {"finetune": {"method": "freeze", "freeze_layers": 2}}  # the model has 4 blocks
    sweep.variants = [
        {"name": "from scratch", "train": {"init_from": ""}, "data": {"tokenizer": "char"},
         "optim": {"lr": 1e-3, "min_lr": 1e-4}},
        {"name": "full", "finetune": {"method": "full"}},
        *({"name": f"lora r={r}", "finetune": {"method": "lora", "lora_rank": r,
                                               "lora_alpha": 2.0 * r, "lora_targets": "all"},
           "optim": {"lr": 2e-3, "min_lr": 2e-4}} for r in (1, 4, 16)),
        {"name": "freeze lower half", **half},
        {"name": "bitfit", "finetune": {"method": "bitfit"}, "optim": {"lr": 2e-3,
                                                                       "min_lr": 2e-4}},
    ]
    sweep.seeds = (0, 1)
    sweep.metrics = ("val_loss", "choice_accuracy", "choice_accuracy_norm", "trainable_params",
                     "optimizer_state_bytes", "ms_per_step")
    sweep.evaluate = {"task": "dialogue", "data": "{outdir}/data/val.jsonl",
                      "max_examples": 64, "max_new_tokens": 100, "batch_size": 32}
    return sweep
