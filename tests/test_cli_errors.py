"""Every entry point answers bad input with one clear line: a table of cases.

Each case runs an entry point's main as `python -m experiments.NAME ARGV` would (through
experiments.cli), all cases of one entry point in one process (tests/cli_runner.py) so that JAX is
imported once per entry point. Each asserts a non-zero exit code, no traceback, the last line of
stderr naming the cause, and an existing workdir's files unchanged. A few cases run as real
subprocesses, end to end.
"""

import concurrent.futures
import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = "tests/golden/tiny-gpt2"
QUICK = "--config=configs/quickstart.py"
# A run small enough to train in seconds; its workdir is the "existing run" of the table.
SMALL = [QUICK, "--config.model.num_layers=1", "--config.model.d_model=32",
         "--config.model.num_heads=2", "--config.train.num_steps=2", "--config.train.eval_every=2",
         "--config.train.eval_steps=1", "--config.train.checkpoint_every=2",
         "--config.train.log_every=2",
         "--config.train.sample_tokens=0"]
ENV = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
       "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1", "GPTJAX_DEBUG": ""}


def files(tmp: pathlib.Path) -> dict:
    """Bad inputs, written once: {name: path}."""
    (tmp / "empty.txt").write_text("")
    (tmp / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (tmp / "adir").mkdir()
    (tmp / "good.jsonl").write_text('{"question": "a", "answer": "b"}\n' * 40)
    (tmp / "broken.jsonl").write_text('{"question": "a", "answer": "b"}\n{"question": \n')
    (tmp / "nofield.jsonl").write_text('{"question": "a", "reply": "b"}\n')
    (tmp / "nofield_text.jsonl").write_text('{"body": "some text"}\n')
    torch_dir = tmp / "torch_only"
    torch_dir.mkdir()
    for name in ("config.json", "tokenizer.json", "vocab.json", "merges.txt"):
        (torch_dir / name).write_bytes((ROOT / TINY / name).read_bytes())
    (torch_dir / "pytorch_model.bin").write_bytes(b"not loaded")
    pt_dir = tmp / "pt_only"
    pt_dir.mkdir()
    (pt_dir / "model.pt").write_bytes(b"not loaded")
    (tmp / "long_prompt.txt").write_text("word " * 400)
    (tmp / "unseen_chars.txt").write_text("hello ☃ world\n")  # not in a char model's vocabulary
    question = {"ctx": "A man", "endings": ["a", "b", "c", "d"], "label": 0}
    (tmp / "choices.jsonl").write_text(json.dumps(question) + "\n")
    (tmp / "bad_label.jsonl").write_text(json.dumps(question) + "\n"
                                         + json.dumps({**question, "label": 4}) + "\n")
    (tmp / "long.jsonl").write_text(json.dumps({"question": "word " * 400, "answer": "b"}) + "\n")
    rope_run = tmp / "rope_run"  # a run's workdir as far as its config goes
    (rope_run / "checkpoints").mkdir(parents=True)
    (rope_run / "config.json").write_text(json.dumps({"model": {"position": "rope"},
                                                      "train": {}}))
    return {p.name: str(p) for p in tmp.iterdir()}


def table(f: dict, run: str, tmp: pathlib.Path) -> list[tuple[str, str, list[str], str]]:
    """(entry point, case id, argv, regex the last stderr line must match)."""
    new = str(tmp / "fresh")
    data_dir = f"--config.data.data_dir={tmp / 'tfds'}"
    train = [QUICK, f"--workdir={new}"]
    gen = [f"--checkpoint={TINY}", "--prompt=hello"]
    ft = ["--config=configs/finetune_gpt2.py:qa", f"--init_from={TINY}", f"--workdir={new}",
          "--config.data.tokenizer=init_from", "--config.data.seq_len=32",
          "--config.data.batch_size=8", f"--config.data.text_file={f['good.jsonl']}"]
    return [
        ("train", "unknown-override", [*train, "--config.model.nonexistent=1"],
         r"--config\.model\.nonexistent.*no field 'nonexistent'"),
        ("train", "mistyped-override", [*train, "--config.model.num_layer=2"],
         r"did you mean --config\.model\.num_layers"),
        ("train", "unknown-section", [*train, "--config.foo.bar=1"],
         r"--config\.foo\.bar: config has no field 'foo'"),
        ("train", "bad-override-type", [*train, "--config.model.num_layers=two"],
         r"config\.model\.num_layers"),
        ("train", "step-larger-than-memory", [*train, "--config.data.batch_size=8192",
                                               "--config.model.max_len=1024",
                                               "--config.data.seq_len=1024"],
         r"the train step needs [\d.]+ GiB per device by XLA's plan .* more than the "
         r"[\d.]+ GiB of the host's .*optim\.grad_accum=\d+ \(micro-batches of \d+\)"),
        ("train", "zero-layers", [*train, "--config.model.num_layers=0"],
         r"model\.num_layers=0 is invalid"),
        ("train", "negative-batch", [*train, "--config.data.batch_size=-4"],
         r"data\.batch_size=-4 is invalid"),
        ("train", "lr-nan", [*train, "--config.optim.lr=nan"], r"optim\.lr=nan is invalid"),
        ("train", "lr-inf", [*train, "--config.optim.lr=inf"], r"optim\.lr=inf is invalid"),
        ("train", "batch-not-dividing", [*train, "--config.data.batch_size=6"],
         r"batch_size=6.*divi"),
        ("train", "mesh-too-big", [*train, "--config.mesh.fsdp=16"], r"16.*devices"),
        ("train", "unknown-kernel", [*train, "--config.model.attention=nope"],
         r"model\.attention='nope'"),
        ("train", "pallas-on-cpu", [*train, "--config.model.attention=pallas"],
         r"pallas.*(GPU|TPU|CPU)"),
        ("train", "cudnn-on-cpu", [*train, "--config.model.attention=cudnn",
                                   "--config.model.dtype=bfloat16"],
         r"cudnn.*(GPU|CPU)"),
        ("train", "unknown-dataset", [*train, data_dir, "--config.data.dataset=no_such_set"],
         r"no_such_set"),
        ("train", "unknown-tokenizer", [*train, data_dir, "--config.data.tokenizer=nope"],
         r"unknown tokenizer 'nope'"),
        ("train", "missing-text-file", [*train, data_dir, "--config.data.dataset=text_file",
                                        f"--config.data.text_file={tmp / 'missing.txt'}"],
         r"missing\.txt"),
        ("train", "empty-text-file", [*train, data_dir, "--config.data.dataset=text_file",
                                      f"--config.data.text_file={f['empty.txt']}"],
         r"empty\.txt.*empty"),
        ("train", "binary-text-file", [*train, data_dir, "--config.data.dataset=text_file",
                                       f"--config.data.text_file={f['binary.txt']}"],
         r"binary\.txt.*UTF-8|UTF-8.*binary\.txt"),
        ("train", "directory-text-file", [*train, data_dir, "--config.data.dataset=text_file",
                                          f"--config.data.text_file={f['adir']}"],
         r"adir.*(folder|directory)|(folder|directory).*adir"),
        ("train", "missing-config-file", ["--config=configs/no_such.py", f"--workdir={new}"],
         r"no_such\.py"),
        ("train", "missing-workdir-flag", [QUICK], r"--workdir"),
        ("train", "stray-argument", [*train, "extra"], r"unexpected arguments"),
        ("train", "another-models-run", [QUICK, f"--workdir={run}"],
         r"(holds|another|differ).*(num_layers|d_model)"),
        ("train", "init-from-missing", [*train, f"--config.train.init_from={tmp / 'nope'}"],
         r"init_from=.*nope"),
        ("train", "seq-len-over-context", [*train, "--config.data.seq_len=128"],
         r"seq_len=128"),
        ("finetune", "no-init-from", ["--config=configs/finetune_gpt2.py:qa",
                                      f"--workdir={new}"], r"--init_from"),
        ("finetune", "init-from-missing", [*ft[:1], f"--init_from={tmp / 'nope'}", *ft[2:]],
         r"init_from=.*nope"),
        ("finetune", "broken-jsonl", [*ft, data_dir,
                                      f"--config.data.text_file={f['broken.jsonl']}"],
         r"broken\.jsonl:2 is not JSON"),
        ("finetune", "missing-field", [*ft, data_dir,
                                       f"--config.data.text_file={f['nofield.jsonl']}"],
         r"nofield\.jsonl.*'answer'"),
        ("finetune", "torch-only-init", [*ft[:1], f"--init_from={f['torch_only']}", *ft[2:]],
         r"safetensors"),
        ("generate", "missing-checkpoint", [f"--checkpoint={tmp / 'nope'}", "--prompt=hi"],
         r"nope"),
        ("generate", "pytorch-bin-only", [f"--checkpoint={f['torch_only']}", "--prompt=hi"],
         r"pytorch_model\.bin.*safe_serialization=True"),
        ("generate", "pt-file-only", [f"--checkpoint={f['pt_only']}", "--prompt=hi"],
         r"model\.pt.*safetensors"),
        ("generate", "prompt-over-context", [f"--checkpoint={TINY}",
                                            f"--prompt_file={f['long_prompt.txt']}",
                                            "--max_new_tokens=5"],
         r"context|positions"),
        ("generate", "max-length-below-prompt", [*gen[:1], "--prompt=hello there my friend",
                                                 "--max_length=2"], r"max_length"),
        ("generate", "zero-beams", [*gen, "--num_beams=0"], r"num_beams"),
        ("generate", "negative-temperature", [*gen, "--do_sample", "--temperature=-1"],
         r"temperature"),
        ("generate", "top-p-over-one", [*gen, "--do_sample", "--top_p=1.5"], r"top_p"),
        ("generate", "negative-new-tokens", [*gen, "--max_new_tokens=-3"], r"max_new_tokens"),
        ("generate", "beams-not-a-number", [*gen, "--num_beams=abc"], r"num_beams"),
        ("generate", "missing-prompt-file", [f"--checkpoint={TINY}",
                                            f"--prompt_file={tmp / 'none.txt'}"], r"none\.txt"),
        ("generate", "binary-prompt-file", [f"--checkpoint={TINY}",
                                           f"--prompt_file={f['binary.txt']}"], r"UTF-8"),
        ("generate", "directory-prompt-file", [f"--checkpoint={TINY}",
                                              f"--prompt_file={f['adir']}"], r"adir"),
        ("generate", "other-tokenizer", [f"--checkpoint={run}", "--prompt=hi",
                                         f"--tokenizer={TINY}"], r"tokenizer.*vocab"),
        ("generate", "empty-folder", [f"--checkpoint={f['adir']}", "--prompt=hi"], r"adir"),
        ("evaluate", "missing-data", [f"--checkpoint={TINY}", f"--data={tmp / 'none.jsonl'}",
                                      "--task=qa"], r"none\.jsonl does not exist"),
        ("evaluate", "unknown-task", [f"--checkpoint={TINY}", f"--data={f['good.jsonl']}",
                                      "--task=summary"], r"--task"),
        ("evaluate", "other-task-format", [f"--checkpoint={TINY}", f"--data={f['good.jsonl']}",
                                           "--task=translation"],
         r"good\.jsonl:1: needs a string field 'source'.*reads as --task=qa"),
        ("evaluate", "broken-jsonl", [f"--checkpoint={TINY}", f"--data={f['broken.jsonl']}",
                                      "--task=qa"], r"broken\.jsonl:2 is not JSON"),
        ("evaluate", "missing-checkpoint", [f"--checkpoint={tmp / 'nope'}",
                                            f"--data={f['good.jsonl']}", "--task=qa"], r"nope"),
        ("evaluate", "nothing-fits", [f"--checkpoint={TINY}", f"--data={f['long.jsonl']}",
                                      "--task=qa"], r"none of the 1 examples.*context"),
        ("evaluate", "zero-new-tokens", [f"--checkpoint={TINY}", f"--data={f['good.jsonl']}",
                                         "--task=qa", "--max_new_tokens=0"], r"max_new_tokens"),
        ("evaluate", "zero-examples", [f"--checkpoint={TINY}", f"--data={f['good.jsonl']}",
                                       "--task=qa", "--max_examples=0"], r"max_examples"),
        ("multiple_choice", "out-is-a-folder", [f"--checkpoint={TINY}",
                                                f"--data={f['choices.jsonl']}",
                                                f"--out={f['adir']}"],
         r"--out=.*adir is a folder; give a file path"),
        ("perplexity", "missing-text", [f"--checkpoint={TINY}",
                                        f"--text_file={tmp / 'none.txt'}"], r"none\.txt"),
        ("perplexity", "empty-text", [f"--checkpoint={TINY}", f"--text_file={f['empty.txt']}"],
         r"empty\.txt holds no text"),
        ("perplexity", "binary-text", [f"--checkpoint={TINY}",
                                       f"--text_file={f['binary.txt']}"], r"not UTF-8"),
        ("perplexity", "text-is-folder", [f"--checkpoint={TINY}", f"--text_file={f['adir']}"],
         r"adir"),
        ("perplexity", "missing-checkpoint", [f"--checkpoint={tmp / 'nope'}",
                                              f"--text_file={f['long_prompt.txt']}"], r"nope"),
        ("perplexity", "context-over-model", [f"--checkpoint={TINY}", "--context=4096",
                                              f"--text_file={f['long_prompt.txt']}"],
         r"context=4096: give 2 to the model's 128 positions"),
        ("perplexity", "stride-not-below-context", [f"--checkpoint={TINY}", "--context=64",
                                                    "--stride=64",
                                                    f"--text_file={f['long_prompt.txt']}"],
         r"stride=64 with context=64: give 1 to 63"),
        ("perplexity", "char-model-unknown-character", [
            f"--checkpoint={run}", f"--text_file={f['unseen_chars.txt']}"],
         r"character '☃' \(U\+2603\) at position 6 is not in this char-level vocabulary"),
        ("perplexity", "out-under-a-file", [f"--checkpoint={TINY}",
                                            f"--text_file={f['long_prompt.txt']}",
                                            f"--out={f['empty.txt']}/r.json"],
         r"--out=.*empty\.txt/r\.json: cannot make the folder"),
        ("multiple_choice", "missing-data", [f"--checkpoint={TINY}",
                                             f"--data={tmp / 'none.jsonl'}"], r"none\.jsonl"),
        ("multiple_choice", "qa-file", [f"--checkpoint={TINY}", f"--data={f['good.jsonl']}"],
         r"good\.jsonl:1 needs a string 'context' and a list of two or more"),
        ("multiple_choice", "label-out-of-range", [f"--checkpoint={TINY}",
                                                   f"--data={f['bad_label.jsonl']}"],
         r"bad_label\.jsonl:2: label=4 must index its 4 choices \(0 to 3\)"),
        ("multiple_choice", "empty-file", [f"--checkpoint={TINY}", f"--data={f['empty.txt']}"],
         r"holds no questions"),
        ("multiple_choice", "missing-checkpoint", [f"--checkpoint={tmp / 'nope'}",
                                                   f"--data={f['choices.jsonl']}"], r"nope"),
        ("multiple_choice", "zero-examples", [f"--checkpoint={TINY}", "--max_examples=0",
                                              f"--data={f['choices.jsonl']}"],
         r"max_examples=0"),
        ("multiple_choice", "zero-batch", [f"--checkpoint={TINY}", "--batch_size=0",
                                           f"--data={f['choices.jsonl']}"], r"batch_size=0"),
        ("play_dialogues", "missing-text", [f"--text_file={tmp / 'none.txt'}",
                                            f"--outdir={new}"], r"none\.txt"),
        ("play_dialogues", "one-choice", [f"--text_file={f['long_prompt.txt']}",
                                          f"--outdir={new}", "--num_choices=1"],
         r"--num_choices=1: give 2 or more"),
        ("chat", "missing-checkpoint", [f"--checkpoint={tmp / 'nope'}"], r"nope"),
        ("chat", "reply-over-context", [f"--checkpoint={TINY}", "--max_new_tokens=500"],
         r"max_new_tokens"),
        ("chat", "negative-temperature", [f"--checkpoint={TINY}", "--temperature=-1"],
         r"temperature"),
        ("chat", "top-p-over-one", [f"--checkpoint={TINY}", "--top_p=2"], r"top_p"),
        ("ablate", "missing-config", ["--config=configs/ablations/none.py",
                                      f"--outdir={new}"], r"none\.py"),
        ("ablate", "mistyped-override", ["--config=configs/ablations/attention.py",
                                         "--config.seed=1", f"--outdir={new}"],
         r"did you mean --config\.seeds"),
        ("ablate", "missing-outdir", ["--config=configs/ablations/attention.py"], r"--outdir"),
        ("attention_maps", "missing-checkpoint", [f"--checkpoint={tmp / 'nope'}",
                                                  "--prompt=hi"], r"nope"),
        ("attention_maps", "empty-prompt", [f"--checkpoint={TINY}", "--prompt="], r"prompt"),
        ("attention_maps", "layer-out-of-range", [f"--checkpoint={TINY}", "--prompt=hi",
                                                  "--layers=9", f"--outdir={new}"], r"layers"),
        ("attention_maps", "prompt-over-context", [f"--checkpoint={TINY}",
                                                   "--prompt=" + "word " * 400], r"context|128"),
        ("prepare_data", "no-inputs", [f"--inputs={tmp / 'none'}/*.jsonl", f"--outdir={new}"],
         r"none"),
        ("prepare_data", "broken-jsonl", [f"--inputs={f['broken.jsonl']}", f"--outdir={new}",
                                          "--tokenizer=byte", "--num_workers=0",
                                          "--text_field=question"], r"broken\.jsonl"),
        ("prepare_data", "missing-field", [f"--inputs={f['nofield_text.jsonl']}",
                                           f"--outdir={new}", "--tokenizer=byte",
                                           "--num_workers=0"], r"text"),
        ("prepare_data", "char-tokenizer", [f"--inputs={f['broken.jsonl']}", f"--outdir={new}",
                                            "--tokenizer=char"], r"char"),
        ("prepare_data", "unknown-tokenizer", [f"--inputs={f['broken.jsonl']}",
                                               f"--outdir={new}", "--tokenizer=nope"], r"nope"),
        ("prepare_data", "zero-shard-tokens", [f"--inputs={f['broken.jsonl']}",
                                               f"--outdir={new}", "--shard_tokens=0"],
         r"shard_tokens"),
        ("bench_attention", "unknown-kernel", ["--kernels=nope", f"--outdir={new}"],
         r"unknown kernels \['nope'\]"),
        ("bench_attention", "outdir-is-a-file", ["--kernels=xla", "--lengths=64",
                                                 f"--outdir={f['empty.txt']}"],
         r"--outdir=.*cannot make the folder"),
        ("bench_attention", "negative-length", ["--kernels=xla", "--lengths=-5",
                                                f"--outdir={new}"], r"lengths"),
        ("bench_attention", "pallas-on-cpu", ["--kernels=pallas", "--lengths=128",
                                              f"--outdir={new}"], r"pallas"),
        ("bench_scaling", "unknown-override", ["--config.model.nonexistent=1",
                                               f"--out={new}/s"], r"no field 'nonexistent'"),
        ("bench_scaling", "zero-heads", ["--config.model.num_heads=0", f"--out={new}/s"],
         r"num_heads=0"),
        ("bench_scaling", "unknown-strategy", ["--only=nope", f"--out={new}/s"], r"nope"),
        ("bench_train", "lr-nan", ["--config.optim.lr=nan", "--peer=none",
                                   f"--out={new}/b.md"], r"optim\.lr=nan"),
        ("bench_train", "zero-steps", ["--steps=0", "--peer=none", f"--out={new}/b.md"],
         r"--steps"),
        ("bench_generate", "missing-checkpoint", [f"--checkpoint={tmp / 'nope'}",
                                                  f"--out={new}/g.md"], r"nope"),
        ("bench_generate", "zero-repeats", ["--repeats=0", f"--out={new}/g.md"], r"repeats"),
        ("bench_data", "out-under-a-file", [f"--text={f['long_prompt.txt']}", f"--workdir={new}",
                                            f"--out={f['empty.txt']}/d.md"],
         r"--out=.*cannot make the folder"),
        ("bench_data", "unknown-section", ["--sections=nope", f"--workdir={new}",
                                           f"--out={new}/d.md"], r"nope"),
        ("bench_data", "missing-text", [f"--text={tmp / 'none.txt'}", "--sections=tokenize",
                                        f"--workdir={new}", f"--out={new}/d.md"], r"none\.txt"),
        ("bench_packing", "zero-steps", ["--steps=0", f"--workdir={new}", f"--out={new}/p.md"],
         r"--steps=0"),
        ("bench_packing", "missing-text", [f"--text={tmp / 'none.txt'}", f"--workdir={new}",
                                           f"--out={new}/p.md"], r"none\.txt"),
        ("export", "missing-checkpoint", [f"--checkpoint={tmp / 'nope'}", f"--outdir={new}"],
         r"nope"),
        ("export", "missing-outdir-flag", [f"--checkpoint={TINY}"], r"--outdir"),
        ("export", "non-empty-outdir", [f"--checkpoint={TINY}", f"--outdir={run}"],
         r"not empty.*--overwrite"),
        ("export", "outdir-is-source", [f"--checkpoint={run}", f"--outdir={run}", "--overwrite"],
         r"source folder"),
        ("export", "empty-folder", [f"--checkpoint={f['adir']}", f"--outdir={new}"], r"adir"),
        ("export", "rope-model", [f"--checkpoint={f['rope_run']}", f"--outdir={new}"],
         r"model\.position='rope'.*Hugging Face GPT-2"),
        ("profile_step", "zero-steps", ["--steps=0", f"--out={new}/p.md"], r"--steps"),
        ("profile_step", "unknown-override", ["--config.model.nonexistent=1",
                                              f"--out={new}/p.md"], r"no field 'nonexistent'"),
        ("profile_step", "missing-text", [f"--config.data.text_file={tmp / 'none.txt'}",
                                          f"--out={new}/p.md"], r"none\.txt"),
        ("profile_step", "missing-checkpoint", ["--program=generate",
                                                f"--checkpoint={tmp / 'nope'}",
                                                f"--out={new}/p.md"], r"nope"),
        ("chaos", "zero-kills", ["--kills=0", f"--out={new}/c", "--report="], r"--kills=0"),
        ("chaos", "report-under-a-file", [f"--out={new}/c", f"--report={f['empty.txt']}/r.md"],
         r"--report=.*cannot make the folder"),
        ("chaos", "sparse-checkpoints", ["--checkpoint_every=80", "--fsdp_steps=100",
                                         f"--out={new}/c", "--report="], r"checkpoint_every=80"),
    ]


def digest(folder: pathlib.Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_group(module: str, cases: list, tmp: pathlib.Path) -> list[dict]:
    spec, out = tmp / f"{module}.cases.json", tmp / f"{module}.results.json"
    spec.write_text(json.dumps({"module": f"experiments.{module}",
                                "cases": [{"argv": argv} for _, _, argv, _ in cases]}))
    proc = subprocess.run([sys.executable, "-m", "tests.cli_runner", str(spec), str(out)],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    """(case id -> (result, regex), the run's digest before, the run's folder)."""
    tmp = tmp_path_factory.mktemp("cli")
    run = tmp / "run"
    subprocess.run([sys.executable, "-m", "experiments.train", *SMALL, f"--workdir={run}",
                    f"--config.data.data_dir={tmp / 'tfds'}"], cwd=ROOT, check=True,
                   env={**ENV, "XLA_FLAGS": ""}, capture_output=True)  # 1 device: fast compile
    before = digest(run)
    # Each case its own new folder: a case must not meet another's leftovers.
    rows = [(m, c, [a.replace(str(tmp / "fresh"), str(tmp / f"fresh-{m}-{c}")) for a in argv], p)
            for m, c, argv, p in table(files(tmp), str(run), tmp)]
    groups: dict[str, list] = {}
    for row in rows:
        groups.setdefault(row[0], []).append(row)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = {m: pool.submit(run_group, m, cases, tmp) for m, cases in groups.items()}
        results = {m: f.result() for m, f in futures.items()}
    by_id = {}
    for module, cases in groups.items():
        for (_, case, _, pattern), result in zip(cases, results[module]):
            by_id[f"{module}:{case}"] = (result, pattern)
    return by_id, before, run, tmp


def _ids():
    tmp = pathlib.Path("/nonexistent")
    return [f"{m}:{c}" for m, c, _, _ in table({k: k for k in (
        "empty.txt", "binary.txt", "adir", "broken.jsonl", "nofield.jsonl", "nofield_text.jsonl",
        "torch_only", "pt_only", "long_prompt.txt", "unseen_chars.txt", "good.jsonl",
        "long.jsonl", "rope_run", "choices.jsonl", "bad_label.jsonl")},
        "run", tmp)]


def test_table_is_large_and_covers_every_entry_point():
    ids = _ids()
    assert len(ids) >= 40 and len(set(ids)) == len(ids)
    names = {p.stem for p in (ROOT / "experiments").glob("*.py")} - {"__init__", "cli"}
    assert names <= {i.split(":")[0] for i in ids}


@pytest.mark.parametrize("case", _ids())
def test_bad_input_gets_one_clear_line(outcome, case):
    by_id, before, run, _ = outcome
    result, pattern = by_id[case]
    stderr = result["stderr"]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert result["code"] in (1, 2), (result["code"], stderr[-3000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    assert lines and re.search(r": error: ", lines[-1]), stderr[-3000:]
    assert re.search(pattern, lines[-1]), lines[-1]
    assert digest(run) == before, "an existing run's files changed"


def test_empty_text_file_leaves_no_dataset_behind(outcome):
    *_, tmp = outcome
    tfds = tmp / "tfds"
    leftovers = [p for p in tfds.rglob("*") if "text_file" in str(p.relative_to(tfds))]
    assert not [p for p in leftovers if p.is_dir() and not any(p.iterdir())], leftovers


@pytest.mark.parametrize("argv, pattern, code", [
    (["experiments.train", QUICK, "--workdir=/tmp/x", "--config.optim.lr=nan"],
     r"^train: error: optim\.lr=nan is invalid", 1),
    (["experiments.bench_scaling", "--config.model.num_layrs=2"],
     r"^bench_scaling: error: .*did you mean --config\.model\.num_layers", 1),
    (["experiments.generate", "--checkpoint=/nonexistent/model", "--prompt=hi"],
     r"^generate: error: .*nonexistent", 1),
    (["experiments.generate", "--prompt=hi"], r"^generate: error: .*--checkpoint", 2),
])
def test_real_process_exit_code_and_one_line(argv, pattern, code):
    proc = subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and re.search(pattern, lines[0]), proc.stderr


def test_debug_env_shows_the_traceback():
    proc = subprocess.run([sys.executable, "-m", "experiments.generate", "--prompt=hi",
                           "--checkpoint=/nonexistent/model"], cwd=ROOT,
                          env={**ENV, "GPTJAX_DEBUG": "1"}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_a_library_value_error_is_a_bug_with_its_traceback(capsys):
    """A ValueError raised inside a library (here numpy's, a shape mismatch) is a bug and keeps
    its traceback; one raised by gptjax's own code is a refused value: one line, exit 1."""
    import numpy as np

    from experiments import cli
    from gptjax.data.pipeline import _processes

    def bug(argv):
        np.zeros(3).reshape(2, 2)

    def refused(argv):
        _processes(8, 5, 2)  # gptjax's own check: process_index=5 not in [0, 2)

    with pytest.raises(ValueError, match="cannot reshape"):
        cli.guard(bug, ["x"])
    with pytest.raises(SystemExit) as exit_:
        cli.guard(refused, ["x"])
    assert exit_.value.code == 1
    assert "error: process_index=5 not in [0, 2)" in capsys.readouterr().err
