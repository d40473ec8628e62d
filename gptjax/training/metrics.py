"""What a run reports: FLOPs per token, MFU against a table of chips, and a writer for
metrics.jsonl + TensorBoard events."""

from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Mapping

import jax
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


class MetricWriter:
    """Appends one JSON object per logged step to workdir/metrics.jsonl and writes TensorBoard
    scalars (tensorboardX) to workdir/tensorboard. Only process 0 writes."""

    def __init__(self, workdir: str | os.PathLike, *, resume_step: int = 0, enabled: bool = True):
        self.enabled = enabled
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        # A run resumed from step k redoes the steps after k: drop their stale lines.
        if self.path.exists():
            keep = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in keep))
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


def _jsonable(v):
    if isinstance(v, (int, str, bool)) or v is None:
        return v
    v = float(v)
    return v if math.isfinite(v) else str(v)  # JSON has no NaN/inf
