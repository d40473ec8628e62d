"""Attention kernels measured for speed and memory across sequence lengths and head layouts.

Every kernel in gptjax.model.kernels.KERNELS is picked up automatically. Memory is XLA's plan
for the compiled program (arguments + outputs + temporaries), which is what decides whether a
case fits. A case whose plan exceeds the memory available is recorded as out-of-memory instead
of being run. XLA:CPU's fused library calls allocate scratch of their own, up to as much again
as the plan (measured with the process's peak RSS), so on a CPU a case planning over half the
memory available first runs in a child process, and the OS killing it for memory is recorded
too, rather than ending the benchmark; an allocation failure at run time is recorded the same
way.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import multiprocessing
import os
import pathlib
import statistics
import time
from concurrent import futures

import jax
import jax.numpy as jnp

from gptjax.bench.host import cpu_model
from gptjax.model import kernels
from gptjax.model.masks import causal
from gptjax.training.memory import planned_bytes

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
    memory_mib: float | None = None  # XLA's plan
    tflops: float | None = None
    note: str = ""
    rounds_ms: list[float] | None = None  # each timed run, in rounds shared with the others


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


def measure(kernel_name, seq_len, layout, pass_, **kw) -> Case:
    """One kernel x length x layout x pass on its own (see `measure_together`)."""
    return measure_together([kernel_name], seq_len, layout, pass_, **kw)[0]


def measure_together(kernel_names, seq_len, layout, pass_, *, heads=12, head_dim=64, batch=1,
                     dtype=jnp.float32, repeats=3, min_seconds=1.0,
                     memory_budget=None) -> list[Case]:
    """Kernels on the same inputs: compile time, XLA's planned memory, and timed runs taken in
    rounds (one run of each kernel per round, each round starting with the next), so a slow
    spell of the machine hits all of them alike and their per-round ratios compare like with
    like. At least `repeats` rounds, and as many as fill `min_seconds` per kernel (short cases
    take tens of rounds).

    fwd+bwd is the vector-Jacobian product of a random output cotangent, as in training. A
    constant one (the gradient of sum(out)) is not that workload: XLA need not store it and may
    fold it into the backward's products.
    """
    dtype = jnp.dtype(dtype)
    kv_heads = 1 if LAYOUTS[layout] is None else heads // LAYOUTS[layout]
    q_shape = (batch, seq_len, heads, head_dim)
    kv_shape = (batch, seq_len, kv_heads, head_dim)
    shapes = [q_shape, kv_shape, kv_shape] + ([q_shape] if pass_ == "fwd+bwd" else [])
    spec = [jax.ShapeDtypeStruct(s, dtype) for s in shapes]
    budget = memory_budget or available_memory_bytes()
    cases, runners = [], {}
    for name in kernel_names:
        case = Case(name, seq_len, layout, pass_)
        cases.append(case)
        compiled = _compile(case, spec, dtype, budget)
        if compiled is not None:
            runners[name] = compiled
    args = _inputs(spec)
    times = {name: [] for name in runners}
    warm = set()  # the first run of each kernel is its warm-up, not timed
    by_name = {c.kernel: c for c in cases}
    turn = 0
    while runners:
        order = list(runners.items())
        turn += 1  # each round starts with the next kernel, so none always runs first
        for name, compiled in order[turn % len(order):] + order[:turn % len(order)]:
            try:
                start = time.perf_counter()
                jax.block_until_ready(compiled(*args))
                elapsed = time.perf_counter() - start
            except Exception as e:  # noqa: BLE001 -- an allocation failure is a result
                by_name[name].status = "oom" if _is_oom(e) else "error"
                by_name[name].note = str(e).split("\n")[0][:120]
                del runners[name], times[name]
                continue
            if name in warm:
                times[name].append(elapsed)
            warm.add(name)
        enough = [len(t) >= repeats and (sum(t) >= min_seconds or len(t) >= 200)
                  for t in times.values()]
        if all(enough):
            break
    for name, t in times.items():
        case = by_name[name]
        seconds = statistics.median(t)
        case.rounds_ms = [x * 1e3 for x in t]
        case.time_ms = seconds * 1e3
        case.tflops = attention_flops(seq_len, heads, head_dim, batch, pass_) / seconds / 1e12
    return cases


def _is_oom(e: Exception) -> bool:
    return "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower()


def _program(kernel_name, seq_len, pass_):
    """The jitted call a case times: the kernel under a causal mask, or its VJP."""
    kernel = kernels.get_kernel(kernel_name)
    mask = causal(seq_len)

    def fwd(q, k, v):
        return kernel(q, k, v, mask)

    def fwd_bwd(q, k, v, dout):
        return jax.vjp(fwd, q, k, v)[1](dout)

    return jax.jit(fwd if pass_ == "fwd" else fwd_bwd)


def _inputs(spec):
    keys = jax.random.split(jax.random.key(0), len(spec))
    return [jax.random.normal(k, s.shape, s.dtype) for k, s in zip(keys, spec)]


def _trial_run(kernel_name, seq_len, pass_, spec):
    """Run in a child process: compile the case and call it once."""
    try:  # when memory runs out, the OS is to kill this child rather than the benchmark
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass
    compiled = _program(kernel_name, seq_len, pass_).lower(*spec).compile()
    jax.block_until_ready(compiled(*_inputs(spec)))


def _in_child(fn, *args):
    """(True, fn(*args)) from a fresh spawned process, or (False, None) if that process died
    (killed by the OS for memory, or aborted). Exceptions fn raises are raised here."""
    context = multiprocessing.get_context("spawn")  # a forked JAX process is not safe
    with futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        try:
            return True, pool.submit(fn, *args).result()
        except futures.process.BrokenProcessPool:
            return False, None


def _compile(case, spec, dtype, budget):
    """The compiled kernel, or None with case.status saying why it cannot run."""
    try:  # a kernel this backend or dtype cannot run is a result, not a crash
        kernels.check_available(case.kernel, dtype=dtype)
    except ValueError as e:
        case.status, case.note = "unavailable", str(e).split(";")[0][:120]
        return None
    fn = _program(case.kernel, case.seq_len, case.pass_)
    try:
        start = time.perf_counter()
        compiled = fn.lower(*spec).compile()
        case.compile_s = time.perf_counter() - start
    except (ValueError, NotImplementedError) as e:  # e.g. a head_dim cuDNN does not take
        case.status, case.note = "unavailable", str(e).split("\n")[0][:120]
        return None
    plan = compiled.memory_analysis()
    if plan is not None:
        planned = planned_bytes(plan)  # nothing is donated: arguments + outputs + temporaries
        case.memory_mib = planned / 2**20
        if planned > budget:
            case.status = "oom"
            case.note = f"plans {planned / 2**30:.1f} GiB > {budget / 2**30:.1f} GiB available"
            return None
        if planned > budget / 2 and jax.default_backend() == "cpu":
            # XLA:CPU can hold up to 2x its plan: a first run where dying costs nothing
            try:
                survived, _ = _in_child(_trial_run, case.kernel, case.seq_len, case.pass_,
                                        spec)
            except Exception as e:  # noqa: BLE001 -- an allocation failure is a result
                case.status = "oom" if _is_oom(e) else "error"
                case.note = str(e).split("\n")[0][:120]
                return None
            if not survived:
                case.status = "oom"
                case.note = (f"killed by the OS in a trial run (plans {planned / 2**30:.1f} GiB "
                             f"of {budget / 2**30:.1f} GiB available)")
                return None
    return compiled


def run(kernel_names, lengths, layouts, passes=("fwd", "fwd+bwd"), *, log=print, **kw):
    """Every kernel x length x layout x pass; the kernels of one length are timed together."""
    cases = []
    for layout in layouts:
        for pass_ in passes:
            gave_up = set()  # once a kernel runs out of memory, longer lengths will too
            for n in lengths:
                live = [name for name in kernel_names if name not in gave_up]
                measured = {c.kernel: c for c in measure_together(live, n, layout, pass_, **kw)}
                for name in kernel_names:
                    case = measured.get(name) or Case(name, n, layout, pass_, "oom",
                                                      note="shorter length OOM")
                    gave_up |= {name} if case.status == "oom" else set()
                    cases.append(case)
                    log(row(case))
    order = {name: i for i, name in enumerate(kernel_names)}
    return sorted(cases, key=lambda c: (layouts.index(c.layout), passes.index(c.pass_),
                                        order[c.kernel], c.seq_len))


def header(peak_tflops: float | None = None) -> str:
    """The markdown table's header, for the rows `row` writes."""
    share = " % of peak |" if peak_tflops else ""
    return ("| kernel | heads | pass | seq_len | status | time (ms) | compile (s) | "
            f"memory (MiB) | TFLOP/s |{share} note |\n" + "|" + "---|" * (11 if share else 10))


def row(c: Case, peak_tflops: float | None = None) -> str:
    fmt = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731
    share = "" if peak_tflops is None else \
        f" {fmt(c.tflops and 100 * c.tflops / peak_tflops, '.1f')} |"
    return (f"| {c.kernel} | {c.layout} | {c.pass_} | {c.seq_len} | {c.status} | "
            f"{fmt(c.time_ms, '.2f')} | {fmt(c.compile_s, '.2f')} | {fmt(c.memory_mib, '.1f')} | "
            f"{fmt(c.tflops, '.3f')} |{share} {c.note} |")


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
    least as fast) and blockwise time / xla time (<= 2: blockwise within 2x of xla), each the
    median over the rounds they were timed in together, with the rounds' (min, max)."""
    by = {(c.kernel, c.layout, c.pass_, c.seq_len): c.rounds_ms for c in cases
          if c.status == "ok"}
    rows = []
    for layout, pass_, n in sorted({k[1:] for k in by}):
        xla = by.get(("xla", layout, pass_, n))
        if xla is None:
            continue
        ratios = []
        for other in ("reference", "blockwise"):
            mine = by.get((other, layout, pass_, n))
            paired = None if mine is None else [a / b for a, b in zip(mine, xla)]
            ratios.append(None if not paired else
                          (statistics.median(paired), min(paired), max(paired)))
        rows.append((layout, pass_, n, *ratios))
    return rows


def write_report(cases, outdir, *, title="Attention kernels", command="", heads=12,
                 head_dim=64, dtype="float32", peak_tflops=None):
    """CSV, JSON (with every timed round), a markdown table and log-log plots of time and
    memory against length. heads, head_dim, dtype: what `run` was given; peak_tflops: the
    chip's peak for that dtype, to give each case's share of it (causal FLOPs, see
    attention_flops)."""
    outdir = pathlib.Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rows = [dataclasses.asdict(c) for c in cases]
    with open(outdir / "attention.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k != "rounds_ms"],
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (outdir / "attention.json").write_text(json.dumps(rows, indent=1))
    plots = _plot(cases, outdir)
    device = jax.devices()[0]
    lines = [f"# {title}", "", f"Device: {device.platform} ({device.device_kind}), "
             f"{jax.device_count()} device(s), host CPU {cpu_model()}; batch 1, {heads} query "
             f"heads of {head_dim}, {jnp.dtype(dtype).name}, causal.",
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
        fmt = lambda r: "-" if r is None else f"{r[0]:.2f} ({r[1]:.2f}-{r[2]:.2f})"  # noqa: E731
        lines += ["Speed against xla: time ratios, the median over rounds in which the kernels "
                  "ran one after another on the same inputs (min-max over rounds). "
                  "reference / xla >= 1 means xla is at least as fast; blockwise / xla <= 2 "
                  "means blockwise is within 2x of xla.", "",
                  "| heads | pass | seq_len | reference / xla | blockwise / xla |",
                  "|---|---|---|---|---|"]
        lines += [f"| {a} | {b} | {n} | {fmt(r)} | {fmt(k)} |" for a, b, n, r, k in speed]
        ref = [r[0] for *_, r, _ in speed if r is not None]
        blk = [k[0] for *_, k in speed if k is not None]
        lines += ["", f"Medians: xla at least as fast as reference in {sum(x >= 1 for x in ref)} "
                  f"of {len(ref)} cases; blockwise within 2x of xla in "
                  f"{sum(x <= 2 for x in blk)} of {len(blk)}.", ""]
    if peak_tflops:
        lines += [f"% of peak: TFLOP/s against the {peak_tflops:g} TFLOP/s given as the "
                  "chip's peak.", ""]
    lines += [header(peak_tflops)] + [row(c, peak_tflops) for c in cases]
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
