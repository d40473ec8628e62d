"""Fine-tuning task formats: JSON-lines examples -> one padded row each, scored on the answer only.

    data.dataset='task', data.task='qa', data.text_file='train.jsonl'  (one JSON object per line)

Each format renders an example as segments of text, each either context (prompt, question,
source sentence, the user's turns) or what the model should learn to write (the answer, the
translation, the assistant's turns). A row's targets are the next tokens where the next token
belongs to a written segment, and IGNORE (-1, not scored) elsewhere, so the loss and the
validation loss are the answer's alone. Segments are tokenized separately, as a prompt is at
generation time, and a written segment ends with the tokenizer's eos when it has one, so a
fine-tuned model learns to stop.

Formats (gptjax.data.tasks.TASKS):
    completion   {"prompt", "completion"}
    qa           {"question", "answer", optional "context"}
    translation  {"source", "target", optional "source_lang", "target_lang"}
    dialogue     {"messages": [{"role": "system" | "user" | "assistant", "content"}, ...]}

One example per row (no packing across examples): rows are padded with IGNORE targets, and an
example longer than seq_len+1 tokens is cut at the end (counted and logged).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import numpy as np
from absl import logging

from gptjax.config import Config, ConfigError
from gptjax.data.base import (READ_OPTIONS, Batch, BatchData, Epochs, endless_batches,
                              file_paths)
from gptjax.generation.chat import dialogue_segments  # the transcript chat prompts with
from gptjax.tokenizers import Tokenizer

IGNORE = -1  # target of a position that is not scored
Segment = tuple[str, bool]  # (text, written by the model: scored)


def _field(example: Mapping[str, Any], name: str, where: str) -> str:
    value = example.get(name)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: needs a string field {name!r}; it has "
                          f"{sorted(example)}")
    return value


def completion(example, where) -> list[Segment]:
    return [(_field(example, "prompt", where), False),
            (_field(example, "completion", where), True)]


def qa(example, where) -> list[Segment]:
    context = example.get("context")
    prompt = (f"Context: {context}\n" if context else "") + \
        f"Question: {_field(example, 'question', where)}\nAnswer:"
    return [(prompt, False), (" " + _field(example, "answer", where).strip(), True)]


def translation(example, where) -> list[Segment]:
    src = example.get("source_lang", "the source language")
    tgt = example.get("target_lang", "the target language")
    prompt = f"Translate {src} to {tgt}:\n{_field(example, 'source', where)}\n=>"
    return [(prompt, False), (" " + _field(example, "target", where).strip(), True)]


def dialogue(example, where) -> list[Segment]:
    messages = example.get("messages")
    if not isinstance(messages, list) or not any(
            isinstance(m, Mapping) and m.get("role") == "assistant" for m in messages):
        raise ConfigError(f"{where}: a dialogue example needs 'messages', a list of "
                          "{'role', 'content'} with at least one 'assistant' message")
    try:
        return dialogue_segments(messages, where)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def play_dialogues(text: str, max_chars: int | None = None) -> list[dict[str, Any]]:
    """Dialogue examples from a play script in tinyshakespeare's layout ('NAME:' on a line,
    the speech below it, a blank line between speeches): each speech as the user's message and
    the next speech, by another speaker, as the assistant's reply. A speech's lines are joined
    with spaces (a transcript turn is one line). max_chars keeps the pairs whose two speeches
    fit in that many characters together."""
    speeches = []
    for block in text.split("\n\n"):
        lines = [line.strip() for line in block.strip().splitlines()]
        if len(lines) >= 2 and lines[0].endswith(":"):
            speeches.append((lines[0][:-1], " ".join(line for line in lines[1:] if line)))
    examples = []
    for (speaker, said), (other, reply) in zip(speeches, speeches[1:]):
        if speaker != other and (max_chars is None or len(said) + len(reply) <= max_chars):
            examples.append({"messages": [{"role": "user", "content": said},
                                          {"role": "assistant", "content": reply}]})
    return examples


TASKS: dict[str, Callable[[Mapping[str, Any], str], list[Segment]]] = {
    "completion": completion, "qa": qa, "translation": translation, "dialogue": dialogue}


def task_format(task: str) -> Callable[[Mapping[str, Any], str], list[Segment]]:
    """The renderer of format `task`, or a ConfigError naming the formats."""
    if task not in TASKS:
        raise ConfigError(f"data.task={task!r} is unknown; allowed: {list(TASKS)}")
    return TASKS[task]


def render(task: str, example: Mapping[str, Any], where: str = "example") -> list[Segment]:
    """The segments of one example of format `task`."""
    fmt = task_format(task)
    if not isinstance(example, Mapping):
        raise ConfigError(f"{where}: expected a JSON object, got {type(example).__name__}")
    return fmt(example, where)


def read_examples(paths: Sequence[str], task: str) -> list[list[Segment]]:
    """Every example of the JSON-lines files, rendered; errors name the file and line."""
    examples = []
    for path in paths:
        file = pathlib.Path(path).expanduser()
        if not file.is_file():
            raise FileNotFoundError(f"task file {file} does not exist; data.text_file names "
                                    "the JSON-lines file(s) of a data.dataset='task' run")
        for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                example = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{file}:{n} is not JSON ({e.msg}); a task file holds one "
                                  "JSON object per line") from None
            examples.append(render(task, example, f"{file}:{n}"))
    if not examples:
        raise ConfigError(f"{', '.join(paths)} hold no examples")
    return examples


def encode(segments: Sequence[Segment], tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """(ids, scored): each segment encoded on its own; a scored segment ends with eos."""
    ids: list[int] = []
    scored: list[bool] = []
    eos = tokenizer.eos_token_id
    for text, written in segments:
        part = tokenizer.encode(text) + ([eos] if written and eos is not None else [])
        ids += part
        scored += [written] * len(part)
    return np.asarray(ids, np.int64), np.asarray(scored, bool)


def to_rows(examples, tokenizer, seq_len: int, what: str) -> dict[str, np.ndarray]:
    """{'inputs', 'targets'}: int32 [examples, seq_len], one example per row."""
    pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    inputs = np.full((len(examples), seq_len), pad, np.int32)
    targets = np.full((len(examples), seq_len), IGNORE, np.int32)
    cut = 0
    for row, segments in enumerate(examples):
        ids, scored = encode(segments, tokenizer)
        cut += len(ids) > seq_len + 1
        ids, scored = ids[:seq_len + 1], scored[:seq_len + 1]
        n = len(ids) - 1
        inputs[row, :n] = ids[:-1]
        targets[row, :n] = np.where(scored[1:], ids[1:], IGNORE)
    if cut:
        logging.warning("%s: %d of %d examples are longer than data.seq_len+1=%d tokens and "
                        "were cut at the end", what, cut, len(examples), seq_len + 1)
    empty = ~(targets >= 0).any(axis=1)
    if empty.all():
        raise ConfigError(f"{what}: no example keeps a scored token within data.seq_len="
                          f"{seq_len}; raise data.seq_len or shorten the prompts")
    if empty.any():
        logging.warning("%s: %d examples have no answer token within data.seq_len=%d and are "
                        "left out", what, int(empty.sum()), seq_len)
    return {"inputs": inputs[~empty], "targets": targets[~empty]}


def _batches(rows: Mapping[str, np.ndarray], seed: int, global_batch: int, process_index: int,
             process_count: int, shuffle: bool) -> grain.MapDataset:
    """Endless batches; batch t is global rows [t*B, (t+1)*B) of epoch-wise permutations of
    the examples, a function of (seed, t) alone, and each process takes its share of it."""
    epochs = Epochs(len(rows["inputs"]), seed=seed, shuffle=shuffle)

    def fetch(t: int, global_rows: np.ndarray) -> Batch:
        _, picked = epochs.locate(global_rows)
        return {k: v[picked] for k, v in rows.items()}

    return endless_batches(fetch, global_batch, process_index, process_count)


@dataclasses.dataclass
class TaskData(BatchData):
    """Rows of fine-tuning examples; a gptjax.data.Data."""

    train_examples: int
    val_examples: int


def build_task_data(config: Config, tokenizer, process_index: int,
                    process_count: int) -> TaskData:
    """The registry's 'task': rows of data.text_file's examples (validation: data.val_text_file,
    else the last data.val_fraction of them), tokenized by `tokenizer`, or by the one
    data.tokenizer names."""
    data = config.data
    task_format(data.task)  # an unknown format fails before any file is read
    if not data.text_file:
        raise ConfigError("data.dataset='task' needs data.text_file: the JSON-lines file(s) of "
                          f"the examples (--config.data.text_file=PATH; formats: {list(TASKS)})")
    train = read_examples(file_paths(data.text_file), data.task)
    if data.val_text_file:
        val = read_examples(file_paths(data.val_text_file), data.task)
    else:
        n_val = int(round(len(train) * data.val_fraction))
        if n_val < 1 or n_val >= len(train):
            raise ConfigError(f"{len(train)} examples and data.val_fraction={data.val_fraction} "
                              "leave no validation or no training example; pass "
                              "data.val_text_file or use more examples")
        train, val = train[:-n_val], train[-n_val:]
    if tokenizer is None:
        corpus = None
        if data.tokenizer == "char":  # every character of the examples
            corpus = "".join(text for ex in train + val for text, _ in ex)
        tokenizer = Tokenizer.from_name(data.tokenizer, corpus=corpus)
    train_rows = to_rows(train, tokenizer, data.seq_len, "data.text_file")
    val_rows = to_rows(val, tokenizer, data.seq_len, "validation examples")
    seed = config.train.seed % 2**32
    train_ds = _batches(train_rows, seed, data.batch_size, process_index, process_count,
                        data.shuffle)
    val_ds = _batches(val_rows, 0, data.batch_size, process_index, process_count, False)
    logging.info("task %r: %d training and %d validation examples", data.task,
                 len(train_rows["inputs"]), len(val_rows["inputs"]))
    return TaskData(tokenizer, iter(train_ds.to_iter_dataset(READ_OPTIONS)), val_ds,
                    tokenizer.vocab_size, len(train_rows["inputs"]), len(val_rows["inputs"]))
