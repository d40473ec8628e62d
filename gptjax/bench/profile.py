"""Where a compiled train step's (or a generate call's) time goes, op by op, on any backend.

`profile_step(cfg, steps)` compiles the config's train step as the loop lays it out
(bench/train.py `compiled_step`), traces `steps` steps with jax.profiler and reads the trace
back with jax.profiler.ProfileData. An event whose name is an instruction of the compiled HLO
(XLA:CPU's worker threads with --xla_cpu_enable_xprof_traceme, a GPU's op line) is looked up
there for its shape, the JAX operation it came from, a category (matmul, collective,
copy/transpose, reduction, elementwise), its FLOPs and bytes; the times are summed per step and
averaged over the program's devices (a runtime may run one device's ops on several threads, so
trace lines are not devices). `summarize` is the pure part (the compiled HLO text and the
events -> the figures), so it is tested without a trace.

A collective's time includes waiting for the slowest device, so on a CPU host it also measures
how unevenly the devices' threads got the cores. Busy time is the union of each trace line's op
intervals; idle is the step's wall time less the busy time per device: dispatch gaps between
steps and time the OS gave to other threads.
"""

from __future__ import annotations

import collections
import glob
import math
import re
import tempfile
import time
from typing import Any, Iterable

import jax

from gptjax.bench.train import compiled_step
from gptjax.config import Config
from gptjax.generation import api as generation
from gptjax.model import split

CPU_TRACE_FLAG = "--xla_cpu_enable_xprof_traceme=true"  # XLA:CPU emits its ops' events
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
CATEGORIES = ("matmul", "elementwise", "reduction", "copy/transpose", "collective", "other")

_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\(.*?\)|\S+) ([\w\-]+)\((.*)$")
_DIMS = re.compile(r"\[([\d,]*)\]")
_ARRAYS = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
          "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}


def _nbytes(shape: str) -> int:
    """Bytes of every array in an HLO shape ('f32[8,4]{1,0}', a tuple of them)."""
    return sum(_BYTES.get(t, 4) * math.prod(int(d) for d in dims.split(",") if d)
               for t, dims in _ARRAYS.findall(shape))


def _dims(shape: str) -> list[int]:
    m = _DIMS.search(shape)
    return [int(d) for d in m.group(1).split(",") if d] if m else []


def parse_hlo(text: str) -> dict[str, dict[str, Any]]:
    """Compiled HLO text -> {instruction name: {shape, opcode, op (the JAX operation), category,
    flops (a dot's or a fusion's dots', else 0), bytes (its operands' and result's: what it
    reads and writes at most)}}."""
    comps: dict[str, dict[str, Any]] = {}  # computation -> {opcodes, flops, param_bytes}
    instrs: dict[str, dict[str, Any]] = {}
    shapes: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        head = _COMPUTATION.match(line)
        if head and " = " not in line:
            current = comps.setdefault(head.group(1),
                                       {"opcodes": set(), "flops": 0, "param_bytes": 0})
            continue
        m = _INSTRUCTION.match(line)
        if not m or current is None:
            continue
        name, shape, opcode, rest = m.groups()
        shapes[name] = shape
        current["opcodes"].add(opcode)
        if opcode == "parameter":
            current["param_bytes"] += _nbytes(shape)
        flops = 0
        if opcode == "dot":
            lhs = re.match(r"\s*%?([\w.\-]+)", rest)
            contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest)
            lhs_dims = _dims(shapes.get(lhs.group(1), "")) if lhs else []
            k = math.prod(lhs_dims[int(i)] for i in contracting.group(1).split(",") if i
                          ) if contracting and lhs_dims else 0
            flops = 2 * math.prod(_dims(shape)) * k
            current["flops"] += flops
        op = re.search(r'op_name="([^"]*)"', rest)
        calls = re.search(r"calls=%?([\w.\-]+)", rest)
        operands = re.findall(r"%([\w.\-]+)", rest[:rest.find(")")])
        instrs[name] = {"shape": re.sub(r"\{[^}]*\}", "", shape), "opcode": opcode,
                        "op": op.group(1) if op else opcode, "calls": calls and calls.group(1),
                        "flops": flops, "bytes": _nbytes(shape) + sum(
                            _nbytes(shapes.get(o, "")) for o in operands)}
    for name, ins in instrs.items():
        called = comps.get(ins.pop("calls") or "", {"opcodes": set(), "flops": 0,
                                                   "param_bytes": 0})
        ins["flops"] = ins["flops"] or called["flops"]
        if called["param_bytes"]:  # a fusion: what its parameters read, and its result
            ins["bytes"] = called["param_bytes"] + _nbytes(ins["shape"])
        ins["category"] = _category(name, ins["opcode"], called["opcodes"])
    return instrs


def _category(name: str, opcode: str, inner: set[str]) -> str:
    ops = inner | {opcode}
    if any(o.startswith(COLLECTIVES) for o in ops):
        return "collective"
    if ops & {"dot", "convolution"}:
        return "matmul"
    if opcode in ("copy", "transpose") or name.startswith(("copy", "transpose")):
        return "copy/transpose"
    if ops & {"reduce", "reduce-window"}:
        return "reduction"
    if opcode == "fusion" or inner:
        return "elementwise"
    return "other"


def _union(intervals: list[tuple[int, int]]) -> int:
    total, end = 0, None
    for s, e in sorted(intervals):
        if end is None or s > end:
            total, end = total + (e - s), e
        elif e > end:
            total, end = total + (e - end), e
    return total


def _short(op: str) -> str:
    """'jit(on_leaves)/shard_map/transpose(jvp())/dot_general' -> 'transpose(jvp())/dot_general'."""
    return "/".join(p for p in op.split("/") if not p.startswith(("jit(", "shard_map", "pmap(")))


def summarize(hlo_text: str, lines: Iterable[tuple[str, list[tuple[str, int, int]]]], *,
              steps: int, wall_s: float, devices: int, top: int = 25) -> dict[str, Any]:
    """The figures of `steps` traced steps of a program on `devices` devices that took
    `wall_s`: `lines` are a trace's (line name, [(event name, start_ns, end_ns)]); the events
    named after the compiled HLO's instructions are the devices' ops, per device the mean over
    the devices (a runtime may run one device's ops on several threads, so lines are not
    devices)."""
    instrs = parse_hlo(hlo_text)
    active = []
    for line_name, events in lines:
        ops = [(n, s, e) for n, s, e in events if n in instrs]
        if ops:
            active.append((line_name, ops))
    if not active:
        raise ValueError("the trace holds no event named after an instruction of the step's HLO "
                         f"(on a CPU, XLA_FLAGS={CPU_TRACE_FLAG} makes XLA:CPU emit them)")
    wall_ms = 1e3 * wall_s / steps
    per_category = collections.Counter()
    groups: dict[tuple, list[float]] = collections.defaultdict(lambda: [0.0, 0, 0, 0])
    busy = {}
    for line_name, ops in active:
        busy[line_name] = _union([(s, e) for _, s, e in ops]) / 1e6 / steps
        for n, s, e in ops:
            ins = instrs[n]
            ms = (e - s) / 1e6 / steps / devices  # per step, the mean over the devices
            per_category[ins["category"]] += ms
            g = groups[(ins["category"], ins["shape"], _short(ins["op"]))]
            g[0] += ms
            g[1] += 1 / steps / devices
            g[2] += ins["flops"] / steps / devices
            g[3] += ins["bytes"] / steps / devices
    busy_ms = sum(busy.values()) / devices
    matmul_ms = per_category["matmul"]
    matmul_flops = sum(v[2] for (c, _, _), v in groups.items() if c == "matmul")
    rows = sorted(groups.items(), key=lambda kv: -kv[1][0])[:top]
    return {
        "steps": steps, "devices": devices, "wall_ms_per_step": wall_ms,
        "busy_ms_per_step": busy_ms,
        "busy_ms_per_line": {k: v for k, v in busy.items() if v >= 0.01 * busy_ms},
        "idle_ms_per_step": wall_ms - busy_ms,
        "categories_ms": {c: per_category.get(c, 0.0) for c in CATEGORIES},
        "matmul_flops_per_device": matmul_flops,  # per step, of the matmuls that ran
        "matmul_bytes_per_device": sum(v[3] for (c, _, _), v in groups.items() if c == "matmul"),
        "matmul_gflops_per_device": matmul_flops / (matmul_ms * 1e6) if matmul_ms else None,
        "top": [{"category": c, "shape": shape, "op": op, "ms_per_step": v[0],
                 "calls_per_step": v[1],
                 "gflops": v[2] / (v[0] * 1e6) if v[2] and v[0] else None,
                 "gbytes_per_sec": v[3] / (v[0] * 1e6) if v[3] and v[0] else None}
                for (c, shape, op), v in rows],
    }


def trace_lines(trace_dir: str) -> list[tuple[str, list[tuple[str, int, int]]]]:
    """Every line of the trace jax.profiler wrote to `trace_dir`: (plane/line, events)."""
    files = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)
    if not files:
        raise FileNotFoundError(f"jax.profiler wrote no trace under {trace_dir}")
    data = jax.profiler.ProfileData.from_file(files[0])
    return [(f"{plane.name}/{line.name}", [(e.name, e.start_ns, e.end_ns) for e in line.events])
            for plane in data.planes for line in plane.lines]


def traced(run) -> tuple[float, list]:
    """run() (it returns its seconds) under jax.profiler: (its seconds, trace_lines)."""
    options = jax.profiler.ProfileOptions()
    options.python_tracer_level = 0  # the Python tracer would slow the dispatching thread
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, profiler_options=options):
            seconds = run()
        return seconds, trace_lines(tmp)


def profile_step(cfg: Config, *, steps: int = 20, warmup: int = 5,
                 top: int = 25) -> dict[str, Any]:
    """Trace `steps` compiled train steps of `cfg` (resolved vocabulary) after `warmup` ones
    and summarize where their time went."""
    step, leaves, batches, k = compiled_step(cfg)  # k steps to a call (train.steps_per_call)
    calls = max(steps // k, 1)
    steps = calls * k
    for i in range(max(warmup // k, 1)):
        leaves, m = step(leaves, batches[i % len(batches)])
    jax.block_until_ready((leaves, m))
    hlo = step.lower(leaves, batches[0]).compile().as_text()

    def run_steps():
        nonlocal leaves
        t0 = time.perf_counter()
        for i in range(calls):
            leaves, m = step(leaves, batches[i % len(batches)])
        jax.block_until_ready((leaves, m))
        return time.perf_counter() - t0

    untraced = run_steps()
    wall, lines = traced(run_steps)
    devices = len(jax.tree.leaves(leaves)[0].sharding.device_set)
    result = summarize(hlo, lines, steps=steps, wall_s=wall, devices=devices, top=top)
    result["untraced_ms_per_step"] = 1e3 * untraced / steps
    result["backend"] = jax.default_backend()
    result["tokens_per_step"] = cfg.data.batch_size * cfg.data.seq_len
    result["vocab_size"] = cfg.model.padded_vocab  # the LM head's width
    result["program"] = "train step" + (f" ({k} steps to a call)" if k > 1 else "")
    return result


def profile_generate(model, prompt: list[int], *, new_tokens: int = 100,
                     top: int = 25, **options) -> dict[str, Any]:
    """Trace one `model.generate(prompt, max_new_tokens=new_tokens, **options)` (greedy by
    default; no eos, so exactly new_tokens tokens) after an untimed one, and summarize where its
    time went per new token (the prefill included, as a user waits for it)."""
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, eos_token_id=None,
                  **options)
    hlo = generation.lower(model, prompt, **kwargs).compile().as_text()

    def run_once():
        t0 = time.perf_counter()
        generation.generate(model, prompt, **kwargs)
        return time.perf_counter() - t0

    run_once()  # compile
    untraced = run_once()
    wall, lines = traced(run_once)
    result = summarize(hlo, lines, steps=new_tokens, wall_s=wall, devices=1, top=top)
    result["untraced_ms_per_step"] = 1e3 * untraced / new_tokens
    result["backend"] = jax.default_backend()
    result["program"] = (f"generate: {new_tokens} new tokens after {len(prompt)}, "
                         f"{options or 'greedy'}")
    result["param_bytes"] = sum(x.nbytes for x in jax.tree.leaves(split(model)[1]))
    return result


def write_report(result: dict[str, Any], path: str, *, command: str, machine: str) -> str:
    """A markdown table of `result` at `path` (and its JSON beside it); returns the path."""
    import json

    cats = result["categories_ms"]
    busy = result["busy_ms_per_step"]
    gf = result["matmul_gflops_per_device"]
    lines = [
        f"# Where the time goes: {result['program']}", "", f"`{command}`", "", machine, "",
        ("A step here is one new token. " if result["program"].startswith("generate") else "")
        + f"{result['steps']} traced steps on {result['devices']} device(s) "
        f"({result['backend']}): {result['wall_ms_per_step']:.1f} ms a step under the profiler "
        f"({result['untraced_ms_per_step']:.1f} ms without it), {busy:.1f} ms of it in the "
        f"step's ops per device, {result['idle_ms_per_step']:.1f} ms idle (trace lines: "
        f"{', '.join(f'{v:.1f}' for v in result['busy_ms_per_line'].values())} ms busy). "
        + ("A collective's time includes waiting for the slowest device. "
           if cats.get("collective") else "") + "Matmuls run at "
        + (f"{gf:.0f} GFLOP/s per device." if gf else "(no matmul timed)."), "",
        "| category | ms/step | share of the ops' time |", "|---|---:|---:|"]
    total = sum(cats.values()) or 1.0
    lines += [f"| {c} | {v:.2f} | {100 * v / total:.0f}% |" for c, v in cats.items() if v]
    lines += ["", "GB/s counts every operand and the result whole, an upper bound on the "
              "traffic: an op that reads a slice of a large operand shows more than memory can "
              "deliver.", "",
              "| op (JAX operation) | category | shape | ms/step | calls/step | GFLOP/s | "
              "GB/s |", "|---|---|---|---:|---:|---:|---:|"]
    for r in result["top"]:
        rate = "" if r["gflops"] is None else f"{r['gflops']:.0f}"
        bw = "" if r["gbytes_per_sec"] is None else f"{r['gbytes_per_sec']:.1f}"
        lines.append(f"| `{r['op']}` | {r['category']} | {r['shape']} | {r['ms_per_step']:.2f} | "
                     f"{r['calls_per_step']:.1f} | {rate} | {bw} |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(re.sub(r"\.md$", "", path) + ".json", "w") as f:
        json.dump(result, f, indent=1)
    return path
