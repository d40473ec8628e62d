"""Multiple-choice accuracy (HellaSwag and the like): the model scores each choice as a
continuation of the context, and the choice it finds likeliest is its answer.

    result = evaluate_file(model, tokenizer, "hellaswag_val.jsonl")
    result["metrics"]   # {'accuracy', 'accuracy_norm', 'accuracy_per_token', 'examples', ...}

A line of the file is HellaSwag's ({"ctx": ..., "endings": [...], "label": i}, as in
hellaswag_val.jsonl) or {"context": ..., "choices": [...], "label": i}. The context and
" " + choice are tokenized separately, as build-nanogpt's hellaswag.py and
lm-evaluation-harness do, and a choice's score is the summed log-probability of its tokens given
the context and its earlier tokens (where context and choice outgrow the model's positions, the
context's first tokens are dropped).
    accuracy            the highest summed log-probability is the label's
    accuracy_norm       the same over each choice's length in characters (lm-evaluation-harness's
                        acc_norm: long choices are not penalised for their length)
    accuracy_per_token  the same over each choice's tokens (build-nanogpt's acc_norm)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from gptjax.data.tasks import IGNORE, padded_batches
from gptjax.model import apply, split
from gptjax.training.checkpoint import load_pretrained
from gptjax.training.steps import cross_entropy_sums

ROUND = 32  # row widths are rounded up to this (fewer compiled shapes)
METRICS = ("accuracy", "accuracy_norm", "accuracy_per_token")


class ChoiceError(ValueError):
    """A choice file that cannot be read: the message names the file, the line and the fix."""


@dataclasses.dataclass(frozen=True)
class Question:
    context: str
    choices: tuple[str, ...]
    label: int


def parse(line: str, where: str) -> Question:
    """One JSON line, HellaSwag's keys or the generic ones; ChoiceError naming `where`."""
    try:
        item = json.loads(line)
    except json.JSONDecodeError as e:
        raise ChoiceError(f"{where} is not JSON ({e.msg})") from None
    if not isinstance(item, dict):
        raise ChoiceError(f"{where} is not a JSON object")
    context, choices = ((item.get("ctx"), item.get("endings")) if "endings" in item
                        else (item.get("context"), item.get("choices")))
    label = item.get("label")
    if isinstance(label, str) and label.isdigit():  # some HellaSwag copies write "0".."3"
        label = int(label)
    if not isinstance(context, str) or not isinstance(choices, list) or len(choices) < 2 \
            or not all(isinstance(c, str) and c.strip() for c in choices):
        raise ChoiceError(f"{where} needs a string 'context' and a list of two or more "
                          "non-empty string 'choices' (HellaSwag's 'ctx' and 'endings')")
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(choices):
        raise ChoiceError(f"{where}: label={label!r} must index its {len(choices)} choices "
                          f"(0 to {len(choices) - 1})")
    return Question(context, tuple(choices), label)


def read_questions(path, max_examples: int | None = None) -> list[Question]:
    """The questions of a JSON-lines file (blank lines skipped), the first max_examples."""
    file = pathlib.Path(path).expanduser()
    if not file.is_file():
        raise ChoiceError(f"{file} {'is a folder' if file.is_dir() else 'does not exist'}; "
                          "give a JSON-lines file of questions, one per line")
    out = []
    with file.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                out.append(parse(line, f"{file}:{number}"))
            if max_examples is not None and len(out) >= max_examples:
                break
    if not out:
        raise ChoiceError(f"{file} holds no questions; give a JSON-lines file, one per line")
    return out


def rows(tokenizer, question: Question, max_len: int) -> list[tuple[list[int], int]]:
    """(tokens, how many of the last ones are the choice's) per choice, at most max_len + 1
    tokens (inputs and targets are the row shifted by one)."""
    context = tokenizer.encode(question.context)
    out = []
    for choice in question.choices:
        ending = tokenizer.encode(" " + choice.strip())
        row = (context + ending)[-(max_len + 1):]
        out.append((row, min(len(ending), len(row) - 1)))
    return out


@functools.partial(jax.jit, static_argnames="graphdef")
def _row_logprobs(graphdef, params, inputs, targets):
    """Each row's summed log-probability of its scored targets (negative: not scored): the
    training loss's summed cross-entropy, row by row."""
    row_sums = jax.vmap(lambda logits, t: cross_entropy_sums(logits[None], t[None])[0])
    return -row_sums(apply(graphdef, params, inputs), targets)


def choice_logprobs(model, tokenized: Sequence[tuple[list[int], int]], batch_size: int = 8,
                    ) -> np.ndarray:
    """Summed log-probability of each (tokens, scored) row's last `scored` tokens."""
    graphdef, params = split(model)
    longest = max(len(t) for t, _ in tokenized) - 1
    width = min(model.cfg.max_len, -(-longest // ROUND) * ROUND)
    rows = [(tokens[:-1], [IGNORE] * (len(tokens) - 1 - scored) + tokens[len(tokens) - scored:])
            for tokens, scored in tokenized]  # the last `scored` targets are the choice's
    # Not read back until the end: the device computes while the host builds the next batch.
    out = [_row_logprobs(graphdef, params, inputs, targets)
           for inputs, targets in padded_batches(rows, batch_size, width)]
    return np.concatenate(jax.device_get(out))[:len(tokenized)].astype(np.float64)


def predictions(logprobs: Sequence[float], lengths: Sequence[int], tokens: Sequence[int],
                ) -> dict[str, int]:
    """The choice each metric picks: the highest summed log-probability, then per character,
    then per token (the first of equal scores)."""
    lp = np.asarray(logprobs, np.float64)
    return {"accuracy": int(np.argmax(lp)),
            "accuracy_norm": int(np.argmax(lp / np.asarray(lengths, np.float64))),
            "accuracy_per_token": int(np.argmax(lp / np.asarray(tokens, np.float64)))}


def tokenize(tokenizer, questions: Sequence[Question], max_len: int) -> list[list[tuple]]:
    """`rows` of every question: what `score` reads, made once for a run's many scorings."""
    return [rows(tokenizer, q, max_len) for q in questions]


def evaluate(model, tokenizer, questions: Sequence[Question], batch_size: int = 8,
             ) -> dict[str, Any]:
    """{'metrics': {accuracy..., 'examples', 'choices'}, 'examples': [{context, choices, label,
    logprobs, predictions}]} of `model` on `questions` (module docstring)."""
    if batch_size < 1:
        raise ChoiceError(f"batch_size={batch_size} must be positive")
    return score(model, questions, tokenize(tokenizer, questions, model.cfg.max_len),
                 batch_size)


def score(model, questions: Sequence[Question], tokenized: Sequence[list[tuple]],
          batch_size: int = 8) -> dict[str, Any]:
    """`evaluate`'s result from the questions' `tokenize`d rows."""
    flat = choice_logprobs(model, [r for q in tokenized for r in q], batch_size)
    examples, correct, start = [], dict.fromkeys(METRICS, 0), 0
    for question, choice_rows in zip(questions, tokenized):
        lp = flat[start:start + len(choice_rows)]
        start += len(choice_rows)
        picks = predictions(lp, [len(c.strip()) for c in question.choices],
                            [max(scored, 1) for _, scored in choice_rows])
        for name, pick in picks.items():
            correct[name] += pick == question.label
        examples.append({"context": question.context, "choices": list(question.choices),
                         "label": question.label, "logprobs": lp.tolist(),
                         "predictions": picks})
    n = len(questions)
    metrics = {name: correct[name] / n for name in METRICS}
    return {"metrics": {**metrics, "examples": n, "choices": len(flat)}, "examples": examples}


def evaluate_checkpoint(checkpoint, data, *, tokenizer=None, max_examples: int | None = None,
                        batch_size: int = 8) -> dict[str, Any]:
    """`evaluate` of GPT.from_pretrained(checkpoint) (a run workdir or a Hugging Face folder)
    with its tokenizer (or the folder `tokenizer` names) on the JSON-lines file `data`."""
    if batch_size < 1 or (max_examples is not None and max_examples < 1):
        raise ChoiceError(f"batch_size={batch_size} and max_examples={max_examples} must be "
                          "positive")
    questions = read_questions(data, max_examples)  # before the model loads
    model, tok = load_pretrained(checkpoint, tokenizer)
    return evaluate(model, tok, questions, batch_size)
