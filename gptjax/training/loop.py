"""The training loop: `train(config, workdir)`. All side effects of a run live here and in
gptjax.training.start (which sets it up): data, the progress bar, logs,
metrics.jsonl/TensorBoard, text samples and orbax checkpoints; the steps it calls are pure.

The story: `start_run` sets everything up and returns a `Run`; the step loop runs the train step
and then each periodic `Action` that is due (log, evaluate, sample, record the row, checkpoint);
callbacks see (step, row, run) after every step, the state included (`run.state`).

    workdir/config.json       the resolved config (vocab size filled in from the tokenizer)
    workdir/tokenizer/        the run's tokenizer (Tokenizer.from_pretrained reads it)
    workdir/metrics.jsonl     one JSON object per logged/evaluated step
    workdir/tensorboard/      TensorBoard events
    workdir/checkpoints/<n>/  orbax checkpoints (see gptjax.training.checkpoint)
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable, Iterable

import jax
import numpy as np
from absl import logging
from flax import nnx

from gptjax import generation, multiple_choice
from gptjax.training import finetune, skips
from gptjax.training.preemption import STOP_MESSAGE, StopRequest
from gptjax.training.start import Callback, Run, start_run, write_workdir

SAMPLE_TEMPERATURE = 0.8  # nanoGPT's sample.py defaults
SAMPLE_TOP_K = 200


# --- the loop -----------------------------------------------------------------------------------

def train(config, workdir: str | os.PathLike, *, data=None,
          callbacks: Iterable[Callback] = ()) -> dict[str, Any]:
    """Train (or resume) the run in `workdir`; return the final metrics (the last row's values,
    'step', 'first_step_seconds', 'sample'; 'preempted': True when SIGTERM or Ctrl-C stopped it
    early, after saving its last step).

    config: an ml_collections ConfigDict, a dict or a Config. data: a gptjax.data.Data, built
    from config.data when None. callbacks: callback(step, row, run) after every step (row: what
    metrics.jsonl got, or {}; run.state: the state), e.g. early stopping by an exception. Every
    bad input raises before anything is compiled or written.
    """
    with StopRequest() as stop:  # SIGTERM / first Ctrl-C: save after the step and return
        run = start_run(config, workdir, data)
        run.stop = stop
        try:
            if run.start >= run.cfg.train.num_steps:
                logging.info("%s is already at step %d >= train.num_steps", run.workdir,
                             run.start)
                run.final.update(evaluate(run))
            run_steps(run, default_actions(run.cfg.train), callbacks)
        finally:
            run.close()
    return run.final


def run_steps(run: Run, actions: Iterable[Action], callbacks: Iterable[Callback] = ()) -> None:
    """Steps run.start+1 .. train.num_steps, train.steps_per_call to a compiled call, each call
    followed by the actions due at its last step."""
    num_steps = run.cfg.train.num_steps
    step = run.start
    while step < num_steps:
        first = step == run.start
        run.call_steps = n = steps_in_call(run, step)
        run.leaves, metrics = dispatch(run, n)
        step += n  # the count after this call's updates
        run.metrics = metrics
        if first:  # the first call compiles: keep it out of tokens/s
            if run.run_info is not None:
                write_workdir(run.workdir, run.cfg, run.data.tokenizer, run.run_info)
            run.final["first_step_seconds"] = run.meter.first(metrics)
            logging.info("first step (compile + run): %.1f s", run.final["first_step_seconds"])
        else:
            run.meter.add(metrics, steps=n)
        run.pbar.update(n)
        row: dict[str, Any] = {}
        for action in actions:
            if action.due(step, step == num_steps):
                action.act(run, step, row)
        run.meter.resume()  # after any pause an action took (evaluation, sample, checkpoint)
        for callback in callbacks:
            callback(step, row, run)
        if run.stop is not None and run.stop.reached(step) and step < num_steps:
            stop_and_save(run, step)
            return


def steps_in_call(run: Run, step: int) -> int:
    """train.steps_per_call from a step it divides while that many remain, else 1 (a resume
    off the grid, the last steps)."""
    k = run.cfg.train.steps_per_call
    return k if k > 1 and step % k == 0 and step + k <= run.cfg.train.num_steps else 1


def dispatch(run: Run, n: int):
    """The next n batches onto the devices and the compiled call that runs n steps on them."""
    if n == 1:
        return run.train_step(run.leaves, run.plan.put_batch(next(run.data.train)))
    batches = [next(run.data.train) for _ in range(n)]
    return run.train_steps(run.leaves, run.plan.put_batches(batches))


def stop_and_save(run: Run, step: int) -> None:
    """A stop asked for (SIGTERM, Ctrl-C): this step's checkpoint (unless just saved), waited
    for, and train() returns with final['preempted'] = True."""
    if run.checkpoints.last_saved != step:
        save_checkpoint(run, step, {})
    run.checkpoints.wait()
    run.final.update(step=step, preempted=True)
    logging.warning("%s: %s", run.workdir, STOP_MESSAGE.format(step=step))


# --- periodic work ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Action:
    """Host work after a step: act(run, step, row) when due(step, last). `row` is the step's
    metrics.jsonl row, filled by the actions before; one that needs the state calls
    run.meter.pause(run.leaves) first, which keeps its time out of tokens/s."""

    name: str
    due: Callable[[int, bool], bool]
    act: Callable[[Run, int, dict], None]


def every(*periods: int) -> Callable[[int, bool], bool]:
    """Due at the last step and every n steps for each n > 0 in periods."""
    return lambda step, last: last or any(n > 0 and step % n == 0 for n in periods)


def default_actions(tcfg) -> list[Action]:
    """The periodic work of a run, in order: log, evaluate, sample, multiple choice, record,
    stop on skips, checkpoint."""
    return [Action("log", every(tcfg.log_every), log_window),
            Action("evaluate", every(tcfg.eval_every), evaluate_and_log),
            Action("sample", every(tcfg.eval_every, tcfg.sample_every), sample_and_log),
            Action("multiple choice", every(tcfg.choice_every or tcfg.eval_every),
                   choices_and_log),
            Action("record", lambda step, last: True, record_row),
            Action("stop on skips", lambda step, last: True, stop_on_skips),
            Action("checkpoint", every(tcfg.checkpoint_every), save_checkpoint)]


def log_window(run: Run, step: int, row: dict) -> None:
    """The logging window's averages and speed into the row, the log and the progress bar."""
    row.update(run.meter.read())
    logging.info("step %d | loss %.4f | lr %.3e | grad norm %.3f%s%s%s%s%s%s", step,
                 row["train_loss"], row["lr"], row["grad_norm"],
                 f" | loss scale {row['loss_scale']:g}" if "loss_scale" in row else "",
                 f" | skipped {row['skipped_steps']:.0f}" if row.get("skipped_steps") else "",
                 f" ({row['spike_steps']:.0f} spikes)" if row.get("spike_steps") else "",
                 f" ({row['overflow_steps']:.0f} overflows)" if row.get("overflow_steps")
                 else "",
                 f" | {row['tokens_per_sec']:,.0f} tok/s" if "tokens_per_sec" in row else "",
                 f" | MFU {100 * row['mfu']:.1f}%" if "mfu" in row else "")
    run.pbar.set_postfix(loss=f"{row['train_loss']:.4f}", refresh=False)


def evaluate_and_log(run: Run, step: int, row: dict) -> None:
    run.meter.pause(run.leaves)
    row.update(evaluate(run))
    logging.info("step %d | val loss %.4f | val perplexity %.2f", step, row["val_loss"],
                 row["val_perplexity"])


def evaluate(run: Run) -> dict[str, float]:
    """val_loss, val_perplexity, val_accuracy of the current params over train.eval_steps
    batches of the validation split."""
    params = run.state.params
    ms = []
    for b in run.data.val_batches(run.cfg.train.eval_steps):
        ms.append(run.eval_step(params, run.plan.put_batch(b)))
        if len(ms) > 1:
            jax.block_until_ready(ms[-2])  # one batch ahead at most, as in training
    ms = jax.device_get(ms)
    loss = float(np.mean([m["loss"] for m in ms]))
    return {"val_loss": loss, "val_perplexity": float(math.exp(min(loss, 80.0))),
            "val_accuracy": float(np.mean([m["accuracy"] for m in ms]))}


def sample_and_log(run: Run, step: int, row: dict) -> None:
    if run.sampling is None:
        return
    run.meter.pause(run.leaves)
    try:
        text = sample(run, seed=run.cfg.train.seed + step)
    except Exception as e:  # a sample is a report, never a reason to lose a run
        logging.warning("step %d: text sample failed: %r", step, e)
        return
    prompt = run.cfg.train.sample_prompt
    logging.info("step %d sample:\n%s%s", step, prompt, text)
    run.writer.write_text(step, "sample", prompt + text)
    run.final["sample"] = text


def sample(run: Run, *, seed: int) -> str:
    """A sampled continuation of the sample prompt through gptjax.generation (KV cache), the
    prompt excluded."""
    prompt = np.asarray(run.sampling.prompt, np.int32)
    model = nnx.merge(run.graphdef, run.state.params)
    out = generation.generate(model, prompt[None], max_new_tokens=run.sampling.num_tokens,
                              do_sample=True, temperature=SAMPLE_TEMPERATURE, top_k=SAMPLE_TOP_K,
                              seed=seed)
    return run.data.tokenizer.decode(np.asarray(out)[0, len(prompt):].tolist())


def choices_and_log(run: Run, step: int, row: dict) -> None:
    """train.choice_file's multiple-choice accuracy of the current params into the row."""
    if run.choices is None:
        return
    run.meter.pause(run.leaves)
    questions, rows = run.choices
    model = nnx.merge(run.graphdef, run.state.params)
    metrics = multiple_choice.score(model, questions, rows)["metrics"]
    row.update({f"choice_{name}": metrics[name] for name in multiple_choice.METRICS})
    logging.info("step %d | multiple choice (%d questions): accuracy %.4f | per character "
                 "%.4f | per token %.4f", step, metrics["examples"], metrics["accuracy"],
                 metrics["accuracy_norm"], metrics["accuracy_per_token"])


def record_row(run: Run, step: int, row: dict) -> None:
    """A non-empty row goes to metrics.jsonl/TensorBoard and into train()'s final metrics."""
    if not row:
        return
    row["time"] = time.time()  # wall clock (Unix seconds): time-to-loss across runs
    run.writer.write(step, row)
    run.final.update(row)
    run.final["step"] = step


def stop_on_skips(run: Run, step: int, row: dict) -> None:
    """Raise skips.NonFiniteError once train.max_consecutive_skips steps in a row were skipped
    (float16 overflows that halved the loss scale not counted); before a checkpoint it reads
    this step's flags too, so no save follows the limit."""
    tcfg = run.cfg.train
    last = step == tcfg.num_steps
    flags = {k: run.metrics[k] for k in ("skipped_steps", "overflow_steps") if k in run.metrics}
    stop = run.skip_guard.observe(step, flags, wait=every(tcfg.checkpoint_every)(step, last),
                                  steps=run.call_steps)
    if stop is None:
        return
    run.checkpoints.wait()
    newest = run.checkpoints.latest_step()
    raise skips.error(run.skip_guard, stop, None if newest is None else
                      f"step {newest} at {run.checkpoints.directory / str(newest)}", run.cfg)


def save_checkpoint(run: Run, step: int, row: dict) -> None:
    run.meter.pause(run.leaves)
    run.checkpoints.save(step, finetune.saved_state(run.cfg, run.state), run.data.train, run.cfg)
