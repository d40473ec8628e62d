"""Multiple-choice accuracy (gptjax.multiple_choice, experiments.multiple_choice): the picks by
hand, each choice's log-probability against one forward per choice and against transformers'
GPT2LMHeadModel where installed, the file formats and their errors, the command end to end."""

import functools
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from gptjax import GPT, Tokenizer
from gptjax import multiple_choice as mc
from gptjax.model import apply, split

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "golden" / "tiny-gpt2"  # a random GPT-2: 2 layers, 64 wide, 128 positions
QUESTIONS = [  # HellaSwag's keys, and the generic ones
    {"ctx": "A man is standing on a ladder. He", "label": 2,
     "endings": ["eats the ladder.", "sings to the moon", "paints the wall.", "x"]},
    {"context": "The capital of France is", "choices": ["Paris", "a small green frog"],
     "label": 0},
    {"ctx": "word " * 200, "endings": ["ends here.", "and more words follow"], "label": 1},
]


@pytest.fixture(scope="module")
def tiny():
    return GPT.from_pretrained(TINY), Tokenizer.from_pretrained(TINY)


def write(path: pathlib.Path, items) -> pathlib.Path:
    path.write_text("".join((i if isinstance(i, str) else json.dumps(i)) + "\n" for i in items))
    return path


@functools.partial(jax.jit, static_argnums=0)
def forward(graphdef, params, tokens):
    """The model's logits, compiled once per length (run eagerly, each op compiled alone for
    every length: 11 s against 2 on a cold cache)."""
    return apply(graphdef, params, tokens)


def reference_logprob(model, tokenizer, context: str, choice: str) -> float:
    """One unpadded forward of context + ' ' + choice, its last tokens kept as the model's
    positions allow; the choice tokens' log-probabilities summed in float64."""
    ending = tokenizer.encode(" " + choice)
    tokens = (tokenizer.encode(context) + ending)[-(model.cfg.max_len + 1):]
    graphdef, params = split(model)
    logits = np.asarray(forward(graphdef, params, np.asarray([tokens[:-1]])),
                        np.float64)[0, :, :model.cfg.vocab_size]
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    n = len(tokens) - 1
    return sum(logp[p, tokens[p + 1]] for p in range(n - min(len(ending), n), n))


def test_the_picks_by_hand():
    # sums -10, -12; per character (2, 10 chars) -5, -1.2; per token (2, 3) -5, -4
    assert mc.predictions([-10.0, -12.0], [2, 10], [2, 3]) == {
        "accuracy": 0, "accuracy_norm": 1, "accuracy_per_token": 1}
    assert mc.predictions([-3.0, -3.0], [1, 1], [1, 1])["accuracy"] == 0  # ties: the first


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_each_choice_scores_as_one_forward_of_it(tiny, tmp_path, batch_size):
    model, tok = tiny
    questions = mc.read_questions(write(tmp_path / "q.jsonl", QUESTIONS))
    result = mc.evaluate(model, tok, questions, batch_size=batch_size)
    for q, row in zip(questions, result["examples"]):
        want = [reference_logprob(model, tok, q.context, c) for c in q.choices]
        np.testing.assert_allclose(row["logprobs"], want, rtol=1e-5)
        assert row["predictions"] == mc.predictions(
            want, [len(c) for c in q.choices],
            [len(tok.encode(" " + c)) for c in q.choices])
    metrics = result["metrics"]
    assert (metrics["examples"], metrics["choices"]) == (3, 8)
    for name in mc.METRICS:
        assert metrics[name] == np.mean([r["predictions"][name] == r["label"]
                                         for r in result["examples"]])


def test_formats_and_their_errors(tmp_path):
    q = mc.read_questions(write(tmp_path / "ok.jsonl", [
        {"ctx": "c", "endings": ["a", "b"], "label": "1"}, "",
        {"context": "c", "choices": ["a", "b", "d"], "label": 2}]), max_examples=None)
    assert [(x.context, x.choices, x.label) for x in q] == [("c", ("a", "b"), 1),
                                                            ("c", ("a", "b", "d"), 2)]
    assert len(mc.read_questions(tmp_path / "ok.jsonl", max_examples=1)) == 1
    bad = {"not-json": ("{", r"bad\.jsonl:1 is not JSON"),
           "one-choice": ({"context": "c", "choices": ["a"], "label": 0},
                          r"bad\.jsonl:1 needs .* two or more"),
           "empty-choice": ({"context": "c", "choices": ["a", " "], "label": 0}, r"non-empty"),
           "label-out-of-range": ({"ctx": "c", "endings": ["a", "b"], "label": 2},
                                  r"label=2 must index its 2 choices \(0 to 1\)"),
           "no-label": ({"ctx": "c", "endings": ["a", "b"]}, r"label=None"),
           "bool-label": ({"ctx": "c", "endings": ["a", "b"], "label": True}, r"label=True")}
    for name, (line, pattern) in bad.items():
        with pytest.raises(mc.ChoiceError, match=pattern):
            mc.read_questions(write(tmp_path / "bad.jsonl", [line]))
    with pytest.raises(mc.ChoiceError, match="holds no questions"):
        mc.read_questions(write(tmp_path / "blank.jsonl", ["", " "]))
    with pytest.raises(mc.ChoiceError, match=r"none\.jsonl does not exist"):
        mc.read_questions(tmp_path / "none.jsonl")
    with pytest.raises(mc.ChoiceError, match=r"is a folder"):
        mc.read_questions(tmp_path)


def test_the_command_prints_and_writes_the_librarys_result(tiny, tmp_path):
    data = write(tmp_path / "q.jsonl", QUESTIONS)
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.multiple_choice", f"--checkpoint={TINY}",
         f"--data={data}", "--max_examples=2", f"--out={tmp_path / 'r.json'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["metrics"] == printed and printed["examples"] == 2
    model, tok = tiny
    expected = mc.evaluate(model, tok, mc.read_questions(data, 2))
    for got, want in zip(written["examples"], expected["examples"]):
        np.testing.assert_allclose(got["logprobs"], want["logprobs"], rtol=1e-6)
        assert got["predictions"] == want["predictions"]


def test_against_transformers_own_model(tiny, tmp_path):
    torch = pytest.importorskip("torch")
    os.environ["HF_HUB_OFFLINE"] = "1"
    transformers = pytest.importorskip("transformers")
    model, tok = tiny
    hf = transformers.GPT2LMHeadModel.from_pretrained(TINY).eval()
    result = mc.evaluate(model, tok, mc.read_questions(write(tmp_path / "q.jsonl", QUESTIONS)))
    for q, row in zip(QUESTIONS, result["examples"]):
        context = q.get("ctx", q.get("context"))
        for choice, got in zip(q.get("endings", q.get("choices")), row["logprobs"]):
            ending = tok.encode(" " + choice)
            tokens = torch.tensor([(tok.encode(context) + ending)[-129:]])
            with torch.no_grad():  # 128 positions: the last token is only a target
                logp = torch.log_softmax(hf(tokens[:, :-1]).logits[0].double(), -1)
            want = logp[-len(ending):].gather(1, tokens[0, -len(ending):, None]).sum().item()
            assert got == pytest.approx(want, rel=1e-5)


# ---- during training (train.choice_file) -------------------------------------------------------

def tiny_run_config(tmp_path, **train):
    from gptjax.config import default_config

    text = "the cat sat on the mat. the dog ate the log. " * 60
    (tmp_path / "text.txt").write_text(text)
    c = default_config()
    c.model.update(num_layers=1, num_heads=2, d_model=16, max_len=32)
    c.data.update(dataset="text_file", text_file=str(tmp_path / "text.txt"), tokenizer="char",
                  data_dir=str(tmp_path / "tfds"), seq_len=32, batch_size=8)
    c.train.update(num_steps=4, eval_every=4, eval_steps=1, checkpoint_every=4,
                   sample_tokens=0, **train)
    return c


@pytest.mark.parametrize("mesh", [{}, {"data": 2, "fsdp": 2, "tensor": 2},
                                  {"strategy": "pmap"}], ids=["dp", "dp-fsdp-tp", "pmap"])
def test_training_scores_the_choice_file_at_its_period(tmp_path, mesh):
    from gptjax.training.loop import train

    data = write(tmp_path / "q.jsonl", [
        {"context": "the cat sat on the", "choices": ["mat.", "dog", "log."], "label": 0},
        {"context": "the dog ate the", "choices": ["cat", "log."], "label": 1},
        {"context": "the", "choices": ["mat.", "sat on"], "label": 1}])
    c = tiny_run_config(tmp_path, choice_file=str(data), choice_every=2, choice_examples=2)
    c.mesh.update(mesh)  # the scores come from sharded (or replicated) params
    final = train(c, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    scored = [r for r in rows if "choice_accuracy" in r]
    assert [r["step"] for r in scored] == [2, 4]
    model = GPT.from_pretrained(tmp_path / "run")  # the step-4 weights
    want = mc.evaluate(model, Tokenizer.from_pretrained(tmp_path / "run"),
                       mc.read_questions(data, 2))["metrics"]
    for name in mc.METRICS:
        assert scored[-1][f"choice_{name}"] == final[f"choice_{name}"] == want[name]


@pytest.mark.parametrize("lines,pattern", [
    (None, r"train\.choice_file: .*none\.jsonl does not exist"),
    ([{"context": "the cat", "choices": ["sat", "☃"], "label": 0}],
     r"train\.choice_file=.*character '☃'"),
    ([{"context": "the cat", "choices": ["sat"], "label": 0}], r"q\.jsonl:1 needs"),
])
def test_a_choice_file_the_run_cannot_score_stops_it_before_it_trains(tmp_path, lines, pattern):
    from gptjax.config import ConfigError
    from gptjax.training.loop import train

    path = tmp_path / "none.jsonl" if lines is None else write(tmp_path / "q.jsonl", lines)
    with pytest.raises(ConfigError, match=pattern):
        train(tiny_run_config(tmp_path, choice_file=str(path)), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists() or not list(
        (tmp_path / "run" / "checkpoints").iterdir())
