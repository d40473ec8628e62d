"""A run up to its first step: `start_run(config, workdir)` checks the config, sets up the
devices, the data, the compiled steps and the state (fresh, pretrained or resumed), and returns
the `Run` that gptjax.training.loop trains. Bad input raises here, before anything compiles.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import math
import os
import pathlib
import tempfile
from typing import Any, Callable, Mapping

import jax
from absl import logging
from tqdm import tqdm

from gptjax.config import Config, ConfigError, ModelConfig
from gptjax import multiple_choice
from gptjax.data import build_data
from gptjax.model import check_config as check_model
from gptjax.model import positions
from gptjax.model.kernels import check_available
from gptjax.parallel import make_plan, vocab_shards
from gptjax.training import checkpoint as ckpt_lib
from gptjax.training import finetune, host, loss_scale, memory, pretrained, skips, spikes
from gptjax.training import metrics as metrics_lib
from gptjax.training import optim
from gptjax.training.optim import make_optimizer
from gptjax.training.preemption import StopRequest
from gptjax.training.state import (TrainState, check_trainable, graphdef_of, init_state,
                                   state_from_params)
from gptjax.training.steps import compile_train_step, eval_step_fn


def resolve_vocab(config: Config, tokenizer_vocab: int, vocab_shards: int = 1) -> Config:
    """Fill model.vocab_size=0 from the tokenizer, and pad the vocabulary to a multiple of the
    mesh's vocabulary shards (masked padding: the same model); refuse a vocabulary smaller than
    the tokenizer's."""
    v = config.model.vocab_size
    multiple = math.lcm(config.model.vocab_multiple, vocab_shards)
    model = dataclasses.replace(config.model, vocab_multiple=multiple,
                                vocab_size=v or int(tokenizer_vocab))
    if multiple != config.model.vocab_multiple:
        logging.info("model.vocab_multiple=%d: the vocabulary is padded to %d rows to split over "
                     "the mesh's %d vocabulary shards", multiple, model.padded_vocab,
                     vocab_shards)
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
    """The registries' checks of a config (kernel and its limits, segment ids included;
    position encoding; schedule), which read nothing and compile nothing: what Config itself
    cannot know."""
    check_model(cfg.model, cfg.data.seq_len,
                segments="data.pack" if cfg.data.pack else cfg.data.document_mask)
    optim.check(cfg.optim)
    finetune.check(cfg)


def set_up(cfg: Config, data=None):
    """The start-up every run shares: (cfg with its vocabulary resolved, data). Sets the CPU
    devices before anything starts JAX, checks the kernel runs on this machine, then builds the
    data (when not given) from config.data."""
    # Before anything starts JAX (build_data asks for the process index).
    host.use_cpu_devices(cfg.mesh.cpu_devices, cfg.data.batch_size // cfg.optim.grad_accum)
    cfg = pretrained.adopt(cfg)  # fine-tuning: the source's architecture and tokenizer
    # A name no registry holds, or a kernel this machine cannot run (cudnn off a GPU), fails
    # now, before any data is read.
    try:
        check_config(cfg)
    except ConfigError as e:
        if not cfg.train.init_from:
            raise
        raise ConfigError(f"with train.init_from={cfg.train.init_from!r}'s architecture: "
                          f"{e}") from None
    check_available(cfg.model.attention)
    if data is None:
        data = build_data(cfg, process_index=jax.process_index(),
                          process_count=jax.process_count())
    shards = vocab_shards(cfg.mesh, jax.device_count()) if cfg.mesh.strategy == "jit" else 1
    return resolve_vocab(cfg, data.vocab_size, shards), data


# --- the run ------------------------------------------------------------------------------------

@dataclasses.dataclass
class Run:
    """A run once set up: what the step loop, its actions and callbacks read and write."""

    cfg: Config
    workdir: pathlib.Path
    plan: Any  # gptjax.parallel.Plan: how state and batches lie on the devices
    data: Any  # gptjax.data.Data
    graphdef: Any  # the model's static structure
    train_step: Callable  # (leaves, batch) -> (leaves, metrics); the leaves are donated
    # train.steps_per_call > 1: (leaves, batches [K, ...]) -> (leaves, metrics [K]); else None
    train_steps: Callable | None
    eval_step: Callable  # (params, batch) -> {'loss', 'accuracy'}
    treedef: Any  # the TrainState's structure, to rebuild it from `leaves`
    leaves: list  # the state as a flat list of arrays: what the hot loop carries
    start: int  # the step this process started (or resumed) from
    checkpoints: ckpt_lib.Checkpoints
    writer: metrics_lib.MetricWriter
    meter: metrics_lib.Meter
    pbar: Any  # tqdm progress bar
    sampling: Sampling | None  # None: no text samples
    skip_guard: skips.SkipGuard  # skipped (non-finite) steps in a row
    final: dict = dataclasses.field(default_factory=dict)  # what train() returns
    stop: StopRequest | None = None  # SIGTERM / Ctrl-C: save and stop after the step
    metrics: Any = None  # the newest call's metrics, on the device
    call_steps: int = 1  # how many steps the newest call ran (its metrics' leading axis if > 1)
    # run_info.json's content, written with config.json and the tokenizer once the first call
    # has run (a run refused before, e.g. too large for memory, leaves the workdir's files as
    # they were); None on the processes that do not write them
    run_info: dict | None = None
    # train.choice_file's questions and their tokenized rows (gptjax.multiple_choice); or None
    choices: tuple[list, list] | None = None

    @property
    def state(self) -> TrainState:
        """The current TrainState (rebuilt from the leaves; donated by the next step)."""
        return jax.tree.unflatten(self.treedef, self.leaves)

    def close(self) -> None:
        self.pbar.close()
        self.checkpoints.close()  # waits for async saves: a finished save is never half-written
        self.writer.close()


Callback = Callable[[int, Mapping[str, Any], Run], None]  # (step, row or {}, run) -> None


@dataclasses.dataclass(frozen=True)
class Sampling:
    """The text samples' prompt ids and length, fitted to the model's positions."""

    prompt: tuple[int, ...]
    num_tokens: int


def fit_sample(prompt: list[int], num_tokens: int, model: ModelConfig) -> Sampling:
    """Keep prompt + sample within the positions the model has (learned: model.max_len):
    the sample is shortened, and the prompt (its last tokens kept) only if it alone fills them."""
    prompt = list(prompt) or [0]
    limit = positions.get(model.position).max_positions(model)
    if limit is None or len(prompt) + num_tokens <= limit:
        return Sampling(tuple(prompt), num_tokens)
    fitted = prompt[-(limit - 1):] if limit > 1 else prompt[-1:]
    fitted_tokens = max(1, min(num_tokens, limit - len(fitted)))
    logging.warning("train.sample_prompt (%d tokens) + train.sample_tokens=%d exceed the model's "
                    "%d %s positions (model.max_len): samples continue the prompt's last %d "
                    "tokens with %d new ones", len(prompt), num_tokens, limit, model.position,
                    len(fitted), fitted_tokens)
    return Sampling(tuple(fitted), fitted_tokens)


def start_run(config, workdir: str | os.PathLike, data=None) -> Run:
    """Everything before the first step: checks, devices, data, compiled steps, the state (fresh,
    pretrained or resumed), the workdir's files. Bad input raises before anything is compiled."""
    _quiet_orbax()
    cfg = config if isinstance(config, Config) else Config.from_dict(config)
    workdir = pathlib.Path(workdir)
    check_writable(workdir)  # before the data and the compile it would waste
    questions = read_choices(cfg.train)
    cfg, data = set_up(cfg, data)
    choices = tokenize_choices(cfg, questions, data.tokenizer)
    # config.mesh -> devices: DP / FSDP / TP / pmap; mesh and model-vs-mesh errors raise here
    plan = make_plan(cfg, check_batch=False)
    check_batch(cfg, plan.batch_shards)
    ckpt_dir = workdir / "checkpoints"
    cfg, start = _resume_point(cfg, workdir)

    tx, schedule = make_optimizer(cfg.optim, cfg.train.num_steps)
    graphdef = graphdef_of(cfg.model)
    trainable = finetune.trainable(cfg)
    init = functools.partial(init_state, cfg.model, tx, cfg.train.seed, trainable,
                             spikes.init(cfg.train), loss_scale.init(cfg))
    abstract = jax.eval_shape(init)
    check_trainable(abstract.params, trainable)
    state_sharding = plan.shardings(abstract)
    target = ckpt_lib.abstract_with_sharding(abstract, state_sharding)
    # jit compiles each program on its first call, which first checks that it fits (memory)
    train_step = memory.Checked(compile_train_step(cfg, plan, graphdef, tx, schedule, abstract,
                                                   state_sharding), cfg,
                                shards=plan.batch_shards)
    k = cfg.train.steps_per_call
    train_steps = memory.Checked(compile_train_step(
        cfg, plan, graphdef, tx, schedule, abstract, state_sharding, steps=k), cfg,
        f"the train step ({k} steps to a call)", plan.batch_shards) if k > 1 else None
    eval_step = plan.compile_eval(eval_step_fn(graphdef), abstract.params)

    is_main = jax.process_index() == 0
    checkpoints = ckpt_lib.Checkpoints(ckpt_dir, keep=cfg.train.keep_checkpoints)
    if start is None:
        start = 0
        state = _fresh_state(cfg, plan, tx, init, target, workdir)
    else:
        # A LoRA run's checkpoints hold its adapters; the base is read from train.init_from.
        found = checkpoints.restore_newest(finetune.saved_state(cfg, target), data.train,
                                           newest=start)
        if found is None:
            raise ckpt_lib.CheckpointError(_no_readable_checkpoint(workdir))
        start, state = found
        state = loss_scale.fill_missing(finetune.with_base(cfg, state, target), cfg, target)
        logging.info("Resuming %s from step %d", workdir, start)
    writer = metrics_lib.MetricWriter(workdir, resume_step=start, enabled=is_main)
    sampling = _sampling(cfg, data.tokenizer)
    pbar = tqdm(total=cfg.train.num_steps, initial=start, disable=not is_main, desc="train",
                dynamic_ncols=True)
    return Run(cfg=cfg, workdir=workdir, plan=plan, data=data, graphdef=graphdef,
               train_step=train_step, train_steps=train_steps, eval_step=eval_step,
               treedef=jax.tree.structure(abstract),
               leaves=jax.tree.leaves(state), start=start, checkpoints=checkpoints,
               writer=writer, meter=_meter(cfg, plan, abstract, workdir), pbar=pbar,
               sampling=sampling, final={"step": start},
               run_info=finetune.run_info(cfg, abstract, tx) if is_main else None,
               choices=choices,
               skip_guard=skips.SkipGuard(cfg.train.max_consecutive_skips, last_applied=start))


def read_choices(tcfg) -> list | None:
    """train.choice_file's questions (its first train.choice_examples), read before any data:
    a file that does not parse fails the run before it starts."""
    if not tcfg.choice_file:
        return None
    try:
        return multiple_choice.read_questions(tcfg.choice_file, tcfg.choice_examples or None)
    except ValueError as e:  # multiple_choice.ChoiceError: the file and line, and the fix
        raise ConfigError(f"train.choice_file: {e}") from None


def tokenize_choices(cfg: Config, questions: list | None, tokenizer) -> tuple | None:
    """(questions, their rows for multiple_choice.score) in the run's tokenizer, or None."""
    if questions is None:
        return None
    try:
        return questions, multiple_choice.tokenize(tokenizer, questions, cfg.model.max_len)
    except ValueError as e:  # a character a char-level vocabulary lacks
        raise ConfigError(f"train.choice_file={cfg.train.choice_file!r}: {e}") from None


def check_writable(workdir: pathlib.Path) -> None:
    """CheckpointError now if `workdir` (or the folder it would be made in) cannot take files."""
    probe = workdir / "checkpoints"
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(20, "Not a directory", str(probe))
        with tempfile.TemporaryFile(dir=probe):  # unnamed: leaves nothing behind
            pass
    except OSError as e:
        code = errno.errorcode.get(e.errno, e.errno) if e.errno else "no errno"
        raise ckpt_lib.CheckpointError(
            f"--workdir {workdir} is not writable ({code}: {e.strerror or e} at {probe}); "
            "choose a writable --workdir or fix its permissions") from None


def _resume_point(cfg: Config, workdir: pathlib.Path) -> tuple[Config, int | None]:
    """(cfg, the newest checkpoint's step or None for a fresh start), before any compile.
    Refuses another model's checkpoint, or a run whose checkpoints are all unreadable; keeps
    the run's learning-rate schedule (keep_schedule)."""
    ckpt_dir = workdir / "checkpoints"
    found = ckpt_lib.readable_config(ckpt_dir)  # unreadable newer steps are moved aside
    if found is not None:
        start, saved = found
        ckpt_lib.check_compatible(saved, cfg, str(workdir))
        spikes.check_resume(saved, cfg.train, str(workdir))
        return keep_schedule(cfg, saved), start
    if ckpt_lib.corrupt_steps(ckpt_dir):
        raise ckpt_lib.CheckpointError(_no_readable_checkpoint(workdir))
    if (workdir / "config.json").exists():  # killed before its first checkpoint finished
        logging.warning("%s holds a run that never finished a checkpoint: it starts again from "
                        "step 0 (its metrics.jsonl rows are dropped)", workdir)
    return cfg, None


def _no_readable_checkpoint(workdir: pathlib.Path) -> str:
    ckpt_dir = workdir / "checkpoints"
    return (f"{workdir} holds a run, but none of its checkpoints restores (moved aside in "
            f"{ckpt_dir}: {', '.join(ckpt_lib.corrupt_steps(ckpt_dir))}). Nothing was trained "
            f"over it. To start it again from step 0, move {ckpt_dir} (and metrics.jsonl) "
            "aside or delete them; or train in another --workdir; or put back a copy of a "
            "checkpoint.")


def keep_schedule(cfg: Config, saved: Mapping[str, Any]) -> Config:
    """A resumed run keeps the horizon of the learning-rate schedule it was started with: with
    train.num_steps raised (optim.decay_steps unset), optim.decay_steps becomes the old horizon
    and past it the rate stays at optim.min_lr, as nanoGPT's. An explicit optim.decay_steps
    that differs is obeyed, with a warning."""
    old = saved.get("optim", {}).get("decay_steps") or saved.get("train", {}).get("num_steps")
    new = cfg.optim.decay_steps or cfg.train.num_steps
    if not old or old == new or cfg.optim.schedule == "constant":
        return cfg
    if cfg.optim.decay_steps is not None:
        logging.warning("optim.decay_steps=%d, but this run's learning-rate schedule was made for "
                        "%d steps: the schedule changes from the resumed step on", new, old)
        return cfg
    if old <= cfg.optim.warmup_steps:  # a horizon inside warmup: nothing left to keep
        return cfg
    logging.info("train.num_steps=%d, but this run's learning-rate schedule was made for %d "
                 "steps: it is kept (optim.decay_steps=%d), and past step %d the rate stays at "
                 "optim.min_lr=%g. To stretch the schedule instead, set "
                 "--config.optim.decay_steps", new, old, old, old, cfg.optim.min_lr)
    return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, decay_steps=old))


def write_workdir(workdir: pathlib.Path, cfg: Config, tokenizer, run_info: dict) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    (workdir / "run_info.json").write_text(json.dumps(run_info, indent=2) + "\n")
    if hasattr(tokenizer, "save"):
        tokenizer.save(workdir / "tokenizer")


def _fresh_state(cfg: Config, plan, tx, init, target, workdir) -> TrainState:
    """Step 0: random weights, or (train.init_from, fine-tuning) pretrained ones; fresh
    optimizer moments either way. LoRA: fresh adapters beside init_from's weights."""
    if not cfg.train.init_from:
        return plan.init(init)
    logging.info("Starting %s from the weights of %s", workdir, cfg.train.init_from)
    if finetune.adapters_only(cfg):
        return finetune.with_base(cfg, plan.init(init), target)
    params = pretrained.load_sharded(cfg, target.params)
    shardings = jax.tree.map(lambda x: x.sharding, target)
    return jax.jit(functools.partial(state_from_params, tx=tx, seed=cfg.train.seed,
                                     trainable=target.trainable,
                                     spikes=spikes.init(cfg.train),
                                     loss_scale=loss_scale.init(cfg)),
                   out_shardings=shardings)(params)


def _sampling(cfg: Config, tokenizer) -> Sampling | None:
    if not cfg.train.sample_tokens:
        return None
    try:
        prompt = tokenizer.encode(cfg.train.sample_prompt)
    except Exception as e:  # a sample is a report, never a reason to lose a run
        logging.warning("train.sample_prompt %r does not encode (%r): no text samples",
                        cfg.train.sample_prompt, e)
        return None
    return fit_sample(prompt, cfg.train.sample_tokens, cfg.model)


def _meter(cfg: Config, plan, abstract, workdir) -> metrics_lib.Meter:
    """The logging windows' meter (tokens/s, MFU), after logging the run's size and devices."""
    n_matmul = metrics_lib.matmul_params(abstract.params, cfg.model)
    flops_per_token = metrics_lib.flops_per_token(n_matmul, cfg.model, cfg.data.seq_len)
    peak = metrics_lib.peak_flops(jax.devices()[0].device_kind, cfg.train.peak_flops)
    logging.info("%s: %s", workdir, plan)
    logging.info("%s: %d devices (%s), %.2fM params (%.2fM in matmuls), %.3g FLOPs/token%s",
                 workdir, jax.device_count(), jax.devices()[0].device_kind,
                 sum(math.prod(x.shape) for x in jax.tree.leaves(abstract.params)) / 1e6,
                 n_matmul / 1e6, flops_per_token,
                 f", peak {peak:.3g} FLOP/s per device" if peak else ", MFU not reported "
                 "(unknown chip; set train.peak_flops)")
    return metrics_lib.Meter(cfg.data.batch_size * cfg.data.seq_len, flops_per_token,
                             peak * jax.device_count() if peak else None)
