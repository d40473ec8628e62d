"""The training loop: `train(config, workdir)`. All side effects of a run live here: data, the
progress bar, logs, metrics.jsonl/TensorBoard, text samples and orbax checkpoints; the steps it
calls are pure.

    workdir/config.json       the resolved config (vocab size filled in from the tokenizer)
    workdir/tokenizer/        the run's tokenizer (Tokenizer.from_pretrained reads it)
    workdir/metrics.jsonl     one JSON object per logged/evaluated step
    workdir/tensorboard/      TensorBoard events
    workdir/checkpoints/<n>/  orbax checkpoints (see gptjax.training.checkpoint)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
import time
from typing import Any, Callable, Iterable, Mapping

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from gptjax.config import Config, ConfigError
from gptjax.model import check_config as check_model
from gptjax.model.kernels import check_available
from gptjax.parallel import make_plan, vocab_shards
from gptjax.training import checkpoint as ckpt_lib
from gptjax.training import host, pretrained
from gptjax.training import metrics as metrics_lib
from gptjax.training import optim
from gptjax.training.optim import make_optimizer
from gptjax.training.sample import sample_text
from gptjax.training.state import graphdef_of, init_state, state_from_params
from gptjax.training.steps import compile_train_step, eval_step_fn

Callback = Callable[[int, Mapping[str, Any]], None]  # (step, logged metrics or {}) -> None


def resolve_vocab(config: Config, tokenizer_vocab: int, vocab_shards: int = 1) -> Config:
    """Fill model.vocab_size=0 from the tokenizer, and pad the vocabulary to a multiple of the
    mesh's vocabulary shards (masked padding: the same model); refuse a vocabulary smaller than
    the tokenizer's."""
    v = config.model.vocab_size
    multiple = math.lcm(config.model.vocab_multiple, vocab_shards)
    if multiple != config.model.vocab_multiple:
        logging.info("model.vocab_multiple=%d: the vocabulary is padded to %d rows to split over "
                     "the mesh's %d vocabulary shards", multiple,
                     -(-(v or tokenizer_vocab) // multiple) * multiple, vocab_shards)
    model = dataclasses.replace(config.model, vocab_multiple=multiple,
                                vocab_size=v or int(tokenizer_vocab))
    config = dataclasses.replace(config, model=model)
    if v and v < tokenizer_vocab:
        raise ConfigError(f"model.vocab_size={v} is smaller than the tokenizer's vocabulary "
                          f"({tokenizer_vocab}); set it to 0 to take the tokenizer's size, or "
                          f">= {tokenizer_vocab}")
    return config


def check_batch(config: Config, num_devices: int) -> None:
    """The global batch must split evenly into micro-batches and over data-parallel devices
    (num_devices: the pieces the plan splits a batch into, gptjax.parallel.Plan.batch_shards)."""
    b, k = config.data.batch_size, config.optim.grad_accum
    if b % k:
        raise ConfigError(f"data.batch_size={b} is not divisible by optim.grad_accum={k}")
    if (b // k) % num_devices:
        raise ConfigError(
            f"data.batch_size={b} does not divide over {num_devices} devices"
            + (f" in each of optim.grad_accum={k} micro-batches" if k > 1 else "")
            + " (the mesh's batch axes: mesh.data x mesh.fsdp, or every device with pmap); "
            f"use a multiple of {k * num_devices}")


def _quiet_orbax() -> None:
    """orbax logs every save step at INFO through absl: keep its warnings, drop the chatter."""
    absl_logger = logging.get_absl_logger()
    if not any(isinstance(f, _OrbaxInfoFilter) for f in absl_logger.filters):
        absl_logger.addFilter(_OrbaxInfoFilter())


class _OrbaxInfoFilter:
    def filter(self, record) -> bool:
        return record.levelno >= logging.converter.STANDARD_WARNING or (
            f"{os.sep}orbax{os.sep}" not in record.pathname)


def check_config(cfg: Config) -> None:
    """The registries' checks of a config (kernel and its limits, position encoding, schedule),
    which read nothing and compile nothing: what Config itself cannot know."""
    check_model(cfg.model, cfg.data.seq_len)
    optim.check(cfg.optim)


def set_up(cfg: Config, data=None):
    """The start-up every run shares: (cfg with its vocabulary resolved, data). Sets the CPU
    devices before anything starts JAX, checks the kernel runs on this machine, then builds the
    data (when not given) from config.data."""
    from gptjax.data import build_data  # late: TFDS is a slow import

    # Before anything starts JAX (build_data asks for the process index).
    host.use_cpu_devices(cfg.mesh.cpu_devices, cfg.data.batch_size // cfg.optim.grad_accum)
    cfg = pretrained.adopt(cfg)  # fine-tuning: the source's architecture and tokenizer
    # A name no registry holds, or a kernel this machine cannot run (cudnn off a GPU), fails
    # now, before any data is read.
    check_config(cfg)
    check_available(cfg.model.attention)
    if data is None:
        data = build_data(cfg, process_index=jax.process_index(),
                          process_count=jax.process_count())
    shards = vocab_shards(cfg.mesh, jax.device_count()) if cfg.mesh.strategy == "jit" else 1
    return resolve_vocab(cfg, data.vocab_size, shards), data


def train(config, workdir: str | os.PathLike, *, data=None,
          callbacks: Iterable[Callback] = ()) -> dict[str, Any]:
    """Train (or resume) the run in `workdir`; return the final metrics.

    config: an ml_collections ConfigDict, a dict or a Config. data: a gptjax.data.Data, built
    from config.data when None. callbacks run after every step (e.g. early stopping via an
    exception). Every bad input raises before anything is compiled or written.
    """
    _quiet_orbax()
    cfg = config if isinstance(config, Config) else Config.from_dict(config)
    workdir = pathlib.Path(workdir)
    cfg, data = set_up(cfg, data)
    # config.mesh -> devices: DP / FSDP / TP / pmap; mesh and model-vs-mesh errors raise here
    plan = make_plan(cfg, check_batch=False)
    num_devices = jax.device_count()
    check_batch(cfg, plan.batch_shards)
    ckpt_dir = workdir / "checkpoints"
    start = ckpt_lib.latest_step(ckpt_dir)
    if start is not None:
        ckpt_lib.check_compatible(ckpt_lib.saved_config(ckpt_dir, start), cfg, str(workdir))

    tcfg = cfg.train
    tx, schedule = make_optimizer(cfg.optim, tcfg.num_steps)
    graphdef = graphdef_of(cfg.model)
    init = functools.partial(init_state, cfg.model, tx, tcfg.seed)
    abstract = jax.eval_shape(init)
    state_sharding = plan.shardings(abstract)
    train_step = compile_train_step(cfg, plan, graphdef, tx, schedule, abstract, state_sharding)
    treedef = jax.tree.structure(abstract)
    eval_step = plan.compile_eval(eval_step_fn(graphdef), abstract.params)

    is_main = jax.process_index() == 0
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        if hasattr(data.tokenizer, "save"):
            data.tokenizer.save(workdir / "tokenizer")
    checkpoints = ckpt_lib.Checkpoints(ckpt_dir, keep=tcfg.keep_checkpoints)
    if start is None:
        start = 0
        if tcfg.init_from:  # fine-tuning: the pretrained weights, fresh optimizer moments
            logging.info("Starting %s from the weights of %s", workdir, tcfg.init_from)
            params = pretrained.load_params(cfg, state_sharding.params)
            state = jax.jit(functools.partial(state_from_params, tx=tx, seed=tcfg.seed),
                            out_shardings=state_sharding)(params)
        else:
            state = plan.init(init)
    else:
        logging.info("Resuming %s from step %d", workdir, start)
        state = checkpoints.restore(start, ckpt_lib.abstract_with_sharding(abstract,
                                                                          state_sharding),
                                    data.train)
    writer = metrics_lib.MetricWriter(workdir, resume_step=start, enabled=is_main)

    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    n_matmul = metrics_lib.matmul_params(abstract.params, cfg.model)
    flops_per_token = metrics_lib.flops_per_token(n_matmul, cfg.model, cfg.data.seq_len)
    peak = metrics_lib.peak_flops(jax.devices()[0].device_kind, tcfg.peak_flops)
    logging.info("%s: %s", workdir, plan)
    logging.info("%s: %d devices (%s), %.2fM params (%.2fM in matmuls), %.3g FLOPs/token%s",
                 workdir, num_devices, jax.devices()[0].device_kind,
                 sum(math.prod(x.shape) for x in jax.tree.leaves(abstract.params)) / 1e6,
                 n_matmul / 1e6, flops_per_token,
                 f", peak {peak:.3g} FLOP/s per device" if peak else ", MFU not reported "
                 "(unknown chip; set train.peak_flops)")

    def evaluate(params) -> dict[str, float]:
        ms = []
        for b in data.val_batches(tcfg.eval_steps):
            ms.append(eval_step(params, plan.put_batch(b)))
            if len(ms) > 1:
                jax.block_until_ready(ms[-2])  # one batch ahead at most, as in training
        ms = jax.device_get(ms)
        loss = float(np.mean([m["loss"] for m in ms]))
        return {"val_loss": loss, "val_perplexity": float(math.exp(min(loss, 80.0))),
                "val_accuracy": float(np.mean([m["accuracy"] for m in ms]))}

    def sample(params, step: int) -> str | None:
        if not tcfg.sample_tokens:
            return None
        try:
            prompt = data.tokenizer.encode(tcfg.sample_prompt) or [0]
            text = sample_text(graphdef, params, data.tokenizer, prompt, tcfg.sample_tokens,
                               window=min(cfg.model.max_len, cfg.data.seq_len),
                               seed=tcfg.seed + step)
        except Exception as e:  # a sample is a report, never a reason to lose a run
            logging.warning("step %d: text sample failed: %r", step, e)
            return None
        logging.info("step %d sample:\n%s%s", step, tcfg.sample_prompt, text)
        writer.write_text(step, "sample", tcfg.sample_prompt + text)
        return text

    final: dict[str, Any] = {"step": start}
    pbar = tqdm(total=tcfg.num_steps, initial=start, disable=not is_main, desc="train",
                dynamic_ncols=True)
    pending: list = []  # device metrics since the last log line
    window_steps, window_time, t0 = 0, 0.0, time.perf_counter()
    leaves = jax.tree.leaves(state)  # the hot loop carries the state as a flat list of arrays

    def current():
        return state if state is not None else jax.tree.unflatten(treedef, leaves)

    try:
        if start >= tcfg.num_steps:
            logging.info("%s is already at step %d >= train.num_steps", workdir, start)
            final.update(evaluate(state.params))
        for step in range(start + 1, tcfg.num_steps + 1):  # step: the count after this update
            batch = plan.put_batch(next(data.train))
            leaves, m = train_step(leaves, batch)
            state = None  # its arrays were donated to the step
            if pending:
                # Run at most one step ahead of the device: the next step is queued already, and
                # a host far ahead queues dozens of multi-device programs, on which XLA's CPU
                # runtime can deadlock (an all-reduce waiting for a device that never starts).
                jax.block_until_ready(pending[-1])
            pending.append(m)
            if step == start + 1:  # the first step compiles: keep it out of tokens/s
                jax.block_until_ready(m)
                final["first_step_seconds"] = time.perf_counter() - t0
                logging.info("first step (compile + run): %.1f s", final["first_step_seconds"])
                pending, t0 = [m], time.perf_counter()
                window_steps = 0
            else:
                window_steps += 1
            pbar.update(1)
            row: dict[str, Any] = {}
            last = step == tcfg.num_steps
            if step % tcfg.log_every == 0 or last:
                ms = jax.device_get(pending)
                window_time += time.perf_counter() - t0
                row["train_loss"] = float(np.mean([x["loss"] for x in ms]))
                row["lr"] = float(ms[-1]["lr"])
                row["grad_norm"] = float(np.mean([x["grad_norm"] for x in ms]))
                if "z_loss" in ms[-1]:
                    row["z_loss"] = float(np.mean([x["z_loss"] for x in ms]))
                if window_steps and window_time > 0:
                    row["tokens_per_sec"] = window_steps * tokens_per_step / window_time
                    row["ms_per_step"] = 1e3 * window_time / window_steps
                    if peak:
                        row["mfu"] = (row["tokens_per_sec"] * flops_per_token
                                      / (peak * num_devices))
                pending, window_steps, window_time = [], 0, 0.0
                logging.info("step %d | loss %.4f | lr %.3e | grad norm %.3f%s%s", step,
                             row["train_loss"], row["lr"], row["grad_norm"],
                             f" | {row['tokens_per_sec']:,.0f} tok/s" if "tokens_per_sec" in row
                             else "", f" | MFU {100 * row['mfu']:.1f}%" if "mfu" in row else "")
                pbar.set_postfix(loss=f"{row['train_loss']:.4f}", refresh=False)
                t0 = time.perf_counter()
            paused = False
            if step % tcfg.eval_every == 0 or last:
                window_time += _pause(t0, leaves)
                paused = True
                state = current()
                row.update(evaluate(state.params))
                logging.info("step %d | val loss %.4f | val perplexity %.2f", step,
                             row["val_loss"], row["val_perplexity"])
                text = sample(state.params, step)
                if text is not None:
                    final["sample"] = text
            elif tcfg.sample_every and step % tcfg.sample_every == 0:
                window_time += _pause(t0, leaves)
                paused = True
                state = current()
                text = sample(state.params, step)
                if text is not None:
                    final["sample"] = text
            if row:
                row["time"] = time.time()  # wall clock (Unix seconds): time-to-loss across runs
                writer.write(step, row)
                final.update(row)
                final["step"] = step
            if step % tcfg.checkpoint_every == 0 or last:
                if not paused:
                    window_time += _pause(t0, leaves)
                    paused = True
                checkpoints.save(step, current(), data.train, cfg)
            if paused:
                t0 = time.perf_counter()
            for callback in callbacks:
                callback(step, row)
    finally:
        pbar.close()
        checkpoints.close()  # waits for async saves: a finished save is never left half-written
        writer.close()
    return final


def _pause(t0: float, leaves) -> float:
    """Training time since t0, counted once the dispatched steps have finished."""
    jax.block_until_ready(leaves)
    return time.perf_counter() - t0
