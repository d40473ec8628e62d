"""`generate`: a request checked and shaped on the host, one jitted program, its output unpacked.

The phases: `_prepare` (inputs to static, bucketed shapes), `_spec` (what selects the compiled
program) and `_values` (the options it takes as traced values, so changing them compiles
nothing), `_execute` (the jitted loop, with the streamer attached), `_unpack` (the rows asked for).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from gptjax.generation.beam import beam_search_loop
from gptjax.generation.config import (GenerationConfig, GenerationError, bucket, cache_bucket,
                                      model_defaults, prepare_inputs, resolve_lengths)
from gptjax.generation.decoding import _STREAM_SINK, Spec, sample_loop
from gptjax.generation.processors import Processors
from gptjax.model import split
from gptjax.model.kernels import check_available


@functools.partial(jax.jit, static_argnames=("graphdef", "spec"))
def _run(graphdef, params, prompt, valid, start, max_slot, eos_ids, pad_id, key, values, *,
         spec: Spec):
    loop = beam_search_loop if spec.strategy == "beam" else sample_loop
    return loop(graphdef, params, prompt, valid, start, max_slot, eos_ids, pad_id, key, values,
                spec=spec)


@dataclasses.dataclass(frozen=True)
class _Request:
    """One call's prompts on the host, in the static shapes of its program."""

    prompt: np.ndarray  # [rows, width] int32: each prompt at the right end of a bucketed width
    valid: np.ndarray  # [rows, width] bool: False on padding
    start: int  # slot of the first prompt token: width - prompt_len
    batch: int  # prompts given (rows = batch * num_return_sequences when sampling)
    prompt_len: int
    max_length: int  # prompt included
    min_length: int
    cache_len: int  # slots of the KV cache


def generate(model, input_ids, *, attention_mask=None, streamer=None, **kwargs) -> np.ndarray:
    """Continue each prompt; returns int32 ids [batch * num_return_sequences, total_len],
    prompts included, finished sequences padded with pad_token_id (as transformers).

    input_ids: a list of ids, a batch (list of lists, ragged ones are left-padded for you) or an
    int array [batch, len]; attention_mask: [batch, len], 0 on left padding. Options have
    transformers' names and defaults (see GenerationConfig); the model's own defaults
    (`model.generation_config`, e.g. its eos_token_id) apply where an option is not given.
    streamer: an object with put(ids: np.ndarray [batch]) called once per new token and end();
    greedy or sampling only.
    """
    check_available(model.cfg.attention)  # e.g. a cudnn model on a CPU: fail before compiling
    config = GenerationConfig.build(model_defaults(model), kwargs)
    request = _prepare(model.cfg, input_ids, attention_mask, config, streamer)
    spec = _spec(config, request.cache_len, streamer)
    out = _execute(model, request, spec, _values(config, request), config, streamer)
    return _unpack(out, request, config)


def _prepare(model_cfg, input_ids, attention_mask, config: GenerationConfig,
             streamer) -> _Request:
    """Check the prompts and options, then place the prompts in a bucketed width."""
    ids, mask = prepare_inputs(input_ids, attention_mask, config, model_cfg.vocab_size)
    batch, prompt_len = ids.shape
    max_length, min_length = resolve_lengths(config, prompt_len, model_cfg)
    beam = config.num_beams > 1
    if streamer is not None and (beam or batch * config.num_return_sequences > 1):
        raise GenerationError("streaming needs a single prompt with greedy decoding or sampling "
                              "(num_beams=1, num_return_sequences=1)")
    if config.do_sample and not beam and config.num_return_sequences > 1:
        # transformers samples each prompt num_return_sequences times, side by side
        ids = np.repeat(ids, config.num_return_sequences, axis=0)
        mask = np.repeat(mask, config.num_return_sequences, axis=0)

    # Static shapes: the prompt goes to the right end of a bucketed width P.
    width = bucket(prompt_len)
    start = width - prompt_len
    # Slots needed: width + new tokens. Bound them by what the caller fixed (max_new_tokens, or
    # max_length, which includes the prompt) so every prompt in the bucket shares the program.
    cache_len = cache_bucket(width + (config.max_new_tokens or max_length))
    prompt = np.zeros((ids.shape[0], width), np.int32)
    prompt[:, start:] = ids
    valid = np.zeros(prompt.shape, bool)
    valid[:, start:] = mask
    return _Request(prompt=prompt, valid=valid, start=start, batch=batch, prompt_len=prompt_len,
                    max_length=max_length, min_length=min_length, cache_len=cache_len)


def _spec(config: GenerationConfig, cache_len: int, streamer) -> Spec:
    """The static half of the call: one compiled program per distinct Spec (and graphdef)."""
    beam = config.num_beams > 1
    eos = config.eos_ids
    return Spec(
        strategy="beam" if beam else "sample",
        beam_sample=beam and bool(config.do_sample),
        cache_len=cache_len,
        num_beams=config.num_beams,
        num_eos=max(1, len(eos)),
        processors=Processors(
            max_ngram=max(4, config.no_repeat_ngram_size),
            min_tokens_to_keep=(len(eos) + 1 if eos else 2) if beam else 1),
        stream=streamer is not None)


def _values(config: GenerationConfig, request: _Request) -> dict[str, jax.Array]:
    """The options the program takes as traced values: changing them compiles nothing."""
    lp = float(config.length_penalty)
    denominators = np.asarray([float(n) ** lp if n else 1.0 for n in range(request.cache_len + 1)],
                              np.float32)
    return dict(
        repetition_penalty=jnp.float32(config.repetition_penalty),
        no_repeat_ngram_size=jnp.int32(config.no_repeat_ngram_size),
        min_length=jnp.int32(request.min_length),
        do_sample=jnp.bool_(config.do_sample),
        temperature=jnp.float32(config.temperature),
        top_k=jnp.int32(config.top_k or 0),
        top_p=jnp.float32(config.top_p),
        length_denominators=jnp.asarray(denominators),
        length_penalty_positive=jnp.bool_(lp > 0.0),
        early_stopping_true=jnp.bool_(config.early_stopping != "never"
                                      and bool(config.early_stopping)),
        early_stopping_never=jnp.bool_(config.early_stopping == "never"))


def _pad_id(config: GenerationConfig) -> int:
    """The id that fills finished sequences."""
    eos, pad = config.eos_ids, config.pad_id
    if config.num_beams > 1:
        # transformers: `pad_token_id or eos_token_id[0] if eos_token_id is not None else -1`
        pad = (pad or eos[0]) if eos else -1
    return pad if pad is not None else 0


def lower(model, input_ids, *, attention_mask=None, **kwargs) -> jax.stages.Lowered:
    """The program `generate(model, input_ids, **kwargs)` runs, lowered and not run: for its
    compiled HLO, cost analysis or memory (gptjax.bench.profile reads its ops from it)."""
    config = GenerationConfig.build(model_defaults(model), kwargs)
    request = _prepare(model.cfg, input_ids, attention_mask, config, None)
    spec = _spec(config, request.cache_len, None)
    return _run.lower(*_arguments(model, request, _values(config, request), config), spec=spec)


def _arguments(model, request: _Request, values, config: GenerationConfig) -> tuple:
    """_run's positional arguments for this request."""
    graphdef, params = split(model)
    eos_ids = jnp.asarray(list(config.eos_ids) or [-1], jnp.int32)
    return (graphdef, params, jnp.asarray(request.prompt), jnp.asarray(request.valid),
            jnp.int32(request.start), jnp.int32(request.start + request.max_length),
            eos_ids, jnp.int32(_pad_id(config)), jax.random.key(config.seed), values)


def _execute(model, request: _Request, spec: Spec, values, config: GenerationConfig, streamer):
    """Run the compiled loop, streaming to `streamer` if any; its outputs, on the host."""
    _STREAM_SINK.streamer = streamer
    try:
        out = _run(*_arguments(model, request, values, config), spec=spec)
        return jax.device_get(out)
    finally:
        _STREAM_SINK.streamer = None
        if streamer is not None:
            streamer.end()


def _unpack(out, request: _Request, config: GenerationConfig) -> np.ndarray:
    """The rows the caller asked for, prompts included: [batch * num_return_sequences, total]."""
    start = request.start
    if config.num_beams > 1:
        sequences, lengths = out  # [batch, num_beams, cache_len] best first; [batch, num_beams]
        r = config.num_return_sequences
        total = request.prompt_len + int(lengths[:, :r].max())
        return np.ascontiguousarray(
            sequences[:, :r, start:start + total].reshape(request.batch * r, total))
    tokens, end = out
    return np.ascontiguousarray(tokens[:, start:int(end)])
