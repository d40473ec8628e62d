"""orbax checkpoints of a run: the TrainState, the data iterator's position and the config.

    workdir/checkpoints/<step>/state    params, optimizer state, step, RNG (orbax StandardSave)
                              /data     the grain iterator's state, one JSON file per process
                              /config   the resolved config (JSON), to refuse a mismatched resume

Saves are asynchronous and atomic: orbax writes into a temporary directory and renames it when
the save is complete, so a killed process leaves the previous checkpoints intact and at most an
unfinished temporary directory (ignored, then cleaned up, by the next start). A finished step that
no longer restores (a truncated or deleted file) is renamed `<step>.corrupt`, with one warning,
and the newest readable one restored instead (several processes: the run stops instead, and its
rerun resumes every process from the same older step; see move_aside); a save that fails (a full
disk) raises CheckpointError naming the directory and the errno, the earlier checkpoints
untouched.
A restore reads float16's loss scale where the checkpoint holds one, and leaves it None where it
does not (written before loss scaling, or in another dtype): gptjax.training.loss_scale fills it.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import pathlib
from typing import Any, Mapping

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from gptjax.config import Config, ConfigError
from gptjax.interop import register_format
from gptjax.interop.hf import from_pretrained
from gptjax.model.gpt import merge_lora, repad_vocab
from gptjax.training import finetune, loss_scale, spikes
from gptjax.training.optim import make_optimizer
from gptjax.tokenizers import Tokenizer
from gptjax.training.state import graphdef_of, init_state

# Model fields a resumed run may change: they alter neither parameter shapes nor their meaning
# (vocab_multiple may differ while the padded row count it gives does not: compared apart).
RESUMABLE_MODEL_FIELDS = frozenset({"dropout", "attention", "dtype", "remat", "vocab_multiple",
                                    "lora_dropout"})
CORRUPT_SUFFIX = ".corrupt"  # an unreadable step, moved aside: never retried, never deleted


class CheckpointError(RuntimeError):
    """A run's checkpoints cannot be written or read; the message names the directory and what
    to do."""


def _handlers():
    return {"state": ocp.StandardCheckpointHandler(),
            "data": grain.checkpoint.CheckpointHandler(),
            "config": ocp.JsonCheckpointHandler()}


def latest_step(directory: str | os.PathLike) -> int | None:
    """The newest complete checkpoint's step in `directory`, or None. Reads only."""
    if not pathlib.Path(directory).is_dir():
        return None
    steps = ocp.utils.checkpoint_steps(directory)  # finalized saves only, never temporaries
    return max(steps) if steps else None


def steps(directory: str | os.PathLike) -> list[int]:
    """The finished checkpoints' steps in `directory`, newest first. Reads only."""
    if not pathlib.Path(directory).is_dir():
        return []
    return sorted(ocp.utils.checkpoint_steps(directory), reverse=True)


def corrupt_steps(directory: str | os.PathLike) -> list[str]:
    """The checkpoints moved aside as unreadable (`<step>.corrupt`) in `directory`."""
    if not pathlib.Path(directory).is_dir():
        return []
    names = [p.name for p in pathlib.Path(directory).glob(f"*{CORRUPT_SUFFIX}*")]
    return sorted(names, key=lambda n: (int(n.split(".")[0]) if n.split(".")[0].isdigit()
                                        else -1, n))


def move_aside(directory: str | os.PathLike, step: int, why: str) -> None:
    """One warning naming `step` and `why`; the step's folder becomes `<step>.corrupt` (kept for
    a look, out of orbax's sight), and the caller falls back to an older checkpoint.

    With several processes the fallback is not this process's to take alone: a step that reads
    on one host and not on another would resume the processes from different steps, and their
    collectives would mismatch. So the process that cannot read it moves it aside and raises
    CheckpointError: the run stops, and run again every process resumes from the same (newest
    remaining) checkpoint."""
    directory = pathlib.Path(directory)
    target = directory / f"{step}{CORRUPT_SUFFIX}"
    n = 1
    while target.exists():  # a step corrupted twice keeps both copies
        target, n = directory / f"{step}{CORRUPT_SUFFIX}{n}", n + 1
    several = jax.process_count() > 1
    here = f" on process {jax.process_index()} of {jax.process_count()}" if several else ""
    try:
        (directory / str(step)).rename(target)
        moved = f"is unreadable{here} ({why}); it is moved aside to {target.name}"
    except FileNotFoundError:  # another process that could not read it moved it first
        moved = (f"was moved aside by another process of this run, which could not read it "
                 f"(here,{here}: {why})")
    if not several:
        logging.warning("checkpoint %s/%d %s; falling back to an older checkpoint", directory,
                        step, moved)
        return
    raise CheckpointError(f"checkpoint {directory}/{step} {moved}. "
                          + _stop_advice(directory, step))


def _stop_advice(directory: pathlib.Path, step: int) -> str:
    """Why a multi-process run stops at unreadable `step`, and what resumes it."""
    older = [s for s in steps(directory) if s < step]
    return ("The processes of a multi-process run do not fall back on their own (each could "
            "resume from another step), so this run stops here, with nothing trained over it: "
            + (f"run the same command again and every process resumes from step {older[0]}, "
               "the newest checkpoint left" if older else "no older checkpoint is left; to "
               f"train the run again from step 0, move {directory} (and metrics.jsonl) aside "
               "or delete them"))


def first_line(e: BaseException, limit: int = 200) -> str:
    """An exception as one short line: its type and the first line of its message."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    text = f"{type(e).__name__}: {text}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def readable_config(directory: str | os.PathLike) -> tuple[int, dict] | None:
    """(step, saved config) of the newest checkpoint whose config reads; unreadable newer ones
    are moved aside (move_aside). None if no checkpoint is left. Several processes: they agree
    first (agree_readable), so that one that cannot read the step stops all of them."""
    for step in steps(directory):
        config, problem = None, None
        try:
            config = saved_config(directory, step)
        except Exception as e:  # noqa: BLE001 - any failure to read means: not this one
            problem = first_line(e)
        if jax.process_count() > 1:
            agree_readable(directory, step, problem or own_files_problem(directory, step))
        elif problem is not None:
            move_aside(directory, step, problem)
            continue
        return step, config
    return None


def own_files_problem(directory: str | os.PathLike, step: int) -> str | None:
    """Why this process could not restore checkpoint `step`, as far as its small files tell:
    its own data-iterator position (grain's process_I-of-N.json) and the state's folder."""
    folder = pathlib.Path(directory) / str(step)
    try:
        if not (folder / "state").is_dir():
            raise FileNotFoundError(2, "No state folder", str(folder / "state"))
        if (folder / "data").is_dir():
            name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
            json.loads((folder / "data" / name).read_text())
    except Exception as e:  # noqa: BLE001 - any failure to read means: not this one
        return first_line(e)
    return None


def agree_readable(directory: str | os.PathLike, step: int, problem: str | None) -> None:
    """Several processes: CheckpointError on every one when `step` is unreadable on any, told
    by one all-gather before any process starts orbax's restore. Without it, a process that
    read the step waited in the restore's barrier for one that had stopped (five minutes,
    until jax.distributed's shutdown barrier timed out)."""
    flags = np.asarray(multihost_utils.process_allgather(np.int32(problem is not None)))
    failing = [i for i, flag in enumerate(flags.reshape(-1)) if flag]
    if not failing:
        return
    if problem is not None:
        move_aside(directory, step, problem)  # raises CheckpointError, naming this process
    raise CheckpointError(
        f"checkpoint {directory}/{step} is unreadable on process {failing[0]} of "
        f"{jax.process_count()}, which moves it aside. "
        + _stop_advice(pathlib.Path(directory), step))


def saved_config(directory: str | os.PathLike, step: int) -> dict:
    """The config dict stored with checkpoint `step`. Reads only."""
    with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as checkpointer:
        return dict(checkpointer.restore(pathlib.Path(directory).absolute() / str(step) / "config"))


def check_compatible(saved: Mapping[str, Any], config: Config, where: str) -> None:
    """Raise ConfigError naming every model field that differs from the checkpoint's."""
    current = config.to_dict()["model"]
    old = saved.get("model", {})
    diffs = [f"model.{k}: checkpoint {old.get(k)!r}, config {v!r}" for k, v in current.items()
             if k not in RESUMABLE_MODEL_FIELDS and _norm(old.get(k)) != _norm(v)]
    rows = config.model.padded_vocab
    old_rows = dataclasses.replace(config.model, vocab_size=old.get("vocab_size", 0),
                                   vocab_multiple=old.get("vocab_multiple", 1)).padded_vocab
    if rows != old_rows:
        diffs.append(f"embedding rows (vocab_size padded to model.vocab_multiple, here "
                     f"rounded up to the mesh's tensor axis): checkpoint {old_rows}, config {rows}")
    # Another fine-tuning method trains other parameters: its optimizer state would not fit.
    old_ft = saved.get("finetune", {})
    diffs += [f"finetune.{k}: checkpoint {old_ft.get(k, v)!r}, config {v!r}"
              for k, v in config.to_dict()["finetune"].items()
              if k != "lora_dropout" and _norm(old_ft.get(k, v)) != _norm(v)]
    if diffs:
        raise ConfigError(
            f"{where} holds a checkpoint of a different model ({'; '.join(diffs)}). Resume it "
            "with the checkpoint's values, or train in another --workdir. Nothing was changed "
            "in the workdir.")


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


class Checkpoints:
    """A run's CheckpointManager: async saves of (state, data iterator, config), keeps `keep`."""

    def __init__(self, directory: str | os.PathLike, *, keep: int, async_save: bool = True):
        self.directory = pathlib.Path(directory)
        self.last_saved: int | None = None  # the step of the newest save started here
        # cleanup_tmp_directories: a save killed midway left `<step>.orbax-checkpoint-tmp*`;
        # never restored from (not finalized), it is deleted now.
        self.manager = ocp.CheckpointManager(
            self.directory.absolute(), item_handlers=_handlers(),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                 enable_async_checkpointing=async_save,
                                                 cleanup_tmp_directories=True))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_iterator, config: Config) -> None:
        """Start saving; returns once the arrays are copied off the device (the write goes on in
        the background). The iterator's position is read now, synchronously. A failed write (of
        this save or the one before) raises CheckpointError."""
        with self._write_errors(step):
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(data_iterator),
                config=ocp.args.JsonSave(config.to_dict())))
        self.last_saved = step

    def restore(self, step: int, abstract_state, data_iterator):
        """The state saved at `step`, laid out as `abstract_state` (ShapeDtypeStructs with
        shardings); `data_iterator` is moved to the saved position in place."""
        held = holds_loss_scale(self.manager, step)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(fit_loss_scale(abstract_state, held)),
            data=grain.checkpoint.CheckpointRestore(data_iterator)))
        return fitted(restored["state"], abstract_state)

    def restore_newest(self, abstract_state, data_iterator, newest: int):
        """(step, state) of the newest checkpoint at or below `newest` that restores; each
        unreadable one on the way is moved aside with one warning. None if none restores.
        Several processes: CheckpointError at the first that does not restore (move_aside)."""
        for step in [s for s in steps(self.directory) if s <= newest]:
            try:
                return step, self.restore(step, abstract_state, data_iterator)
            except Exception as e:  # noqa: BLE001 - truncated, missing or garbled files alike
                move_aside(self.directory, step, first_line(e))
                self.manager.reload()  # forget the step moved aside
        return None

    def wait(self) -> None:
        """Block until every started save is durable on disk (CheckpointError if one failed)."""
        with self._write_errors(self.last_saved):
            self.manager.wait_until_finished()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.manager.close()

    def _write_errors(self, step: int | None):
        return _WriteErrors(self.directory, step, self.manager)


class _WriteErrors:
    """Turns an OSError anywhere in a save's exception chain (ENOSPC, EACCES, EROFS) into a
    CheckpointError naming the directory, the errno and the steps still intact."""

    def __init__(self, directory: pathlib.Path, step: int | None, manager):
        self.directory, self.step, self.manager = directory, step, manager

    def __enter__(self):
        return self

    def __exit__(self, kind, e, tb):
        cause = e
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            return False
        code = errno.errorcode.get(cause.errno, cause.errno) if cause.errno else "no errno"
        intact = ", ".join(map(str, sorted(steps(self.directory)))) or "none"
        raise CheckpointError(
            f"a checkpoint save in {self.directory} failed (noticed at step {self.step}; saves "
            f"are asynchronous, so it may be an earlier one): "
            f"{code} ({cause.strerror or cause}). The finished checkpoints (steps {intact}) are "
            "intact. Free space or fix the permissions there (or use another --workdir), then "
            "run the same command to resume.") from e


def holds_loss_scale(manager, step: int) -> bool:
    """Whether checkpoint `step`'s state holds a loss scale (float16 runs since loss scaling)."""
    return "loss_scale" in manager.item_metadata(step)["state"]


def fit_loss_scale(target, held: bool):
    """`target` (a TrainState of ShapeDtypeStructs) with a loss scale exactly where the
    checkpoint holds one (`held`): model.dtype may change on resume, and older float16
    checkpoints have none."""
    if (target.loss_scale is not None) == held:
        return target
    if not held:
        return target.replace(loss_scale=None)
    sharding = target.step.sharding  # a replicated scalar, as the loss scale's leaves are
    return target.replace(loss_scale={
        "scale": jax.ShapeDtypeStruct((), jnp.float32, sharding=sharding),
        "good_steps": jax.ShapeDtypeStruct((), jnp.int32, sharding=sharding)})


def fitted(state, target):
    """A restored state without the loss scale `target` has no place for (a float16 checkpoint
    resumed in another dtype); one that `target` wants but the checkpoint lacked stays None
    (gptjax.training.loss_scale.fill_missing)."""
    return state.replace(loss_scale=None) if target.loss_scale is None else state


def abstract_with_sharding(abstract_state, shardings):
    """ShapeDtypeStructs carrying the shardings a restored state should have."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract_state, shardings)


def is_run(folder: str | os.PathLike) -> bool:
    """A training run's workdir: the resolved config beside orbax checkpoints."""
    folder = pathlib.Path(folder)
    return (folder / "config.json").is_file() and (folder / "checkpoints").is_dir()


def run_config(workdir: str | os.PathLike) -> Config:
    """The resolved config a run saved in its workdir."""
    return Config.from_dict(json.loads((pathlib.Path(workdir) / "config.json").read_text()))


def load_params(workdir: str | os.PathLike, step: int | None = None):
    """(Config, params) of a run's checkpoint at `step` (default: the latest), on one device."""
    workdir = pathlib.Path(workdir)
    cfg = run_config(workdir)
    ckpt_dir = workdir / "checkpoints"
    step = latest_step(ckpt_dir) if step is None else step
    if step is None:
        raise FileNotFoundError(f"{ckpt_dir} holds no finished checkpoint; train first (or wait "
                                "for the run's first checkpoint_every steps)")
    tx, _ = make_optimizer(cfg.optim, cfg.train.num_steps)
    abstract = jax.eval_shape(lambda: init_state(cfg.model, tx, cfg.train.seed,
                                                 finetune.trainable(cfg),
                                                 spikes.init(cfg.train), loss_scale.init(cfg)))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = abstract_with_sharding(abstract, jax.tree.map(lambda _: device, abstract))
    # Every item's handler, though only the state is read: orbax warns of each item it has
    # none for when it reads the step's metadata.
    manager = ocp.CheckpointManager(ckpt_dir.absolute(), item_handlers=_handlers())
    try:
        target = fit_loss_scale(finetune.saved_state(cfg, abstract),
                                holds_loss_scale(manager, step))
        state = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target)))["state"]
    finally:
        manager.close()
    return cfg, finetune.with_base(cfg, state, abstract).params  # LoRA: the base from init_from


def load_model(workdir: str | os.PathLike, step: int | None = None, **overrides):
    """The GPT of a run's checkpoint; `overrides` replace model config fields (e.g. attention;
    vocab_multiple pads the vocabulary anew). A LoRA run's comes back merged: a plain GPT whose
    kernels are base + (alpha / r) A B, so generation and export need nothing else."""
    cfg, params = load_params(workdir, step)
    model_cfg = cfg.model
    if "vocab_multiple" in overrides:
        params, model_cfg = repad_vocab(params, model_cfg, overrides.pop("vocab_multiple"))
    model_cfg = dataclasses.replace(model_cfg, **overrides)
    return merge_lora(nnx.merge(graphdef_of(model_cfg), params))


# A training run's workdir (config.json + orbax checkpoints/) loads its latest checkpoint.
register_format("gptjax", is_run, load_model)


def load_pretrained(path, tokenizer=None):
    """(GPT.from_pretrained(path), its Tokenizer): a run's workdir or a Hugging Face folder, and
    the tokenizer saved with it or in the folder `tokenizer` names; what a checkpoint's scorers
    (evaluate, perplexity, multiple_choice) start from."""
    return from_pretrained(path), Tokenizer.from_pretrained(tokenizer or path)
