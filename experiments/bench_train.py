r"""Training throughput of a recipe side by side with nanoGPT's, both run here, now.

    python -m experiments.bench_train --config=configs/shakespeare_char_cpu.py \
        --config.data.text_file=../shared/data/tinyshakespeare.txt --full

Every round runs nanoGPT's CPU recipe (../shared/baselines/nanogpt_cpu.sh, PyTorch eager, a
fresh process), then gptjax's measurements, one after the other (never together: they would
share the cores); the ratios are gptjax over nanoGPT of the same round. gptjax's measurements:
the jitted step alone, the real loop's steady-state tokens/s, compile time, and with --full the
wall time of the whole recipe and when it first reaches --target val loss. Every measurement
runs in a fresh process, --rounds times (median and range reported): on this project's 2-core VM
one process's figures move by up to 25% between runs, and a measurement made in a process that
has already trained was the slow one more often than not. --peer=none measures gptjax alone.
Writes --out (markdown) and the same numbers as JSON beside it, naming the CPU model, cores,
jax and torch versions and the command.
"""

import json
import os
import subprocess
import sys
import tempfile

from absl import app, flags
from ml_collections import config_flags

from experiments import cli
from gptjax.bench import train as bench
from gptjax.config import Config

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/shakespeare_char_cpu.py", "The recipe.")
flags.DEFINE_integer("steps", 600, "Steps for the loop measurement: the median over its 50-step "
                     "windows, the first (warm-up) left out.", lower_bound=1)
flags.DEFINE_integer("step_repeats", 3, "Timed runs of --steps//3 bare steps (median).",
                     lower_bound=1)
flags.DEFINE_integer("rounds", 3, "Fresh-process repeats of every measurement.", lower_bound=1)
flags.DEFINE_bool("full", False, "Also run the whole recipe and time it to --target.")
flags.DEFINE_float("target", 1.89, "Validation loss for the time-to-loss measurement.")
flags.DEFINE_enum("peer", "nanogpt", ["nanogpt", "none"], "nanogpt: run nanoGPT's CPU recipe "
                  "for config.train.num_steps iterations before gptjax in every round and report "
                  "the ratios; none: measure gptjax alone.")
flags.DEFINE_string("peer_script", "../shared/baselines/nanogpt_cpu.sh", "The runner that prints "
                    "nanoGPT's tokens/s, val loss and wall time as JSON.")
flags.DEFINE_string("peer_venv", None, "Virtual env with CPU PyTorch for nanoGPT, built by the "
                    "runner on first use (a minute); default: .venv beside --peer_script.")
flags.DEFINE_string("out", "docs/bench_train.md", "Markdown report (JSON beside it).")
flags.DEFINE_enum("phase", None, ["loop", "step"], "Internal: run one measurement in this "
                  "process and write it to --phase_out.")
flags.DEFINE_string("phase_out", None, "Internal: where --phase writes its JSON.")


def run_phase(name: str, out: str) -> None:
    """One measurement in this (fresh) process."""
    if name == "loop":
        result = bench.loop_throughput(FLAGS.config, steps=FLAGS.steps)
    else:
        from gptjax.training.start import set_up

        cfg, _ = set_up(Config.from_dict(FLAGS.config))  # the loop's own start-up
        result = bench.step_throughput(cfg, steps=max(FLAGS.steps // 3, 10),
                                       repeats=FLAGS.step_repeats)
    result["machine"] = bench.machine()
    with open(out, "w") as f:
        json.dump(result, f)


def prepare_peer() -> dict | None:
    """Check, before any measurement, that nanoGPT can run the same recipe; where it runs."""
    if FLAGS.peer == "none":
        return None
    bench.check_same_recipe(Config.from_dict(FLAGS.config), FLAGS.peer_script)
    venv = FLAGS.peer_venv or str(bench.default_venv(FLAGS.peer_script))
    torch = bench.peer_torch(venv)
    print(f"nanoGPT: {FLAGS.peer_script}, torch {torch}" if torch else
          f"nanoGPT: {FLAGS.peer_script} builds CPU PyTorch in {venv} on this first run")
    return {"script": FLAGS.peer_script, "venv": venv}


def gptjax_phases(config_args: list[str], tmp: str) -> dict:
    """gptjax's loop and step measurements, each in a fresh process."""
    r = {}
    for phase in ("loop", "step"):
        out = f"{tmp}/{phase}.json"
        subprocess.run([sys.executable, "-m", "experiments.bench_train", *config_args,
                        f"--steps={FLAGS.steps}", f"--step_repeats={FLAGS.step_repeats}",
                        f"--phase={phase}", f"--phase_out={out}"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(out) as f:
            r[phase] = json.load(f)
    return r


def one_round(peer: dict | None, config_args: list[str]) -> dict:
    """nanoGPT, then gptjax's whole recipe (--full), then its loop and step: one at a time."""
    r = {}
    if peer:
        r["peer"] = bench.run_nanogpt(peer["script"], peer["venv"],
                                      steps=FLAGS.config.train.num_steps)
    with tempfile.TemporaryDirectory() as tmp:
        if FLAGS.full:
            overrides = [a for a in config_args if a.startswith("--config.")]
            r["full"] = bench.time_to_loss(config_flags.get_config_filename(FLAGS["config"]),
                                           overrides, f"{tmp}/run", target=FLAGS.target)
        r.update(gptjax_phases(config_args, tmp))
    return r


def print_round(rounds: list[dict]) -> None:
    r = rounds[-1]
    print(f"round {len(rounds)}/{FLAGS.rounds}: " + ", ".join(
        f"{'nanoGPT' if k == 'peer' else 'gptjax ' + k} {v['tokens_per_sec']:,.0f} tok/s"
        for k, v in r.items() if k != "full")
        + (f", gptjax full {r['full']['wall_seconds']:.0f} s" if "full" in r else ""), flush=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.phase:
        return run_phase(FLAGS.phase, FLAGS.phase_out)
    Config.from_dict(FLAGS.config)  # a bad recipe fails here, not in a measuring subprocess
    cli.output_path("out")
    config_args = [a for a in sys.argv[1:] if a.startswith("--config")]
    load_before = os.getloadavg()  # what else was running when the benchmark started
    rounds = []
    try:
        peer = prepare_peer()
        for _ in range(FLAGS.rounds):
            rounds.append(one_round(peer, config_args))
            print_round(rounds)
    except bench.PeerError as e:
        raise app.UsageError(str(e)) from None
    machine = {**rounds[-1]["loop"]["machine"], "load_average": load_before,
               "load_average_after": os.getloadavg()}
    if peer:
        machine.update(torch=bench.peer_torch(peer["venv"]), torch_note="nanoGPT's venv")
    path = bench.write_report({"machine": machine, "peer": peer, "rounds": rounds}, FLAGS.out,
                              command="python -m experiments.bench_train " + " ".join(sys.argv[1:]))
    print(open(path).read())


if __name__ == "__main__":
    cli.run(main)
