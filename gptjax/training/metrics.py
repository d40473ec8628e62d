"""What a run reports: FLOPs per token, MFU against a table of chips, a Meter that averages and
times a logging window, and a writer for metrics.jsonl + TensorBoard events."""

from __future__ import annotations

import json
import math
import os
import pathlib
import time
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging

from gptjax.config import ModelConfig

# Dense bf16 peak FLOP/s per device, from the vendors' data sheets. Matched as a substring of
# jax's device_kind, longest first ("TPU v5 lite" before "TPU v5").
PEAK_FLOPS: dict[str, float] = {
    "TPU v2": 45e12, "TPU v3": 123e12, "TPU v4": 275e12, "TPU v5 lite": 197e12,
    "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v5": 459e12, "TPU v6 lite": 918e12,
    "TPU v6e": 918e12, "TPU7x": 2307e12,
    "V100": 125e12, "A100": 312e12, "A10G": 70e12, "A10": 125e12, "L4": 121e12,
    "L40S": 362e12, "H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "H800": 989e12,
    "GH200": 989e12, "B200": 2250e12, "RTX 4090": 165e12, "RTX 3090": 71e12,
}


def peak_flops(device_kind: str, declared: float | None = None) -> float | None:
    """Per-device peak FLOP/s: the declared figure (train.peak_flops) or the table's; None if
    neither is known (CPUs), and then MFU is not reported."""
    if declared:
        return float(declared)
    for name in sorted(PEAK_FLOPS, key=len, reverse=True):
        if name.lower() in device_kind.lower():
            return PEAK_FLOPS[name]
    return None


def matmul_params(params, cfg: ModelConfig) -> int:
    """N in 6N: parameters that take part in a matmul per token.

    All parameters except learned position embeddings (wpe), and except the token embedding (wte)
    when it is not tied to the LM head (then it is a lookup, no FLOPs). Tied, the LM head is the
    token embedding, so it counts, as in nanoGPT's estimate_mfu and PaLM's appendix B.
    `params` may be abstract (jax.ShapeDtypeStruct leaves).
    """
    skip = {"wpe"} | (set() if cfg.tie_embeddings else {"wte"})
    n = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        names = {getattr(k, "key", None) for k in path}
        if not names & skip:
            n += math.prod(leaf.shape)
    return n


def flops_per_token(n_matmul_params: int, cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6N + 12·L·d·T (forward + backward; PaLM appendix B, nanoGPT).

    N = matmul_params(params, cfg); the second term is attention's QK^T and AV over a full T x T
    score matrix (causal masking is not discounted, as in both references).
    """
    return 6 * n_matmul_params + 12 * cfg.num_layers * cfg.d_model * seq_len


# How the train step's metrics enter metrics.jsonl: every one is averaged over the logging window
# under its own name, except these. The columns lead with loss and lr, as they always have.
ROW_NAMES = {"loss": "train_loss"}
LAST_VALUE = frozenset({"lr", "loss_scale"})  # a current value: the window's last, not its mean
# counts: the window's total, not its mean
SUMMED = frozenset({"skipped_steps", "spike_steps", "overflow_steps"})
FIRST_COLUMNS = ("loss", "lr")


def window_row(metrics: list[Mapping[str, Any]]) -> dict[str, float]:
    """One metrics.jsonl row from a window of train-step metrics (host values, oldest first)."""
    rank = {k: i for i, k in enumerate(FIRST_COLUMNS)}
    names = sorted(metrics[-1], key=lambda k: rank.get(k, len(rank)))  # stable: others keep order
    def reduce(k):
        if k in LAST_VALUE:  # the newest step's (the last of a call of several)
            return float(np.asarray(metrics[-1][k]).reshape(-1)[-1])
        values = np.concatenate([np.asarray(m[k]).reshape(-1) for m in metrics])  # every step's
        return float((np.sum if k in SUMMED else np.mean)(values))

    return {ROW_NAMES.get(k, k): reduce(k) for k in names}


class Meter:
    """A logging window: the train step's metrics (see window_row) and its speed, with the first
    step (compilation) and pauses (evaluation, samples, checkpoints) kept out of the clock."""

    def __init__(self, tokens_per_step: int, flops_per_token: float = 0.0,
                 peak_flops_total: float | None = None):
        self.tokens_per_step = tokens_per_step
        self.flops_per_token = flops_per_token
        self.peak_flops_total = peak_flops_total  # all devices' FLOP/s; None: no MFU
        self.pending: list = []  # device metrics since the last read
        self.steps, self.seconds, self.paused = 0, 0.0, False
        self.t0 = time.perf_counter()

    def first(self, metrics) -> float:
        """Seconds of the first step (compile + run) since the meter began; the window starts
        after it, its metrics in the window's averages."""
        jax.block_until_ready(metrics)
        seconds = time.perf_counter() - self.t0
        self.pending, self.t0 = [metrics], time.perf_counter()
        return seconds

    def add(self, metrics, steps: int = 1) -> None:
        """One more dispatched call of `steps` steps. Waits for the call before it to finish:
        the host runs at most one call ahead of the device (the next call is queued already, and
        a host far ahead queues dozens of multi-device programs, on which XLA's CPU runtime can
        deadlock: an all-reduce waiting for a device that never starts)."""
        if self.pending:
            jax.block_until_ready(self.pending[-1])
        self.pending.append(metrics)
        self.steps += steps

    def read(self) -> dict[str, float]:
        """The window's row (window_row, tokens_per_sec, ms_per_step, mfu); starts a new one."""
        row = window_row(jax.device_get(self.pending))
        self.seconds += time.perf_counter() - self.t0
        if self.steps and self.seconds > 0:
            row["tokens_per_sec"] = self.steps * self.tokens_per_step / self.seconds
            row["ms_per_step"] = 1e3 * self.seconds / self.steps
            if self.peak_flops_total:
                row["mfu"] = row["tokens_per_sec"] * self.flops_per_token / self.peak_flops_total
        self.pending, self.steps, self.seconds = [], 0, 0.0
        self.t0 = time.perf_counter()
        return row

    def pause(self, leaves) -> None:
        """Stop the clock once the dispatched steps (their output `leaves`) have finished;
        a second pause before resume() is free."""
        if not self.paused:
            jax.block_until_ready(leaves)
            self.seconds += time.perf_counter() - self.t0
            self.paused = True

    def resume(self) -> None:
        """Restart the clock after a pause (nothing if there was none)."""
        if self.paused:
            self.t0, self.paused = time.perf_counter(), False


class MetricWriter:
    """Appends one JSON object per logged step to workdir/metrics.jsonl and writes TensorBoard
    scalars (tensorboardX) to workdir/tensorboard. Only process 0 writes."""

    def __init__(self, workdir: str | os.PathLike, *, resume_step: int = 0, enabled: bool = True):
        self.enabled = enabled
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        if self.path.exists():
            keep_rows(self.path, resume_step)
        self._file = self.path.open("a")
        try:
            from tensorboardX import SummaryWriter
        except ImportError:  # events are a convenience; the JSON lines are the record
            logging.warning("tensorboardX is not installed: no TensorBoard events "
                            "(pip install tensorboardX)")
        else:
            self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"),
                                     purge_step=resume_step + 1 if resume_step else None)

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step)}
        row.update({k: _jsonable(v) for k, v in metrics.items()})
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)

    def write_text(self, step: int, tag: str, text: str) -> None:
        if self.enabled and self._tb is not None:
            self._tb.add_text(tag, text, step)

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            if self._tb is not None:
                self._tb.close()


def keep_rows(path: pathlib.Path, resume_step: int) -> None:
    """A run resumed from step k redoes the steps after k: drop their rows, and lines that do not
    parse (a process killed while appending leaves half a line), with one warning. The file is
    replaced atomically: a kill now leaves the old file or the new one."""
    keep, broken = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            broken += 1
        elif row.get("step", 0) <= resume_step:
            keep.append(line)
    if broken:
        logging.warning("%s: dropped %d line(s) that do not parse (half-written when a run was "
                        "killed)", path, broken)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)


def _jsonable(v):
    if isinstance(v, (int, str, bool)) or v is None:
        return v
    v = float(v)
    return v if math.isfinite(v) else str(v)  # JSON has no NaN/inf
