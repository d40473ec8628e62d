"""Fine-tuning: task formats scored on the answer only, a run that starts from a Hugging Face
GPT-2 or a gptjax run (its architecture, tokenizer and weights), the chat loop, and bad input."""

import dataclasses
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax import GPT, Tokenizer
from gptjax.config import Config, ConfigError
from gptjax.data import tasks
from gptjax.generation import GenerationError
from gptjax.generation.chat import Chat
from gptjax.model import split
from gptjax.training import checkpoint as ckpt_lib
from gptjax.training import pretrained
from gptjax.training.loop import train
from gptjax.training.steps import eval_step_fn

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "golden" / "tiny-gpt2"  # a random GPT-2: 2 layers, 64 wide, vocab 320
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def qa_examples(n=96):
    """'What comes after seven?' -> 'eight': learnable in a few dozen steps."""
    return [{"question": f"What comes after {WORDS[i % 9]}?", "answer": WORDS[i % 9 + 1]}
            for i in range(n)]


def read_metrics(workdir) -> list[dict]:
    return [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").open()]


def write_jsonl(path: pathlib.Path, examples) -> str:
    path.write_text("".join(json.dumps(e) + "\n" for e in examples))
    return str(path)


def finetune_config(tmp: pathlib.Path, **sections) -> dict:
    cfg = {
        # Deliberately not the tiny GPT-2's shape: init_from's architecture wins.
        "model": dict(vocab_size=0, max_len=64, num_layers=1, num_heads=2, d_model=32,
                      dropout=0.0),
        "data": dict(dataset="task", task="qa", text_file=write_jsonl(tmp / "qa.jsonl",
                                                                      qa_examples()),
                     tokenizer="init_from", seq_len=48, batch_size=8, val_fraction=0.25),
        "optim": dict(lr=3e-3, min_lr=3e-4, warmup_steps=2, weight_decay=0.0),
        "train": dict(num_steps=30, log_every=10, eval_every=30, eval_steps=2,
                      checkpoint_every=30, sample_tokens=0, init_from=str(TINY)),
    }
    for name, fields in sections.items():
        cfg[name].update(fields)
    return cfg


# ---- task formats ------------------------------------------------------------------------------

EXAMPLES = {
    "completion": ({"prompt": "Once upon", "completion": " a time"}, " a time"),
    "qa": ({"question": "Who wrote Hamlet?", "answer": "Shakespeare", "context": "Plays."},
           " Shakespeare"),
    "translation": ({"source": "Good morning", "target": "Bonjour", "source_lang": "English",
                     "target_lang": "French"}, " Bonjour"),
    "dialogue": ({"messages": [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "Hi"},
                               {"role": "assistant", "content": "Hello."},
                               {"role": "user", "content": "Bye"},
                               {"role": "assistant", "content": "See you."}]},
                 " Hello.\n See you.\n"),
}


@pytest.mark.parametrize("task", list(EXAMPLES))
def test_task_rows_score_the_answer_alone(task):
    tokenizer = Tokenizer.from_pretrained(TINY)
    example, answer = EXAMPLES[task]
    segments = tasks.render(task, example)
    rows = tasks.to_rows([segments], tokenizer, 64, task)
    inputs, targets = rows["inputs"][0], rows["targets"][0]
    scored = targets >= 0
    eos = tokenizer.eos_token_id
    # The scored targets are the answer's tokens, each followed by eos (one per written turn).
    scored_ids = targets[scored].tolist()
    assert scored_ids.count(eos) == len([s for s in segments if s[1]])
    assert tokenizer.decode([t for t in scored_ids if t != eos]) == answer
    # Targets are the next inputs; the prompt (and padding) is not scored.
    n = int(np.flatnonzero(scored)[-1])
    np.testing.assert_array_equal(inputs[1:n + 1][scored[:n]], targets[:n][scored[:n]])
    prompt_len = len(tokenizer.encode(segments[0][0]))
    assert not scored[:prompt_len - 1].any()
    # The whole rendered text, in order, is what the row holds.
    text = "".join(t for t, _ in segments)
    assert tokenizer.decode(inputs[:n + 1].tolist(), skip_special_tokens=True) == text


def test_dialogue_transcript_is_the_chat_prompt():
    messages = EXAMPLES["dialogue"][0]["messages"]
    text = "".join(t for t, _ in tasks.render("dialogue", {"messages": messages}))
    assert text == ("System: Be brief.\nUser: Hi\nAssistant: Hello.\nUser: Bye\n"
                    "Assistant: See you.\n")
    tokenizer = Tokenizer.from_pretrained(TINY)
    chat = Chat(GPT.from_pretrained(TINY), tokenizer)
    assert chat.prompt(messages[1:3]) == "User: Hi\nAssistant: Hello.\nAssistant:"
    # Token for token, the prompt is the transcript as a training row holds it (segment by
    # segment; the assistant's turn scored with the eos after it), then the open turn.
    row = tasks.to_rows([tasks.render("dialogue", {"messages": messages[1:3]})], tokenizer, 64,
                        "test")
    written = row["targets"][0][row["targets"][0] >= 0].tolist()
    assert written == tokenizer.encode(" Hello.\n") + [tokenizer.eos_token_id]
    assert chat.prompt_ids(messages[1:3]) == (
        tokenizer.encode("User: Hi\n") + tokenizer.encode("Assistant:") + written
        + tokenizer.encode("Assistant:"))


def test_long_examples_are_cut_and_empty_ones_left_out():
    tokenizer = Tokenizer.from_pretrained(TINY)
    long_prompt = tasks.render("completion", {"prompt": "word " * 40, "completion": " end"})
    short = tasks.render("completion", {"prompt": "a", "completion": " b c d e f"})
    rows = tasks.to_rows([long_prompt, short], tokenizer, 8, "test")
    assert len(rows["inputs"]) == 1  # the long prompt leaves no answer within 8 tokens
    with pytest.raises(ConfigError, match="no example keeps a scored token"):
        tasks.to_rows([long_prompt], tokenizer, 8, "test")


@pytest.mark.parametrize("line, message", [
    ('{"question": "Q?"}', r"qa.jsonl:2: needs a string field 'answer'"),
    ("not json", r"qa.jsonl:2 is not JSON"),
    ('["a list"]', r"qa.jsonl:2: expected a JSON object"),
])
def test_bad_task_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps(qa_examples(1)[0]) + "\n" + line + "\n")
    with pytest.raises(ConfigError, match=message):
        tasks.read_examples([str(path)], "qa")


def test_unknown_task_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"data.task='summarise' is unknown; allowed"):
        tasks.render("summarise", {})
    with pytest.raises(FileNotFoundError, match="task file .*nope.jsonl does not exist"):
        tasks.read_examples([str(tmp_path / "nope.jsonl")], "qa")
    bad = tasks.render  # a dialogue needs an assistant turn to learn from
    with pytest.raises(ConfigError, match="at least one 'assistant' message"):
        bad("dialogue", {"messages": [{"role": "user", "content": "hi"}]})


def test_play_dialogues_pair_each_speech_with_the_reply():
    play = ("First Citizen:\nBefore we proceed any further,\nhear me speak.\n\n"
            "All:\nSpeak, speak.\n\nAll:\nAgain.\n\nFirst Citizen:\nYou are all resolved?\n")
    examples = tasks.play_dialogues(play)
    assert [[m["content"] for m in e["messages"]] for e in examples] == [
        ["Before we proceed any further, hear me speak.", "Speak, speak."],
        ["Again.", "You are all resolved?"]]  # a speaker does not answer himself
    assert tasks.play_dialogues(play, max_chars=40) == examples[1:]
    tasks.render("dialogue", examples[0])  # a valid example of the format


def test_reply_questions_ask_which_reply_follows_as_training_wrote_it():
    examples = [{"messages": [{"role": "user", "content": f"speech {i}"},
                              {"role": "assistant", "content": f"reply {i}"}]}
                for i in range(6)]
    questions = tasks.reply_questions(examples, num_choices=3, seed=1)
    assert questions == tasks.reply_questions(examples, num_choices=3, seed=1)
    labels = set()
    for i, (example, q) in enumerate(zip(examples, questions)):
        assert q["choices"][q["label"]] == f"reply {i}"
        assert len(set(q["choices"])) == 3 and set(q["choices"]) <= {
            f"reply {j}" for j in range(6)}
        labels.add(q["label"])
        # the context and " " + the reply are the transcript training scores, its "\n" aside
        segments = tasks.render("dialogue", example)
        assert q["context"] + " " + q["choices"][q["label"]] + "\n" == "".join(
            t for t, _ in segments)
    assert len(labels) > 1  # the true reply is not always in one place
    with pytest.raises(ValueError, match="6 distinct replies cannot make questions of 7"):
        tasks.reply_questions(examples, num_choices=7)


# ---- fine-tuning runs ----------------------------------------------------------------------------

def _val_loss(model, data, steps):
    graphdef, params = split(model)
    step = jax.jit(eval_step_fn(graphdef))
    return float(np.mean([step(params, b)["loss"] for b in data.val_batches(steps)]))


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("finetune")
    cfg = finetune_config(tmp)
    final = train(cfg, tmp / "run")
    return dict(tmp=tmp, cfg=cfg, final=final, workdir=tmp / "run")


def test_finetune_takes_the_hf_architecture_and_tokenizer(hf_run):
    saved = json.loads((hf_run["workdir"] / "config.json").read_text())
    assert {k: saved["model"][k] for k in ("num_layers", "d_model", "num_heads", "vocab_size",
                                           "max_len")} == dict(num_layers=2, d_model=64,
                                                               num_heads=4, vocab_size=320,
                                                               max_len=128)
    assert saved["data"]["tokenizer"] == str(TINY)
    text = "Question: What comes after two?\nAnswer: three"
    assert (Tokenizer.from_pretrained(hf_run["workdir"]).encode(text)
            == Tokenizer.from_pretrained(TINY).encode(text))


@pytest.mark.parametrize("mesh", [dict(), dict(fsdp=4, tensor=2), dict(strategy="pmap")])
def test_finetune_starts_from_the_pretrained_weights(tmp_path, mesh):
    """One step at a tiny learning rate: the params are GPT-2's to within that step (a random
    initialisation would differ by ~0.1), however the run lays them out over the devices."""
    cfg = finetune_config(tmp_path, optim=dict(lr=1e-7, min_lr=0.0, warmup_steps=0),
                          train=dict(num_steps=1, eval_every=1, checkpoint_every=1))
    cfg["mesh"] = mesh
    train(cfg, tmp_path / "run")
    _, params = ckpt_lib.load_params(tmp_path / "run")
    _, hf_params = split(GPT.from_pretrained(TINY))
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), params,
                                         hf_params))
    assert len(diffs) == len(jax.tree.leaves(hf_params)) and max(diffs) < 1e-5, max(diffs)


def test_finetune_learns_the_answers(hf_run):
    """The validation loss (answers only) falls well below the pretrained model's."""
    from gptjax.data import build_data

    cfg = Config.from_dict(json.loads((hf_run["workdir"] / "config.json").read_text()))
    data = build_data(cfg, tokenizer=Tokenizer.from_pretrained(TINY), process_index=0,
                      process_count=1)
    before = _val_loss(GPT.from_pretrained(TINY), data, cfg.train.eval_steps)
    after = _val_loss(GPT.from_pretrained(hf_run["workdir"]), data, cfg.train.eval_steps)
    assert after == pytest.approx(hf_run["final"]["val_loss"], abs=1e-4)
    assert after < before - 2.0, (before, after)


def test_finetune_resumes_from_its_own_checkpoint(hf_run, tmp_path):
    """A fine-tuning workdir with checkpoints resumes them; init_from's weights are not reloaded."""
    shutil.copytree(hf_run["workdir"], tmp_path / "run")
    cfg = json.loads(json.dumps(hf_run["cfg"]))
    cfg["train"].update(num_steps=32, eval_every=32, checkpoint_every=32, log_every=1)
    final = train(cfg, tmp_path / "run")
    rows = [r for r in read_metrics(tmp_path / "run") if "train_loss" in r]
    assert rows[-2]["step"] == 31 and final["step"] == 32
    # From step 30's weights: the answers' loss stays near the fine-tuned one.
    assert final["val_loss"] < hf_run["final"]["val_loss"] + 0.5


def test_finetune_from_a_gptjax_run_keeps_its_char_vocabulary(tmp_path):
    examples = qa_examples(40)
    corpus = "".join("".join(t for t, _ in tasks.render("qa", e)) for e in examples)
    (tmp_path / "text.txt").write_text(corpus * 3 + "xyz")  # extra characters: its own vocab
    source = dict(model=dict(vocab_size=0, max_len=64, num_layers=1, num_heads=2, d_model=32),
                  data=dict(dataset="text_file", text_file=str(tmp_path / "text.txt"),
                            tokenizer="char", seq_len=32, batch_size=8,
                            data_dir=str(tmp_path / "tfds")),
                  train=dict(num_steps=2, eval_every=2, eval_steps=1, checkpoint_every=2,
                             sample_tokens=0))
    train(source, tmp_path / "source")
    # Character-level rows need more positions than BPE ones: a question is ~40 characters.
    cfg = finetune_config(tmp_path, data=dict(seq_len=56),
                          optim=dict(lr=1e-7, min_lr=0.0, warmup_steps=0),
                          train=dict(num_steps=1, eval_every=1, checkpoint_every=1,
                                     init_from=str(tmp_path / "source")))
    train(cfg, tmp_path / "tuned")
    src_tok, tuned_tok = (Tokenizer.from_pretrained(tmp_path / d) for d in ("source", "tuned"))
    assert tuned_tok.vocab_size == src_tok.vocab_size and tuned_tok.encode("xyz") == \
        src_tok.encode("xyz")
    (_, a), (_, b) = (ckpt_lib.load_params(tmp_path / d) for d in ("source", "tuned"))
    assert max(jax.tree.leaves(jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y))),
                                            a, b))) < 1e-5
    with pytest.raises(ConfigError, match=r"'char' has its own vocabulary.*set "
                                          r"data.tokenizer='init_from'"):
        train(finetune_config(tmp_path, data=dict(tokenizer="char"),
                              train=dict(init_from=str(tmp_path / "source"))),
              tmp_path / "char")
    assert not (tmp_path / "char").exists()


@pytest.mark.parametrize("sections, message", [
    (dict(train=dict(init_from="/nonexistent/gpt2")), r"train.init_from='/nonexistent/gpt2'"),
    (dict(train=dict(init_from=None)), r"data.tokenizer='init_from' .* train.init_from"),
    (dict(data=dict(task="summary")), r"data.task='summary' is unknown"),
])
def test_bad_finetune_input_fails_before_writing(tmp_path, sections, message):
    with pytest.raises(ConfigError, match=message):
        train(finetune_config(tmp_path, **sections), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_finetune_config_fits_the_source(tmp_path, caplog):
    """data.seq_len over the source's context is capped at it, with one log line; a warm-up over
    half the run gets one warning (a config's own model.max_len is the source's anyway)."""
    cfg = Config.from_dict(finetune_config(tmp_path, model=dict(max_len=256),
                                           data=dict(seq_len=200)))
    with caplog.at_level(logging.INFO):
        adopted = pretrained.adopt(cfg)
    assert adopted.data.seq_len == 128 and adopted.model.max_len == 128
    assert "data.seq_len=200 capped at the model's context, max_len=128" in caplog.text
    assert "warmup" not in caplog.text  # 2 of 30 steps
    assert pretrained.adopt(adopted).data.seq_len == 128  # one that fits stays as it is
    for warmup, says in ((16, "spends 53% of its steps warming up"),
                         (30, "never leaves its warm-up")):
        caplog.clear()
        pretrained.adopt(dataclasses.replace(
            cfg, optim=dataclasses.replace(cfg.optim, warmup_steps=warmup)))
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and says in warnings[0], warnings
    caplog.clear()
    pretrained.adopt(dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim,
                                                                        warmup_steps=15)))
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


# ---- chat ----------------------------------------------------------------------------------------

def test_chat_keeps_the_newest_turns_that_fit():
    model, tokenizer = GPT.from_pretrained(TINY), Tokenizer.from_pretrained(TINY)
    chat = Chat(model, tokenizer, system="Be brief.", max_new_tokens=16, seed=3)
    first = chat.reply("Hello there")
    assert "\n" not in first and chat.messages[-1] == {"role": "assistant", "content": first}
    for i in range(12):  # far more than 128 positions of transcript
        chat.reply(f"Tell me about the number {i}, please")
    prompt = chat.prompt(chat.messages[:-1])
    assert len(chat.prompt_ids(chat.messages[:-1])) <= 128 - 16
    assert prompt.startswith("System: Be brief.\n")  # the system message always stays
    assert chat.messages[-2]["content"] == "Tell me about the number 11, please"
    assert len(chat.messages) < 26
    with pytest.raises(GenerationError, match="too long for the model's context"):
        chat.reply("word " * 200)


def test_chat_command_talks_until_quit(hf_run):
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", XLA_FLAGS="")
    out = subprocess.run([sys.executable, "-m", "experiments.chat",
                          f"--checkpoint={hf_run['workdir']}", "--max_new_tokens=8"],
                         input="What comes after two?\n/reset\nHi\n/quit\nnever read\n",
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("Assistant: ") == 2, out.stdout


def test_chat_command_says_so_when_the_model_ends_its_turn_at_once(tmp_path):
    """A model that answers every turn with a newline (its final LayerNorm outputs one fixed
    direction, which only the newline's embedding row points along) gets a line saying why
    the reply is empty, not a bare 'Assistant: '."""
    model = GPT.from_pretrained(TINY)
    tokenizer = Tokenizer.from_pretrained(TINY)
    (newline,) = tokenizer.encode("\n")
    model.ln_f.scale[...] = jnp.zeros_like(model.ln_f.scale[...])
    model.ln_f.bias[...] = jnp.zeros_like(model.ln_f.bias[...]).at[0].set(1.0)
    model.wte.embedding[...] = model.wte.embedding[...].at[:, 0].set(0.0).at[newline, 0].set(10.0)
    model.save_pretrained(tmp_path / "m")
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        shutil.copy(TINY / name, tmp_path / "m" / name)
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", XLA_FLAGS="")
    out = subprocess.run([sys.executable, "-m", "experiments.chat",
                          f"--checkpoint={tmp_path / 'm'}", "--nodo_sample", "--max_new_tokens=4"],
                         input="Hello?\n/quit\n",
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Assistant: (no reply: the model ended its turn at once" in out.stdout, out.stdout


def test_finetune_command_needs_init_from(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", XLA_FLAGS="")
    out = subprocess.run([sys.executable, "-m", "experiments.finetune",
                          "--config=configs/finetune_gpt2.py:qa", f"--workdir={tmp_path / 'r'}"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode != 0 and "needs a pretrained model: pass --init_from" in out.stderr
