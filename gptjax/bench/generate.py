"""Generation throughput: gptjax's compiled decode loop against Hugging Face transformers.

Both run the same request on a GPT-2 124M-shaped model (random weights unless a checkpoint is
given): a short prompt, greedy for 200 new tokens (batch 1) and beam search with 5 beams for 50
new tokens, eos disabled so every run produces exactly that many tokens. Runs of the two
libraries alternate, so that load from other processes hits both alike; tokens/s is new tokens
(per prompt) over wall time, median of the repeats. gptjax's first call is reported separately
as compile time.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import time
from typing import Any, Callable

from flax import nnx

from gptjax.bench.train import machine, machine_line
from gptjax.config import ModelConfig
from gptjax.generation import generate
from gptjax.interop import hf
from gptjax.model import GPT

CASES = {"greedy": dict(max_new_tokens=200, num_beams=1),
         "beam5": dict(max_new_tokens=50, num_beams=5)}
TARGETS = {"greedy": 1.6, "beam5": 2.0}  # issue 3: speed-up over Hugging Face to reach


def gptjax_model(checkpoint: str | None = None, seed: int = 0):
    """A GPT-2 124M-shaped gptjax model: loaded from `checkpoint`, else randomly initialised."""
    if checkpoint:
        return hf.from_pretrained(checkpoint)
    return GPT(ModelConfig(), rngs=nnx.Rngs(seed))


def hf_model(checkpoint: str | None = None, seed: int = 0):
    """transformers' GPT2LMHeadModel of the same shape, or None when it is not installed."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import torch
        import transformers
    except ImportError:
        return None
    torch.manual_seed(seed)
    if checkpoint:
        return transformers.GPT2LMHeadModel.from_pretrained(checkpoint).eval()
    return transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()


def _timed(fn: Callable[[], int]) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = fn()
    return time.perf_counter() - t0, n


def run(prompt: list[int], *, checkpoint: str | None = None, repeats: int = 3,
        cases: dict[str, dict] | None = None, with_hf: bool = True,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure every case; returns {'machine', 'prompt_tokens', 'cases': {name: numbers}}."""
    cases = cases or CASES
    model = gptjax_model(checkpoint)
    hf = hf_model(checkpoint) if with_hf else None
    results: dict[str, Any] = {"machine": machine(), "prompt_tokens": len(prompt), "cases": {}}
    if hf is not None:
        import torch
        import transformers

        threads = torch.get_num_threads()
        results["machine"].update(
            torch=torch.__version__, transformers=transformers.__version__,
            torch_threads=threads, torch_note=f"{threads} threads, transformers "
            f"{transformers.__version__}")
    elif with_hf:
        log("transformers or torch is not installed: measuring gptjax alone "
            "(`pip install torch==2.13.0 transformers` to run it side by side)")

    for name, kw in cases.items():
        kw = dict(kw, eos_token_id=None)

        def ours():
            out = generate(model, prompt, **kw)
            return out.shape[1] - len(prompt)

        def theirs():
            import torch

            with torch.no_grad():
                out = hf.generate(torch.tensor([prompt]), do_sample=False, pad_token_id=0,
                                  attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                  **kw)
            return out.shape[1] - len(prompt)

        first, n = _timed(ours)
        row: dict[str, Any] = {**kw, "new_tokens": n}
        ours_s, theirs_s = [], []
        if hf is not None:
            _timed(theirs)  # warm-up (allocations, thread pools)
        for _ in range(repeats):
            ours_s.append(_timed(ours)[0])
            if hf is not None:
                theirs_s.append(_timed(theirs)[0])
        med = statistics.median(ours_s)
        row.update(gptjax_tokens_per_sec=n / med, gptjax_tokens_per_sec_best=n / min(ours_s),
                   gptjax_seconds=ours_s, compile_seconds=first - med)
        line = (f"{name}: gptjax {n / med:.1f} tok/s (best {n / min(ours_s):.1f}), "
                f"compile {first - med:.1f} s")
        if theirs_s:
            hmed = statistics.median(theirs_s)
            row.update(hf_tokens_per_sec=n / hmed, hf_tokens_per_sec_best=n / min(theirs_s),
                       hf_seconds=theirs_s, speedup=hmed / med, target=TARGETS.get(name))
            line += f"; transformers {n / hmed:.1f} tok/s; speed-up {hmed / med:.2f}x"
        results["cases"][name] = row
        log(line)
    results["machine"]["load_average_after"] = os.getloadavg()
    return results


def write_report(results: dict[str, Any], path: str | os.PathLike, *, command: str) -> str:
    """Markdown table at `path` and the raw numbers as JSON beside it; returns the markdown."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    m = results["machine"]
    lines = [
        "# Generation speed: gptjax vs Hugging Face transformers (CPU)", "",
        f"`{command}`", "",
        f"GPT-2 124M shape, fp32, prompt of {results['prompt_tokens']} tokens, eos disabled.",
        "", f"Machine: {machine_line(m)}",
        "" if "transformers" in m else "\ntransformers was not measured (not installed, or "
        "--nohf): `pip install torch==2.13.0 transformers` to run it side by side.", "",
        "| case | new tokens | gptjax tok/s | transformers tok/s | speed-up | target | "
        "gptjax compile (s) |",
        "|---|---|---|---|---|---|---|"]
    for name, r in results["cases"].items():
        ours = f"{r['gptjax_tokens_per_sec']:.1f} (best {r['gptjax_tokens_per_sec_best']:.1f})"
        hf = speedup = "n/a"
        if "hf_tokens_per_sec" in r:
            hf = f"{r['hf_tokens_per_sec']:.1f} (best {r['hf_tokens_per_sec_best']:.1f})"
            best = r["gptjax_tokens_per_sec_best"] / r["hf_tokens_per_sec_best"]
            speedup = f"{r['speedup']:.2f}x (best/best {best:.2f}x)"
        target = f"{TARGETS[name]:.1f}x" if name in TARGETS else ""
        beams = f"{r['num_beams']} beams" if r["num_beams"] > 1 else "greedy"
        lines.append(f"| {beams}, batch 1 | {r['new_tokens']} | {ours} | {hf} | {speedup} | "
                     f"{target} | {r['compile_seconds']:.1f} |")
    lines += ["", "tokens/s = new tokens of the prompt / wall seconds of one generate call, median "
              "(and best) of the repeats; runs of the two libraries alternate, so both see the "
              "same load; compile = first call minus a steady call."]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    path.with_suffix(".json").write_text(json.dumps({"command": command, **results},
                                                    indent=2, default=float) + "\n")
    return text


def default_prompt() -> list[int]:
    """GPT-2 ids of the background article's prompt, "The quick brown fox jumps over the"."""
    return [464, 2068, 7586, 21831, 18045, 625, 262]
