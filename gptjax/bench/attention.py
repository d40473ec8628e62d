"""Attention kernels measured for speed and memory across sequence lengths and head layouts.

Every kernel in gptjax.model.kernels.KERNELS is picked up automatically. Memory is XLA's plan
for the compiled program (arguments + outputs + temporaries), which is what decides whether a
case fits; a case whose plan exceeds the memory available is recorded as out-of-memory
instead of being run, and an allocation failure at run time is recorded the same way.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp

from gptjax.model import kernels
from gptjax.model.masks import causal

LAYOUTS = {"mha": 1, "gqa": 4, "mqa": None}  # query heads per K/V head; None: all (MQA)


@dataclasses.dataclass
class Case:
    kernel: str
    seq_len: int
    layout: str
    pass_: str  # "fwd" or "fwd+bwd"
    status: str = "ok"  # ok | oom | unavailable | error
    compile_s: float | None = None
    time_ms: float | None = None
    memory_mib: float | None = None
    tflops: float | None = None
    note: str = ""


def available_memory_bytes() -> int:
    """Memory the benchmark may plan for: the accelerator's limit, or the host's free RAM."""
    device = jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def attention_flops(seq_len, heads, head_dim, batch, pass_):
    """Causal attention FLOPs: QK^T and PV are 2*T*T*D each, halved by the mask; bwd is 2.5x."""
    fwd = 2 * 2 * batch * heads * seq_len * seq_len * head_dim / 2
    return fwd if pass_ == "fwd" else fwd * 3.5


def measure(kernel_name, seq_len, layout, pass_, *, heads=12, head_dim=64, batch=1,
            dtype=jnp.float32, repeats=3, min_seconds=1.0, memory_budget=None) -> Case:
    """One kernel x length x layout x pass: compile time, XLA's planned memory, and the median
    of at least `repeats` timed runs and of as many as fill `min_seconds` (short cases take
    tens of runs, so their medians are not one scheduler hiccup)."""
    case = Case(kernel_name, seq_len, layout, pass_)
    try:  # a kernel this backend or dtype cannot run is a result, not a crash
        kernels.check_available(kernel_name, dtype=dtype)
    except ValueError as e:
        case.status, case.note = "unavailable", str(e).split(";")[0][:120]
        return case
    kv_heads = 1 if LAYOUTS[layout] is None else heads // LAYOUTS[layout]
    kernel = kernels.get_kernel(kernel_name)
    mask = causal(seq_len)
    q_shape = (batch, seq_len, heads, head_dim)
    kv_shape = (batch, seq_len, kv_heads, head_dim)

    def fwd(q, k, v):
        return kernel(q, k, v, mask)

    def fwd_bwd(q, k, v):
        return jax.grad(lambda q, k, v: jnp.sum(fwd(q, k, v)), argnums=(0, 1, 2))(q, k, v)

    fn = jax.jit(fwd if pass_ == "fwd" else fwd_bwd)
    spec = [jax.ShapeDtypeStruct(s, dtype) for s in (q_shape, kv_shape, kv_shape)]
    try:
        start = time.perf_counter()
        compiled = fn.lower(*spec).compile()
        case.compile_s = time.perf_counter() - start
    except (ValueError, NotImplementedError) as e:  # e.g. a head_dim cuDNN does not take
        case.status, case.note = "unavailable", str(e).split("\n")[0][:120]
        return case
    plan = compiled.memory_analysis()
    if plan is not None:
        planned = (plan.temp_size_in_bytes + plan.argument_size_in_bytes
                   + plan.output_size_in_bytes)
        case.memory_mib = planned / 2**20
        budget = memory_budget or available_memory_bytes()
        if planned > budget:
            case.status = "oom"
            case.note = f"plans {planned / 2**30:.1f} GiB > {budget / 2**30:.1f} GiB available"
            return case
    keys = jax.random.split(jax.random.key(0), 3)
    args = [jax.random.normal(k, s.shape, dtype) for k, s in zip(keys, spec)]
    try:
        jax.block_until_ready(compiled(*args))  # warm-up
        times = []
        while len(times) < repeats or (sum(times) < min_seconds and len(times) < 200):
            start = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            times.append(time.perf_counter() - start)
    except Exception as e:  # noqa: BLE001 -- an allocation failure is a result, not a crash
        if "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower():
            case.status, case.note = "oom", str(e).split("\n")[0][:120]
            return case
        case.status, case.note = "error", str(e).split("\n")[0][:120]
        return case
    seconds = statistics.median(times)
    case.time_ms = seconds * 1e3
    case.tflops = attention_flops(seq_len, heads, head_dim, batch, pass_) / seconds / 1e12
    return case


def run(kernel_names, lengths, layouts, passes=("fwd", "fwd+bwd"), *, log=print, **kw):
    cases = []
    for layout in layouts:
        for pass_ in passes:
            for name in kernel_names:
                gave_up = False  # once a kernel runs out of memory, longer lengths will too
                for n in lengths:
                    if gave_up:
                        cases.append(Case(name, n, layout, pass_, "oom", note="shorter length OOM"))
                    else:
                        cases.append(measure(name, n, layout, pass_, **kw))
                        gave_up = cases[-1].status == "oom"
                    log(_row(cases[-1]))
    return cases


def _row(c: Case) -> str:
    fmt = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731
    return (f"| {c.kernel} | {c.layout} | {c.pass_} | {c.seq_len} | {c.status} | "
            f"{fmt(c.time_ms, '.2f')} | {fmt(c.compile_s, '.2f')} | {fmt(c.memory_mib, '.1f')} | "
            f"{fmt(c.tflops, '.3f')} | {c.note} |")


def memory_ratios(cases, baseline="reference", kernel="blockwise", lengths=(4096, 8192, 16384)):
    """Planned fwd+bwd memory of `baseline` over `kernel` at the given lengths (MHA)."""
    out = {}
    by = {(c.kernel, c.seq_len): c for c in cases if c.layout == "mha" and c.pass_ == "fwd+bwd"}
    for n in lengths:
        a, b = by.get((baseline, n)), by.get((kernel, n))
        if a and b and a.memory_mib and b.memory_mib:
            out[n] = a.memory_mib / b.memory_mib
    return out


def speed_ratios(cases):
    """Per layout, pass and length where both ran: reference time / xla time (>= 1: xla is at
    least as fast) and blockwise time / xla time (<= 2: blockwise within 2x of xla)."""
    t = {(c.kernel, c.layout, c.pass_, c.seq_len): c.time_ms for c in cases if c.status == "ok"}
    rows = []
    for layout, pass_, n in sorted({k[1:] for k in t}):
        xla = t.get(("xla", layout, pass_, n))
        if xla is None:
            continue
        ref, blk = t.get(("reference", layout, pass_, n)), t.get(("blockwise", layout, pass_, n))
        rows.append((layout, pass_, n, None if ref is None else ref / xla,
                     None if blk is None else blk / xla))
    return rows


def write_report(cases, outdir, *, title="Attention kernels", command=""):
    """CSV, JSON, a markdown table and log-log plots of time and memory against length."""
    outdir = pathlib.Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rows = [dataclasses.asdict(c) for c in cases]
    with open(outdir / "attention.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (outdir / "attention.json").write_text(json.dumps(rows, indent=1))
    plots = _plot(cases, outdir)
    device = jax.devices()[0]
    lines = [f"# {title}", "", f"Device: {device.platform} ({device.device_kind}), "
             f"{jax.device_count()} device(s); batch 1, 12 query heads of 64, float32, causal.",
             "Memory is XLA's plan for the compiled program (arguments + outputs + temporaries).",
             ""]
    if command:
        lines += ["Command:", "", f"    {command}", ""]
    ratios = memory_ratios(cases)
    if ratios:
        lines += ["Planned fwd+bwd memory, reference / blockwise (MHA): " + ", ".join(
            f"{n // 1024}k: {r:.1f}x" for n, r in ratios.items()), ""]
    speed = speed_ratios(cases)
    if speed:
        fmt = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
        lines += ["Speed against xla (time ratios; reference / xla >= 1 means xla is at least as "
                  "fast, blockwise / xla <= 2 means blockwise is within 2x of xla):", "",
                  "| heads | pass | seq_len | reference / xla | blockwise / xla |",
                  "|---|---|---|---|---|"]
        lines += [f"| {a} | {b} | {n} | {fmt(r)} | {fmt(k)} |" for a, b, n, r, k in speed]
        lines += [""]
    lines += ["| kernel | heads | pass | seq_len | status | time (ms) | compile (s) | "
              "memory (MiB) | TFLOP/s | note |", "|" + "---|" * 10]
    lines += [_row(c) for c in cases]
    lines += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    (outdir / "attention.md").write_text("\n".join(lines) + "\n")
    return outdir / "attention.md"


def _plot(cases, outdir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for metric, label in (("time_ms", "time (ms)"), ("memory_mib", "planned memory (MiB)")):
        layouts = sorted({c.layout for c in cases})
        fig, axes = plt.subplots(1, len(layouts), figsize=(5 * len(layouts), 4), squeeze=False)
        for ax, layout in zip(axes[0], layouts):
            for name in sorted({c.kernel for c in cases}):
                for pass_, style in (("fwd", "--"), ("fwd+bwd", "-")):
                    pts = [(c.seq_len, getattr(c, metric)) for c in cases
                           if c.kernel == name and c.layout == layout and c.pass_ == pass_
                           and getattr(c, metric) is not None
                           and (c.status == "ok" or metric == "memory_mib")]
                    if pts:
                        ax.plot(*zip(*pts), style, marker="o", label=f"{name} {pass_}")
            ax.set(xscale="log", yscale="log", xlabel="sequence length", ylabel=label,
                   title=layout.upper())
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = outdir / f"attention_{metric.split('_')[0]}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
