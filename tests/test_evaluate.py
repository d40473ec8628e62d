"""Task metrics (gptjax.evaluate, experiments.evaluate): SQuAD EM/F1, BLEU and chrF against
values derived by hand, the answer loss against the model's own logits, the command end to end
on a tiny fine-tuned run, and the ablation runner's evaluate hook."""

import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
import sacrebleu

from gptjax import GPT, Tokenizer, ablate
from gptjax import evaluate as ev
from gptjax.data import tasks
from gptjax.training.loop import train

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "golden" / "tiny-gpt2"  # a random GPT-2: 2 layers, 64 wide, vocab 320
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def qa_examples(n):
    return [{"question": f"What comes after {WORDS[i % 9]}?", "answer": WORDS[i % 9 + 1]}
            for i in range(n)]


def write_jsonl(path: pathlib.Path, examples) -> str:
    path.write_text("".join(json.dumps(e) + "\n" for e in examples))
    return str(path)


# ---- metrics, by hand ------------------------------------------------------------------------

def test_squad_normalisation_exact_match_and_f1():
    assert ev.normalize_answer("  The Cat,  sat!  ") == "cat sat"
    assert ev.normalize_answer("An apple a day") == "apple day"
    assert ev.normalize_answer("theatre") == "theatre"  # articles only as whole words
    assert ev.exact_match("the Cat.", "cat") == 1.0
    assert ev.exact_match("cat s", "cats") == 0.0
    # pred {cat, sat, on, mat}, ref {cat, sat}: P = 2/4, R = 2/2, F1 = 2PR/(P+R) = 2/3
    assert ev.token_f1("The cat sat on a mat", "a cat sat") == pytest.approx(2 / 3)
    assert ev.token_f1("cat cat", "cat") == pytest.approx(2 / 3)  # a bag: one match counted
    assert ev.token_f1("dog", "cat") == 0.0
    assert ev.token_f1("", "cat") == 0.0
    # averaged over examples, in percent: EM (1 + 0) / 2, F1 (1 + 0) / 2
    assert ev.text_metrics("qa", ["cat", "dog"], ["The cat", "cow"]) == {
        "exact_match": 50.0, "f1": 50.0}


def test_bleu_and_chrf_by_hand_and_against_sacrebleu():
    ref = "the cat sat on a mat"
    assert ev.bleu([ref], [ref]) == pytest.approx(100.0)
    assert ev.chrf([ref], [ref]) == pytest.approx(100.0)
    assert ev.bleu(["dog ran far away quickly"], [ref]) == 0.0
    assert ev.chrf(["xyz"], ["qqq"]) == 0.0
    # "the cat sat on the mat" vs ref: n-gram precisions 5/6, 3/5, 2/4, 1/3, equal lengths
    # (brevity penalty 1), so BLEU = 100 * (5/6 * 3/5 * 2/4 * 1/3) ** (1/4) = 100 * (1/12)**0.25
    assert ev.bleu(["the cat sat on the mat"], [ref]) == pytest.approx(100 * (1 / 12) ** 0.25)
    outs, refs = ["Bonjour le monde", "Il fait beau"], ["Bonjour tout le monde", "Il pleut"]
    assert ev.bleu(outs, refs) == pytest.approx(sacrebleu.corpus_bleu(outs, [refs]).score)
    assert ev.chrf(outs, refs) == pytest.approx(sacrebleu.corpus_chrf(outs, [refs]).score)
    assert set(ev.text_metrics("translation", outs, refs)) == {"bleu", "chrf"}


def test_prompt_and_reference_of_each_format():
    qa = tasks.render("qa", {"question": "Q?", "answer": " A ", "context": "C."})
    assert ev.split_example("qa", qa) == ([("Context: C.\nQuestion: Q?\nAnswer:", False)], "A")
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "See you."}]
    prompt, reference = ev.split_example("dialogue", tasks.render("dialogue",
                                                                  {"messages": messages}))
    assert "".join(t for t, _ in prompt) == "User: Hi\nAssistant: Hello.\nUser: Bye\nAssistant:"
    assert reference == "See you."


# ---- answer loss -------------------------------------------------------------------------------

def test_answer_loss_is_the_mean_cross_entropy_of_the_written_tokens(tmp_path, fast_compiles):
    model, tokenizer = GPT.from_pretrained(TINY), Tokenizer.from_pretrained(TINY)
    data = write_jsonl(tmp_path / "qa.jsonl", [
        {"question": "What comes after two?", "answer": "three"},
        {"question": "Who?", "answer": "a much longer answer than the first", "context": "x"}])
    examples = ev.read_task_file(data, "qa", tokenizer)
    by_hand_sum, by_hand_count = 0.0, 0
    for e in examples:
        logits = np.asarray(model(e.ids[None, :-1].astype(np.int32))[0], np.float64)
        top = logits.max(-1, keepdims=True)
        logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
        positions = np.flatnonzero(e.scored[1:])  # the answer's tokens and its eos
        assert len(positions) == len(tokenizer.encode(" " + e.reference)) + 1
        by_hand_sum -= logp[positions, e.ids[1:][positions]].sum()
        by_hand_count += len(positions)
    # token-weighted over both examples, as the training loss is over a batch
    assert ev.answer_loss(model, examples) == pytest.approx(by_hand_sum / by_hand_count,
                                                            rel=1e-5)
    assert ev.answer_loss(model, examples, batch_size=1) == pytest.approx(
        by_hand_sum / by_hand_count, rel=1e-5)


# ---- a tiny fine-tuned run, the command, the ablation hook ----------------------------------

@pytest.fixture(scope="module")
def qa_run(tmp_path_factory, fast_compiles):
    tmp = tmp_path_factory.mktemp("evaluate")
    cfg = {
        "model": dict(vocab_size=0, max_len=64, num_layers=1, num_heads=2, d_model=32),
        "data": dict(dataset="task", task="qa", tokenizer="init_from", seq_len=32,
                     batch_size=8, val_fraction=0.25,
                     text_file=write_jsonl(tmp / "train.jsonl", qa_examples(64))),
        "optim": dict(lr=3e-3, min_lr=3e-4, warmup_steps=2, weight_decay=0.0),
        "train": dict(num_steps=12, log_every=6, eval_every=12, eval_steps=1,
                      checkpoint_every=12, sample_tokens=0, init_from=str(TINY)),
    }
    final = train(cfg, tmp / "run")
    return dict(tmp=tmp, workdir=tmp / "run", final=final,
                data=write_jsonl(tmp / "val.jsonl", qa_examples(9)))


def test_command_writes_metrics_and_examples(qa_run):
    out = qa_run["tmp"] / "eval" / "qa.json"
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1",
           "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}  # a tiny model: compiling dominates
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.evaluate", f"--checkpoint={qa_run['workdir']}",
         f"--data={qa_run['data']}", "--task=qa", f"--out={out}", "--max_examples=6",
         "--max_new_tokens=4", "--batch_size=4"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    saved = json.loads(out.read_text())
    assert saved["metrics"] == printed
    assert printed["examples"] == 6 and printed["skipped"] == 0
    assert printed["perplexity"] == pytest.approx(math.exp(printed["answer_loss"]))
    rows = saved["examples"]
    assert [r["reference"] for r in rows] == [e["answer"] for e in qa_examples(6)]
    assert rows[2]["prompt"] == "Question: What comes after two?\nAnswer:"
    assert all("\n" not in r["output"] for r in rows)  # one-line answers stop at a newline
    # the per-example scores average to the printed ones
    assert np.mean([r["f1"] for r in rows]) == pytest.approx(printed["f1"])
    assert np.mean([r["exact_match"] for r in rows]) == pytest.approx(printed["exact_match"])
    # fine-tuning taught the answers: its answer loss is far below the pretrained model's
    base = ev.answer_loss(GPT.from_pretrained(TINY), ev.read_task_file(
        qa_run["data"], "qa", Tokenizer.from_pretrained(TINY), max_examples=6))
    assert printed["answer_loss"] < base - 1.0
    table = out.with_suffix(".md").read_text()
    assert "| prompt | reference | output |" in table and "What comes after two?" in table


def test_examples_that_do_not_fit_are_skipped_and_counted(tmp_path):
    tokenizer = Tokenizer.from_pretrained(TINY)  # the tiny GPT-2's context: 128 tokens
    data = write_jsonl(tmp_path / "qa.jsonl", qa_examples(2) + [
        {"question": "word " * 120, "answer": "x"}])
    examples = ev.read_task_file(data, "qa", tokenizer)
    assert [ev.fits(e, 128) for e in examples] == [True, True, False]
    whole = len(examples[0].ids)  # prompt + reference + eos, inputs and targets one apart
    assert ev.fits(examples[0], whole - 1) and not ev.fits(examples[0], whole - 2)
    assert not ev.fits(examples[0], len(examples[0].prompt_ids))  # no room for an output
    long_only = write_jsonl(tmp_path / "long.jsonl", [{"question": "word " * 120, "answer": "x"}])
    with pytest.raises(ev.EvaluationError, match="none of the 1 examples .* context"):
        ev.evaluate_checkpoint(TINY, long_only, "qa")


def test_ablation_sweep_tabulates_the_evaluated_metrics(qa_run, tmp_path):
    def trained(config, workdir):  # the fixture's run stands for each run's training
        shutil.copytree(qa_run["workdir"], workdir, dirs_exist_ok=True)
        return dict(qa_run["final"])

    sweep = ml_collections.ConfigDict()
    sweep.base = "configs/quickstart.py"
    sweep.variants = [{"name": "full"}]
    sweep.seeds = (0, 1)
    sweep.metrics = ("val_loss",)
    sweep.evaluate = {"task": "qa", "data": qa_run["data"], "max_examples": 4,
                      "max_new_tokens": 2}
    report = ablate.run_sweep(sweep, tmp_path, train_fn=trained, log=lambda s: None)
    header = next(line for line in report.read_text().splitlines() if line.startswith("| variant"))
    assert header == "| variant | val_loss | answer_loss | perplexity | exact_match | f1 |"
    row = next(line for line in report.read_text().splitlines() if line.startswith("| full"))
    assert "n/a" not in row and row.count(" ± ") == 5
    final = json.loads((tmp_path / "runs/full/seed0/final.json").read_text())
    saved = json.loads((tmp_path / "runs/full/seed0/evaluate.json").read_text())
    assert final["f1"] == saved["metrics"]["f1"] and len(saved["examples"]) == 4
    with pytest.raises(ValueError, match="evaluate.task='summary' is unknown"):
        sweep.evaluate.task = "summary"
        ablate.run_sweep(sweep, tmp_path / "bad", train_fn=trained)
