"""gptjax.bench.profile: the HLO's ops and FLOPs, the per-step figures from a trace's events,
and experiments.profile_step end to end, its matmul FLOPs against the GPT's formula."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from gptjax.bench.profile import parse_hlo, summarize

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = "tests/golden/tiny-gpt2"

HLO = """HloModule jit_f

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %sum = f32[] add(%a, %b)
}

%fused_computation (param_0: f32[8,16], param_1: f32[16,4]) -> f32[8,4] {
  %param_0 = f32[8,16]{1,0} parameter(0)
  %param_1 = f32[16,4]{1,0} parameter(1)
  %dot.1 = f32[8,4]{1,0} dot(%param_0, %param_1), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="jit(f)/dot_general"}
  ROOT %tanh.1 = f32[8,4]{1,0} tanh(%dot.1), metadata={op_name="jit(f)/tanh"}
}

%fused_computation.2 (param_0.2: f32[8,4]) -> f32[4,8] {
  %param_0.2 = f32[8,4]{1,0} parameter(0)
  ROOT %transpose.2 = f32[4,8]{1,0} transpose(%param_0.2), dimensions={1,0}
}

%fused_computation.3 (param_0.3: f32[4,8]) -> f32[4,8] {
  %param_0.3 = f32[4,8]{1,0} parameter(0)
  ROOT %multiply.3 = f32[4,8]{1,0} multiply(%param_0.3, %param_0.3)
}

ENTRY %main.9 (x: f32[8,16], w: f32[16,4]) -> f32[] {
  %x = f32[8,16]{1,0} parameter(0), metadata={op_name="x"}
  %w = f32[16,4]{1,0} parameter(1), metadata={op_name="w"}
  %mm_fusion = f32[8,4]{1,0} fusion(%x, %w), kind=kCustom, calls=%fused_computation, metadata={op_name="jit(f)/shard_map/tanh"}
  %psum.1 = f32[8,4]{1,0} all-reduce(%mm_fusion), replica_groups={}, to_apply=%add, metadata={op_name="jit(f)/shard_map/psum"}
  %copy_fusion = f32[4,8]{1,0} fusion(%psum.1), kind=kLoop, calls=%fused_computation.2, metadata={op_name="jit(f)/transpose"}
  %square_fusion = f32[4,8]{1,0} fusion(%copy_fusion), kind=kLoop, calls=%fused_computation.3, metadata={op_name="jit(f)/mul"}
  %constant.5 = f32[] constant(0)
  ROOT %reduce.6 = f32[] reduce(%square_fusion, %constant.5), dimensions={0,1}, to_apply=%add, metadata={op_name="jit(f)/reduce_sum"}
}
"""


def test_hlo_ops_get_categories_and_a_dot_its_flops():
    ops = parse_hlo(HLO)
    assert ops["mm_fusion"]["category"] == "matmul"
    assert ops["mm_fusion"]["flops"] == 2 * 8 * 4 * 16  # 2 M N K, from the fused dot
    assert ops["mm_fusion"]["shape"] == "f32[8,4]"
    assert ops["psum.1"]["category"] == "collective"
    assert ops["copy_fusion"]["category"] == "copy/transpose"
    assert ops["square_fusion"]["category"] == "elementwise"
    assert ops["reduce.6"]["category"] == "reduction"
    assert ops["square_fusion"]["flops"] == 0
    # a fusion reads its parameters and writes its result: x, w and the [8, 4] output
    assert ops["mm_fusion"]["bytes"] == 4 * (8 * 16 + 16 * 4 + 8 * 4)
    assert ops["psum.1"]["bytes"] == 4 * (8 * 4 + 8 * 4)  # an op: its operands and result


def test_summary_of_two_steps_on_two_devices():
    ms = 1_000_000  # ns
    lines = [
        ("/host:CPU/worker-0", [("mm_fusion", 0, 4 * ms), ("psum.1", 4 * ms, 6 * ms),
                                ("ThunkExecutor::Execute", 0, 9 * ms),  # not an HLO op
                                ("mm_fusion", 10 * ms, 14 * ms), ("psum.1", 14 * ms, 15 * ms)]),
        # the second device's ops, two of them overlapping on this line: counted once in busy
        ("/host:CPU/worker-1", [("mm_fusion", 0, 4 * ms), ("square_fusion", 2 * ms, 5 * ms),
                                ("mm_fusion", 10 * ms, 14 * ms)]),
        ("/host:CPU/python", [("PjitFunction(f)", 0, 20 * ms)]),
    ]
    r = summarize(HLO, lines, steps=2, wall_s=0.020, devices=2, top=10)
    assert r["wall_ms_per_step"] == pytest.approx(10.0)
    # busy: worker-0 4+2+4+1 = 11 ms, worker-1 5+4 = 9 ms; per step and device (11+9)/2/2
    assert r["busy_ms_per_step"] == pytest.approx(5.0)
    assert r["idle_ms_per_step"] == pytest.approx(5.0)
    assert r["categories_ms"]["matmul"] == pytest.approx(16 / 2 / 2)
    assert r["categories_ms"]["collective"] == pytest.approx(3 / 2 / 2)
    assert r["categories_ms"]["elementwise"] == pytest.approx(3 / 2 / 2)
    top = r["top"][0]
    assert (top["category"], top["shape"], top["op"]) == ("matmul", "f32[8,4]", "tanh")
    assert top["calls_per_step"] == pytest.approx(1.0)  # 4 calls over 2 steps and 2 devices
    assert r["matmul_flops_per_device"] == pytest.approx(1024)  # one call's, per step
    assert top["gflops"] == pytest.approx(1024 / 4e6)  # in 4 ms a step


def test_a_trace_without_the_steps_ops_names_the_fix():
    with pytest.raises(ValueError, match="xla_cpu_enable_xprof_traceme"):
        summarize(HLO, [("/host:CPU/python", [("PjitFunction(f)", 0, 5)])], steps=1,
                  wall_s=1.0, devices=1)


def test_profile_step_end_to_end_counts_the_gpts_matmul_flops(tmp_path):
    L, d, heads, T, B = 2, 32, 2, 16, 4
    out = tmp_path / "p.md"
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.profile_step", "--config=configs/quickstart.py",
         f"--config.model.num_layers={L}", f"--config.model.d_model={d}",
         f"--config.model.num_heads={heads}", f"--config.model.max_len={T}",
         f"--config.data.seq_len={T}", f"--config.data.batch_size={B}", "--steps=3",
         "--warmup=1", "--top=5", f"--out={out}"],
        cwd=ROOT, env={**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"},
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.with_suffix(".json").read_text())
    assert r["steps"] == 3
    V, B = r["vocab_size"], B // r["devices"]  # each device's rows of the batch
    # forward: Q, K, V, out and the MLP (12 d^2 per token and layer), the tied head, and the
    # scores and weighted sum over every (query, key) pair; backward twice the forward
    n = B * T
    forward = 2 * n * 12 * L * d * d + 2 * n * d * V + 2 * 2 * B * heads * T * T * (d // heads) * L
    assert r["matmul_flops_per_device"] == pytest.approx(3 * forward, rel=1e-9)
    assert r["categories_ms"]["matmul"] > 0 and r["categories_ms"]["elementwise"] > 0
    assert 0 < r["busy_ms_per_step"] and len(r["top"]) == 5
    text = out.read_text()
    assert "| matmul |" in text and "GFLOP/s" in text


def test_profile_of_generation_reads_every_weight_once_a_token(tmp_path):
    """Greedy decoding's matrix-vector products read the projections and the tied head once per
    new token (the prefill's pass is spread over the tokens too)."""
    from gptjax.interop import hf

    new_tokens, out = 8, tmp_path / "g.md"
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.profile_step", "--program=generate",
         f"--checkpoint={TINY}", f"--new_tokens={new_tokens}", f"--out={out}"],
        cwd=ROOT, env={**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"},
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.with_suffix(".json").read_text())
    assert r["steps"] == new_tokens and r["program"].startswith("generate")
    cfg = hf.from_pretrained(str(ROOT / TINY)).cfg
    d, L = cfg.d_model, cfg.num_layers
    weights = 4 * (L * 12 * d * d + cfg.padded_vocab * d)  # float32 kernels and the head
    assert weights <= r["matmul_bytes_per_device"] <= 2 * weights, (weights, r)
