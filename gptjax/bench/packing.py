"""Packed fine-tuning rows (data.pack=True) against one example per row, on the same task file.

Both layouts train the same small char-level model, the same rows per batch and row length,
for the same number of steps (gptjax.bench.scaling.run: the loop's train step, compiled first,
each step timed whole). Reported per layout: the share of row tokens that are the examples'
(the rest is padding), examples per row, ms per step, and the answer tokens (scored targets)
trained on per second, which is what packing is for.
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from gptjax.bench.scaling import run
from gptjax.config import Config
from gptjax.data.tasks import play_dialogues, write_examples
from gptjax.training.start import set_up


def make_dialogues(text_path: pathlib.Path, max_chars: int, path: pathlib.Path) -> pathlib.Path:
    """The play's dialogue examples (gptjax.data.tasks.play_dialogues) as a JSON-lines file."""
    if not path.is_file():
        examples = play_dialogues(text_path.read_text(encoding="utf-8"), max_chars)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_examples(path, examples)
    return path


def config(task_file: str, *, pack: bool, seq_len: int, batch_size: int,
           steps: int) -> dict[str, Any]:
    """A small char-level model fine-tuned on `task_file`'s dialogues from scratch."""
    return {"model": dict(vocab_size=0, max_len=seq_len, num_layers=2, num_heads=4,
                          d_model=64),
            "data": dict(dataset="task", task="dialogue", text_file=task_file,
                         tokenizer="char", seq_len=seq_len, batch_size=batch_size,
                         val_fraction=0.05, pack=pack),
            "optim": dict(lr=1e-3, min_lr=1e-4, warmup_steps=0, weight_decay=0.0),
            "train": dict(num_steps=steps, seed=0)}


def measure(config_dict: dict[str, Any], steps: int) -> dict[str, Any]:
    """One layout: its rows' make-up and `steps` timed train steps on its first batches."""
    cfg, data = set_up(Config.from_dict(config_dict))
    batches = [next(data.train) for _ in range(steps)]
    result = run(cfg, batches)
    seconds = sum(result.step_seconds)
    scored = sum(int((b["targets"] >= 0).sum()) for b in batches)
    d = cfg.data
    return {"pack": d.pack, "examples": data.train_examples, "rows": data.train_rows,
            "seq_len": d.seq_len, "batch_size": d.batch_size, "steps": steps,
            "examples_per_row": data.train_examples / data.train_rows,
            "useful_share": data.train_tokens / (data.train_rows * d.seq_len),
            "scored_share": scored / (steps * d.batch_size * d.seq_len),
            "ms_per_step": 1e3 * seconds / steps,
            "answer_tokens_per_sec": scored / seconds,
            "epoch_seconds": data.train_rows / d.batch_size * seconds / steps,
            "compile_seconds": result.compile_seconds,
            "first_loss": result.losses[0], "last_loss": result.losses[-1],
            "all_finite": bool(np.isfinite(result.losses).all())}


def report(rows: list[dict[str, Any]], machine: str, command: str) -> str:
    """The markdown table, packed against one example per row."""
    lines = ["# Packed fine-tuning rows", "", f"Machine: {machine}. Command: `{command}`.", "",
             "Same model (char-level, 2 layers, d_model 64), same rows per batch and row "
             "length, same number of steps; answer tokens are the scored targets.", "",
             "| layout | examples | rows | examples/row | useful tokens | ms/step | "
             "answer tokens/s | epoch s | vs one per row |", "|---" * 9 + "|"]
    base = next((r["answer_tokens_per_sec"] for r in rows if not r["pack"]), None)
    for r in rows:
        ratio = f"{r['answer_tokens_per_sec'] / base:.2f}x" if base else "-"
        lines.append(f"| {'packed' if r['pack'] else 'one per row'} | {r['examples']:,} | "
                     f"{r['rows']:,} | {r['examples_per_row']:.2f} | {r['useful_share']:.1%} | "
                     f"{r['ms_per_step']:.1f} | {r['answer_tokens_per_sec']:,.0f} | "
                     f"{r['epoch_seconds']:.1f} | {ratio} |")
    return "\n".join(lines) + "\n"
