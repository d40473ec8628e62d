"""Where a config's compiled train step, or greedy decoding, spends its time, op by op.

    python -m experiments.profile_step --config=configs/shakespeare_char_cpu.py \
        --config.data.text_file=../shared/data/tinyshakespeare.txt --out=docs/profile_step.md
    python -m experiments.profile_step --program=generate --out=docs/profile_generate.md

Traces --steps steps of the step the loop would compile (after --warmup untimed ones) and writes
a table: ms per step by category (matmul, elementwise, reduction, copy/transpose, collective),
the busiest ops with their shapes, GFLOP/s and GB/s, and each device's idle time.
--program=generate instead traces one greedy generate call (bench_generate's prompt and model:
GPT-2 124M's shape, random weights, or --checkpoint), per new token; --config is not used then.
On a CPU this process turns on XLA:CPU's per-op trace events (XLA_FLAGS, set before JAX starts).
"""

import os
import sys

from gptjax.bench.profile import CPU_TRACE_FLAG

if CPU_TRACE_FLAG not in os.environ.get("XLA_FLAGS", ""):  # before JAX reads its flags
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {CPU_TRACE_FLAG}".strip()

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from experiments import cli  # noqa: E402
from gptjax.bench import profile  # noqa: E402
from gptjax.bench import generate as bench_generate  # noqa: E402
from gptjax.bench.train import machine, machine_line  # noqa: E402
from gptjax.config import Config  # noqa: E402
from gptjax.tokenizers import Tokenizer  # noqa: E402
from gptjax.training.start import set_up  # noqa: E402

FLAGS = flags.FLAGS
PROMPT = "The quick brown fox jumps over the"  # bench_generate's, the background article's
config_flags.DEFINE_config_file("config", "configs/shakespeare_char_cpu.py", "The experiment.")
flags.DEFINE_integer("steps", 20, "Traced steps.", lower_bound=1)
flags.DEFINE_integer("warmup", 5, "Untimed steps first (compile, first runs).", lower_bound=1)
flags.DEFINE_integer("top", 25, "Rows in the table of the busiest ops.", lower_bound=1)
flags.DEFINE_string("out", "docs/profile_step.md", "Markdown report (JSON beside it).")
flags.DEFINE_enum("program", "train", ["train", "generate"], "What to profile: the config's "
                  "train step, or greedy decoding of --new_tokens tokens.")
flags.DEFINE_integer("new_tokens", 100, "generate: new tokens (no eos).", lower_bound=1)
flags.DEFINE_string("checkpoint", None, "generate: a Hugging Face GPT-2 or gptjax folder; "
                    "default: random weights of GPT-2 124M's shape.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.output_path("out")
    if FLAGS.program == "generate":
        model = bench_generate.gptjax_model(FLAGS.checkpoint)
        prompt = bench_generate.default_prompt()  # GPT-2's ids of the article's prompt
        if FLAGS.checkpoint:  # the same text in the checkpoint's own vocabulary
            prompt = Tokenizer.from_pretrained(FLAGS.checkpoint).encode(PROMPT)
        result = profile.profile_generate(model, prompt, new_tokens=FLAGS.new_tokens,
                                          top=FLAGS.top)
    else:
        cfg, _ = set_up(Config.from_dict(FLAGS.config))  # the loop's checks and vocabulary
        result = profile.profile_step(cfg, steps=FLAGS.steps, warmup=FLAGS.warmup, top=FLAGS.top)
    command = " ".join(["python -m experiments.profile_step", *sys.argv[1:]])
    path = profile.write_report(result, FLAGS.out, command=command,
                                machine=machine_line(machine()))
    print(open(path).read())


if __name__ == "__main__":
    cli.run(main)
