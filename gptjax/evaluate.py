"""Task metrics of a checkpoint on a fine-tuning task file (the formats of gptjax.data.tasks).

    result = evaluate_checkpoint("runs/qa", "val.jsonl", "qa", max_new_tokens=16)
    result["metrics"]   # {'answer_loss', 'perplexity', 'exact_match', 'f1', ...}

Each example splits into a prompt, the unwritten context up to its first written segment, and
a reference, that written segment (dialogue: the transcript before the LAST assistant turn, and
that turn; earlier assistant turns stay in the prompt as training saw them, each ending with
eos). The prompt is tokenized segment by segment exactly as in training, the model continues it
(greedy unless the options say otherwise) until eos, a newline for the one-line tasks (qa,
translation, dialogue), or max_new_tokens, and the output is scored against the reference:
    every task   answer_loss: mean cross-entropy over the written tokens, teacher-forced, with
                 the training loss mask (every written token, eos included, weighted alike);
                 perplexity = exp(answer_loss)
    qa           exact_match, f1: SQuAD v1.1's (lower-case, no punctuation, no articles a/an/the,
                 single spaces), averaged over the examples, in percent
    translation  bleu, chrf: sacrebleu's corpus scores (0..100)
    completion, dialogue  chrf, bleu: a rough similarity of output and reference
An example whose whole text (prompt and reference) does not fit the model's context is skipped
from every metric and counted ('skipped'); outputs stop at max_new_tokens or where the context
ends, whichever comes first.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
import pathlib
import re
import string
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import sacrebleu
from absl import logging

from gptjax.config import ConfigError
from gptjax.data import tasks
from gptjax.generation import GenerationConfig, generate
from gptjax.generation.chat import encode_segments
from gptjax.generation.text import defaults_for
from gptjax.model import apply, split
from gptjax.training.checkpoint import load_pretrained
from gptjax.training.steps import cross_entropy_sums

TASK_METRICS = {"qa": ("exact_match", "f1"), "translation": ("bleu", "chrf"),
                "completion": ("chrf", "bleu"), "dialogue": ("chrf", "bleu")}
LOSS_METRICS = ("answer_loss", "perplexity")
ONE_LINE = ("qa", "translation", "dialogue")  # outputs end at a newline as their references do
MAX_NEW_TOKENS = 64  # default generation budget


class EvaluationError(ValueError):
    """Bad evaluation input (unknown task, no usable example, bad options)."""


# ---- metrics -----------------------------------------------------------------------------------

def normalize_answer(text: str) -> str:
    """SQuAD v1.1's normalisation: lower-case, no punctuation, no articles, single spaces."""
    text = "".join(c for c in text.lower() if c not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised strings are equal (SQuAD v1.1), else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD v1.1's token F1 of the normalised strings' bags of words."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    same = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def bleu(outputs: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu's corpus BLEU (0..100), one reference per output."""
    return float(sacrebleu.corpus_bleu(list(outputs), [list(references)]).score)


def chrf(outputs: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu's corpus chrF (0..100), one reference per output."""
    return float(sacrebleu.corpus_chrf(list(outputs), [list(references)]).score)


def text_metrics(task: str, outputs: Sequence[str], references: Sequence[str]) -> dict:
    """The task's metrics of `outputs` against `references` (TASK_METRICS)."""
    if task == "qa":
        n = max(len(outputs), 1)
        return {"exact_match": 100 * sum(map(exact_match, outputs, references)) / n,
                "f1": 100 * sum(map(token_f1, outputs, references)) / n}
    return {"bleu": bleu(outputs, references), "chrf": chrf(outputs, references)}


# ---- examples ----------------------------------------------------------------------------------

@dataclasses.dataclass
class Example:
    prompt: str  # the text the model continues
    reference: str  # the written segment it should produce, stripped
    prompt_ids: list[int]  # tokenized as training tokenizes it (segment by segment)
    ids: np.ndarray  # the whole example's tokens, for the answer loss
    scored: np.ndarray  # which of them are written (the training loss mask)


def split_example(task: str, segments: Sequence[tasks.Segment]) -> tuple[list, str]:
    """(prompt segments, reference text): up to the first written segment (dialogue: the last)."""
    written = [i for i, (_, w) in enumerate(segments) if w]
    cut = written[-1] if task == "dialogue" else written[0]
    return list(segments[:cut]), segments[cut][0].strip()


def read_task_file(path, task: str, tokenizer, max_examples: int | None = None) -> list[Example]:
    """The examples of a JSON-lines task file, split and tokenized; errors name file and line."""
    if task not in tasks.TASKS:
        raise EvaluationError(f"task {task!r} is unknown; allowed: {list(tasks.TASKS)}")
    file = pathlib.Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"data file {file} does not exist; give a JSON-lines file of "
                                f"{task!r} examples")
    try:
        rendered = tasks.read_examples([str(file)], task)
    except ConfigError as e:
        raise ConfigError(f"{e}{_other_format(file, task)}") from None
    out = []
    for segments in rendered[:max_examples]:
        prompt, reference = split_example(task, segments)
        ids, scored = encode_segments(segments, tokenizer)
        out.append(Example("".join(t for t, _ in prompt), reference,
                           encode_segments(prompt, tokenizer)[0].tolist(), ids, scored))
    return out


def _other_format(file: pathlib.Path, task: str) -> str:
    """'; it reads as --task=X' when the file's examples are of another task's format."""
    for other in tasks.TASKS:
        try:
            if other != task and tasks.read_examples([str(file)], other):
                return f"; the file reads as --task={other}"
        except ConfigError:
            continue
    return ""


def fits(example: Example, max_len: int) -> bool:
    """Whether the example's whole text fits the context (as training needs) and its prompt
    leaves room for an output."""
    return 0 < len(example.prompt_ids) < max_len and len(example.ids) <= max_len + 1


# ---- answer loss -------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames="graphdef")
def loss_sums(graphdef, params, inputs, targets):
    """(summed cross-entropy, count) of the scored targets (negative: not scored): the training
    loss's numerator and denominator."""
    ce, _, count = cross_entropy_sums(apply(graphdef, params, inputs), targets)
    return ce, count


def loss_totals(model, batches) -> tuple[float, float]:
    """(summed cross-entropy, scored tokens) of `model` over (inputs, targets) batches, summed
    in their order in float64. Each batch computes while the one before is read back and the
    next one is built: the device never waits on the host between batches."""
    graphdef, params = split(model)
    total, count, in_flight = 0.0, 0.0, []
    for inputs, targets in batches:
        in_flight.append(loss_sums(graphdef, params, inputs, targets))  # dispatched, not read
        if len(in_flight) == 2:
            ce, n = in_flight.pop(0)
            total, count = total + float(ce), count + float(n)
    for ce, n in in_flight:
        total, count = total + float(ce), count + float(n)
    return total, count


def answer_loss(model, examples: Sequence[Example], batch_size: int = 8) -> float:
    """Mean cross-entropy over every written token of `examples` (teacher-forced)."""
    width = min(model.cfg.max_len, -(-max(len(e.ids) - 1 for e in examples) // 32) * 32)
    rows = [(e.ids[:-1], np.where(e.scored[1:], e.ids[1:], tasks.IGNORE)) for e in examples]
    total, count = loss_totals(model, tasks.padded_batches(rows, batch_size, width))
    return total / max(count, 1.0)


# ---- generation --------------------------------------------------------------------------------

def generation_options(model, tokenizer, task: str, options: dict[str, Any]) -> dict[str, Any]:
    """generate's options: the checkpoint's defaults, greedy, `options` over them, and the
    task's stop tokens (eos, and a one-token newline for the one-line tasks)."""
    for name in ("max_length", "min_length"):  # a batch's prompts differ in length
        if options.get(name) is not None:
            raise EvaluationError(f"{name} counts the prompt, whose length differs between "
                                  f"examples; give {name.replace('length', 'new_tokens')}")
    options = {**defaults_for(model, tokenizer), "do_sample": False,
               "max_new_tokens": MAX_NEW_TOKENS, **options}
    if options.get("num_return_sequences", 1) != 1:
        raise EvaluationError("evaluation scores one output per example: leave "
                              "num_return_sequences at 1")
    eos = options.get("eos_token_id")
    stops = [] if eos is None else np.atleast_1d(eos).tolist()
    newline = tokenizer.encode("\n")
    if task in ONE_LINE and len(newline) == 1:
        stops += newline
    options["eos_token_id"] = stops or None
    GenerationConfig.build({}, options)  # a bad option fails before any work
    return options


def generate_outputs(model, tokenizer, task: str, examples: Sequence[Example],
                     options: dict[str, Any], batch_size: int = 8) -> list[str]:
    """The model's output for each example's prompt, cut at the task's natural end."""
    outputs = []
    for start in range(0, len(examples), batch_size):
        batch = [e.prompt_ids for e in examples[start:start + batch_size]]
        width = max(map(len, batch))
        # At most the room the context leaves after the longest prompt: every reference fits
        # there, since each example fits whole.
        budget = min(options["max_new_tokens"], model.cfg.max_len - width)
        rows = generate(model, batch if len(batch) > 1 else batch[0],
                        **{**options, "max_new_tokens": budget})
        stops = set(np.atleast_1d(options["eos_token_id"] or []).tolist())
        for row in np.asarray(rows):
            new = row[width:].tolist()
            end = next((j for j, t in enumerate(new) if t in stops or t < 0), len(new))
            text = tokenizer.decode(new[:end], skip_special_tokens=True)
            outputs.append((text.split("\n")[0] if task in ONE_LINE else text).strip())
    return outputs


# ---- the whole evaluation ----------------------------------------------------------------------

def evaluate(model, tokenizer, data, task: str, *, max_examples: int | None = None,
             batch_size: int = 8, **options) -> dict[str, Any]:
    """{'metrics': {...}, 'examples': [{'prompt', 'reference', 'output', ...}]} of `model` on
    the task file `data` (module docstring); options are generate's."""
    if batch_size < 1 or (max_examples is not None and max_examples < 1):
        raise EvaluationError(f"batch_size={batch_size} and max_examples={max_examples} must "
                              "be positive")
    examples = read_task_file(data, task, tokenizer, max_examples)
    options = generation_options(model, tokenizer, task, options)
    kept = [e for e in examples if fits(e, model.cfg.max_len)]
    skipped = len(examples) - len(kept)
    if not kept:
        raise EvaluationError(
            f"none of the {len(examples)} examples of {data} fits the model's "
            f"{model.cfg.max_len}-token context (prompt and reference); give shorter examples "
            "or a model with a longer context")
    if skipped:
        logging.warning("%d of %d examples do not fit the model's %d-token context (prompt "
                        "and reference) and are skipped", skipped, len(examples),
                        model.cfg.max_len)
    loss = answer_loss(model, kept, batch_size)
    outputs = generate_outputs(model, tokenizer, task, kept, options, batch_size)
    references = [e.reference for e in kept]
    metrics = {"task": task, "examples": len(kept), "skipped": skipped,
               "answer_loss": loss, "perplexity": math.exp(min(loss, 700.0)),
               **text_metrics(task, outputs, references)}
    rows = [{"prompt": e.prompt, "reference": e.reference, "output": o}
            for e, o in zip(kept, outputs)]
    if task == "qa":
        for row in rows:
            row.update(exact_match=100 * exact_match(row["output"], row["reference"]),
                       f1=100 * token_f1(row["output"], row["reference"]))
    return {"metrics": metrics, "examples": rows}


def evaluate_checkpoint(checkpoint, data, task: str, *, tokenizer=None,
                        **kwargs) -> dict[str, Any]:
    """`evaluate` on GPT.from_pretrained(checkpoint) (a run workdir or a Hugging Face folder)
    with its tokenizer (or the folder `tokenizer` names)."""
    model, tok = load_pretrained(checkpoint, tokenizer)
    return evaluate(model, tok, data, task, **kwargs)


def write_results(result: dict[str, Any], out) -> pathlib.Path:
    """`result` as JSON at `out`, and its metrics and examples as a Markdown table beside it."""
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    metrics = result["metrics"]
    cell = lambda s: str(s).replace("|", "\\|").replace("\n", "<br>")  # noqa: E731
    names = [k for k in metrics if isinstance(metrics[k], (int, float))]
    lines = [f"# Evaluation: {metrics['task']}", "", "| " + " | ".join(names) + " |",
             "|---" * len(names) + "|",
             "| " + " | ".join(_number(metrics[k]) for k in names) + " |", "",
             "| # | prompt | reference | output |", "|---|---|---|---|"]
    lines += [f"| {i} | {cell(r['prompt'])} | {cell(r['reference'])} | {cell(r['output'])} |"
              for i, r in enumerate(result["examples"])]
    table = out.with_suffix(".md") if out.suffix != ".md" else out.with_name(out.name + ".md")
    table.write_text("\n".join(lines) + "\n")
    return out


def _number(value) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4f}"
