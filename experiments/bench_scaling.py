"""Step time and per-device memory of every parallel strategy on the devices present.

    python -m experiments.bench_scaling [--steps=10] [--config.model.d_model=256 ...]
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m experiments.bench_scaling

Writes docs/bench_scaling.md and docs/bench_scaling.json (see --out).
"""

import json
import pathlib

import jax
from absl import app, flags
from ml_collections import ConfigDict, config_flags

from experiments import cli
from gptjax.config import Config
from gptjax.bench import scaling
from gptjax.bench.host import cpu_model


def default_config() -> ConfigDict:
    """A small GPT whose every dimension splits 8 ways: seconds per strategy on a CPU."""
    return ConfigDict({
        "model": dict(vocab_size=512, max_len=128, num_layers=4, num_heads=8, d_model=128,
                      attention="xla"),
        "data": dict(seq_len=128, batch_size=16),
        "optim": dict(lr=1e-3, warmup_steps=2),
        "train": dict(num_steps=100, seed=0),
        "mesh": dict(),
    })


_CONFIG = config_flags.DEFINE_config_dict("config", default_config(),
                                          "The model and batch to benchmark; override fields "
                                          "with --config.model.d_model=256 etc.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed train steps per strategy (after compiling).",
                              lower_bound=1)
_OUT = flags.DEFINE_string("out", "docs/bench_scaling", "Output path without extension: "
                           "writes OUT.md and OUT.json.")
_ONLY = flags.DEFINE_list("only", [], "Run only these strategies (names as in the table).")
_NOTE = flags.DEFINE_string("note", "", "A line added to the report (e.g. the machine's load).")


def main(argv):
    del argv
    config = Config.from_dict(_CONFIG.value)
    cli.output_path("out")
    meshes = scaling.strategies(jax.device_count())
    if _ONLY.value:
        unknown = sorted(set(_ONLY.value) - set(meshes))
        if unknown:
            raise app.UsageError(f"--only: unknown strategies {unknown}; on "
                                 f"{jax.device_count()} devices: {sorted(meshes)}")
        meshes = {k: v for k, v in meshes.items() if k in _ONLY.value}
    rows = scaling.benchmark(config, meshes, _STEPS.value)
    device = jax.devices()[0]
    m = config.model
    notes = (f"{jax.device_count()} x {device.device_kind} ({device.platform}), "
             f"jax {jax.__version__}, host CPU {cpu_model()}. "
             f"GPT {m.num_layers} layers, d_model {m.d_model}, {m.num_heads} heads, vocab "
             f"{m.vocab_size}; global batch {config.data.batch_size} x {config.data.seq_len} "
             f"tokens, float32, {_STEPS.value} timed steps after compiling. 'state' is params + "
             "AdamW state held by the fullest device (from the arrays' shards); 'XLA' columns "
             "are the compiled step's own memory analysis per device. "
             + _NOTE.value)
    out = pathlib.Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"notes": notes, "rows": rows}, indent=1))
    out.with_suffix(".md").write_text(scaling.markdown(rows, "Scaling benchmark", notes))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    cli.run(main)
