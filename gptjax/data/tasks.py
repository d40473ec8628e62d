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

One example per row by default: rows are padded with IGNORE targets, and an example longer
than seq_len+1 tokens is cut at the end (counted and logged). With data.pack=True several
examples share a row (first fit, in an order drawn once from train.seed when data.shuffle, else
the files' order; the validation rows in the files' order), none split across rows: each example
is a segment with positions from 0 (batches carry 'segment_ids' and 'positions', as packed
documents do, so attention stays within the example), and the padding after a row's last example
is one more segment, never scored. Every example is in exactly one row, and each epoch shuffles
the rows, so an epoch holds every example once.
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
# The transcript chat prompts with, and its ids as chat encodes them.
from gptjax.generation.chat import dialogue_segments, encode_segments
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


def reply_questions(examples: Sequence[Mapping[str, Any]], num_choices: int = 4,
                    seed: int = 0) -> list[dict[str, Any]]:
    """Multiple-choice questions (gptjax.multiple_choice's format) from dialogue examples: the
    transcript up to the last 'Assistant:' as the context, the true last reply among
    num_choices - 1 last replies of other examples (distinct texts), in a seeded random order."""
    replies = [e["messages"][-1]["content"].strip() for e in examples]
    if len(set(replies)) < num_choices:
        raise ValueError(f"{len(set(replies))} distinct replies cannot make questions of "
                         f"{num_choices} choices; give more dialogues or fewer choices")
    rng = np.random.default_rng(seed)
    questions = []
    for i, example in enumerate(examples):
        messages = example["messages"]
        if messages[-1].get("role") != "assistant":
            raise ValueError(f"dialogue {i} does not end with the assistant's reply")
        context = "".join(t for t, _ in dialogue_segments(messages[:-1], f"dialogue {i}",
                                                          reply=True))
        others: list[str] = []
        while len(others) < num_choices - 1:
            other = replies[int(rng.integers(len(replies)))]
            if other != replies[i] and other not in others:
                others.append(other)
        label = int(rng.integers(num_choices))
        choices = others[:label] + [replies[i]] + others[label:]
        questions.append({"context": context, "choices": choices, "label": label})
    return questions


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


def write_examples(path: str | pathlib.Path, examples: Sequence[Mapping[str, Any]]) -> None:
    """One JSON object per line: the files read_examples (and gptjax.multiple_choice) read."""
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(e) + "\n" for e in examples)


def encode_rows(examples, tokenizer, seq_len: int, what: str) -> list[tuple[np.ndarray,
                                                                           np.ndarray]]:
    """(inputs, targets) int32 of each example that keeps a scored token within seq_len: its
    tokens but the last, and the next tokens where they are written (IGNORE elsewhere)."""
    encoded, cut = [], 0
    for segments in examples:
        ids, scored = encode_segments(segments, tokenizer)
        cut += len(ids) > seq_len + 1
        ids, scored = ids[:seq_len + 1], scored[:seq_len + 1]
        encoded.append((ids[:-1].astype(np.int32),
                        np.where(scored[1:], ids[1:], IGNORE).astype(np.int32)))
    if cut:
        logging.warning("%s: %d of %d examples are longer than data.seq_len+1=%d tokens and "
                        "were cut at the end", what, cut, len(examples), seq_len + 1)
    kept = [(x, y) for x, y in encoded if (y >= 0).any()]
    if not kept:
        raise ConfigError(f"{what}: no example keeps a scored token within data.seq_len="
                          f"{seq_len}; raise data.seq_len or shorten the prompts")
    if len(kept) < len(encoded):
        logging.warning("%s: %d examples have no answer token within data.seq_len=%d and are "
                        "left out", what, len(encoded) - len(kept), seq_len)
    return kept


def padded_batches(rows: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int,
                   width: int):
    """(inputs, targets), each [batch_size, width] int32, per batch_size of `rows`, each an
    (inputs, targets) pair of one sequence: the scorers' batches (checkpoint evaluations).
    Inputs pad with 0 and targets with IGNORE, so padding, rows included, scores nothing."""
    for start in range(0, len(rows), batch_size):
        inputs = np.zeros((batch_size, width), np.int32)
        targets = np.full((batch_size, width), IGNORE, np.int32)
        for row, (x, y) in enumerate(rows[start:start + batch_size]):
            inputs[row, :len(x)] = x
            targets[row, :len(y)] = y
        yield inputs, targets


def _pad(tokenizer) -> int:
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0


def one_per_row(encoded, seq_len: int, pad: int) -> dict[str, np.ndarray]:
    """{'inputs', 'targets'}: int32 [examples, seq_len] of encode_rows' examples, padded."""
    inputs = np.full((len(encoded), seq_len), pad, np.int32)
    targets = np.full((len(encoded), seq_len), IGNORE, np.int32)
    for row, (x, y) in enumerate(encoded):
        inputs[row, :len(x)], targets[row, :len(y)] = x, y
    return {"inputs": inputs, "targets": targets}


def to_rows(examples, tokenizer, seq_len: int, what: str) -> dict[str, np.ndarray]:
    """{'inputs', 'targets'}: int32 [examples, seq_len], one example per row."""
    return one_per_row(encode_rows(examples, tokenizer, seq_len, what), seq_len, _pad(tokenizer))


def first_fit(lengths: Sequence[int], capacity: int, order: Sequence[int]) -> list[list[int]]:
    """The items of each row: items taken in `order`, each into the first row with room for it
    (a new row when none has); items keep that order within a row."""
    free = np.empty(len(lengths), np.int64)  # at most one row per item
    rows: list[list[int]] = []
    for item in order:
        fits = np.flatnonzero(free[:len(rows)] >= lengths[item])
        if len(fits):
            row = int(fits[0])
        else:
            row, free[len(rows)] = len(rows), capacity
            rows.append([])
        rows[row].append(item)
        free[row] -= lengths[item]
    return rows


def packed_rows(encoded, seq_len: int, pad: int, seed: int | None) -> dict[str, np.ndarray]:
    """{'inputs', 'targets', 'segment_ids', 'positions'}: int32 [rows, seq_len], several of
    encode_rows' examples per row, first fit in the order of a permutation drawn from `seed`
    (the files' order when None). Example k of a row has segment id k and positions from 0, so
    it attends to itself alone; the padding after the last is one more segment, not scored."""
    order = (np.arange(len(encoded)) if seed is None
             else np.random.default_rng(seed).permutation(len(encoded)))
    rows = first_fit([len(x) for x, _ in encoded], seq_len, order)
    out = {"inputs": np.full((len(rows), seq_len), pad, np.int32),
           "targets": np.full((len(rows), seq_len), IGNORE, np.int32),
           "segment_ids": np.zeros((len(rows), seq_len), np.int32),
           "positions": np.zeros((len(rows), seq_len), np.int32)}
    for r, items in enumerate(rows):
        start = 0
        for k, item in enumerate(items):
            x, y = encoded[item]
            end = start + len(x)
            out["inputs"][r, start:end], out["targets"][r, start:end] = x, y
            out["segment_ids"][r, start:end] = k
            out["positions"][r, start:end] = np.arange(len(x))
            start = end
        out["segment_ids"][r, start:] = len(items)
        out["positions"][r, start:] = np.arange(seq_len - start)
    return out


def pack_rows(examples, tokenizer, seq_len: int, what: str,
              seed: int | None = None) -> dict[str, np.ndarray]:
    """The examples' rows as data.pack=True lays them out (packed_rows)."""
    return packed_rows(encode_rows(examples, tokenizer, seq_len, what), seq_len,
                       _pad(tokenizer), seed)


@dataclasses.dataclass(frozen=True)
class Rows:
    """A split's rows and what they hold: examples, rows, and the examples' tokens (the rest of
    rows x seq_len is padding)."""

    arrays: dict[str, np.ndarray]
    examples: int
    tokens: int

    @property
    def rows(self) -> int:
        return len(self.arrays["inputs"])


def split_rows(examples, tokenizer, data, what: str, seed: int | None) -> Rows:
    """The rows of one split as data.pack asks: packed (first fit, `seed`'s order) or one
    example per row."""
    encoded = encode_rows(examples, tokenizer, data.seq_len, what)
    pad = _pad(tokenizer)
    arrays = (packed_rows(encoded, data.seq_len, pad, seed) if data.pack
              else one_per_row(encoded, data.seq_len, pad))
    return Rows(arrays, len(encoded), sum(len(x) for x, _ in encoded))


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
    train_rows: int  # = the examples, unless data.pack
    val_rows: int
    train_tokens: int  # the examples' tokens in the rows; the rest of rows x seq_len is padding
    val_tokens: int


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
    seed = config.train.seed % 2**32
    # Packed, the rows are drawn once (from the seed when shuffling) and each epoch shuffles them.
    train_rows = split_rows(train, tokenizer, data, "data.text_file",
                            seed if data.shuffle else None)
    val_rows = split_rows(val, tokenizer, data, "validation examples", None)
    train_ds = _batches(train_rows.arrays, seed, data.batch_size, process_index, process_count,
                        data.shuffle)
    val_ds = _batches(val_rows.arrays, 0, data.batch_size, process_index, process_count, False)
    logging.info("task %r: %d training and %d validation examples in %d and %d rows of %d "
                 "tokens, %.0f%% of them the examples' (data.pack=%s)", data.task,
                 train_rows.examples, val_rows.examples, train_rows.rows, val_rows.rows,
                 data.seq_len, 100 * train_rows.tokens / (train_rows.rows * data.seq_len),
                 data.pack)
    return TaskData(tokenizer, iter(train_ds.to_iter_dataset(READ_OPTIONS)), val_ds,
                    tokenizer.vocab_size, train_rows.examples, val_rows.examples,
                    train_rows.rows, val_rows.rows, train_rows.tokens, val_rows.tokens)
