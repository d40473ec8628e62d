"""Text generation with Hugging Face `generate` semantics: greedy, sampling, beam search.

    output = generate(model, input_ids, max_length=50, num_beams=5, no_repeat_ngram_size=2)

The KV cache is preallocated for a bucket of the requested length; prefill and every decode step
run inside one jitted program (a lax.while_loop), compiled once per (batch, prompt bucket, length
bucket, options that change the program). Everything a user can get wrong is checked on the host
first (gptjax.generation.config).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from gptjax.generation import processors
from gptjax.generation.beam import beam_search_loop
from gptjax.generation.config import (GenerationConfig, GenerationError, bucket, cache_bucket,
                                      load_generation_defaults, model_defaults, prepare_inputs,
                                      resolve_lengths)
from gptjax.generation.decoding import (TRACES, Spec, _STREAM_SINK, decode_step, prefill,
                                        sample_loop)
from gptjax.generation.streamers import TextStreamer
from gptjax.model.gpt import provide

__all__ = ["generate", "GenerationConfig", "GenerationError", "TextStreamer", "prefill",
           "decode_step", "load_generation_defaults", "TRACES"]


@functools.partial(jax.jit, static_argnames=("graphdef", "spec"))
def _run(graphdef, params, prompt, valid, start, max_slot, eos_ids, pad_id, key, values, *,
         spec: Spec):
    loop = beam_search_loop if spec.strategy == "beam" else sample_loop
    return loop(graphdef, params, prompt, valid, start, max_slot, eos_ids, pad_id, key, values,
                spec=spec)


def _split(model):
    """(graphdef, params): the static structure (jit's cache key) and the weights."""
    from gptjax.model import split

    return split(model)


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
    from gptjax.model.kernels import check_available

    check_available(model.cfg.attention)  # e.g. a cudnn model on a CPU: fail before compiling
    config = GenerationConfig.build(model_defaults(model), kwargs)
    cfg = model.cfg
    ids, mask = prepare_inputs(input_ids, attention_mask, config, cfg.vocab_size)
    batch, prompt_len = ids.shape
    max_length, min_length = resolve_lengths(config, prompt_len, cfg)
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

    eos = config.eos_ids
    pad = config.pad_id
    if beam:  # transformers: `pad_token_id or eos_token_id[0] if eos_token_id is not None else -1`
        pad = (pad or eos[0]) if eos else -1
    spec = Spec(
        strategy="beam" if beam else "sample",
        beam_sample=beam and bool(config.do_sample),
        cache_len=cache_len,
        num_beams=config.num_beams,
        num_eos=max(1, len(eos)),
        processors=processors.Processors(
            max_ngram=max(4, config.no_repeat_ngram_size),
            min_tokens_to_keep=(len(eos) + 1 if eos else 2) if beam else 1),
        stream=streamer is not None)
    lp = float(config.length_penalty)
    denominators = np.asarray([float(n) ** lp if n else 1.0 for n in range(cache_len + 1)],
                              np.float32)
    values = dict(
        repetition_penalty=jnp.float32(config.repetition_penalty),
        no_repeat_ngram_size=jnp.int32(config.no_repeat_ngram_size),
        min_length=jnp.int32(min_length),
        do_sample=jnp.bool_(config.do_sample),
        temperature=jnp.float32(config.temperature),
        top_k=jnp.int32(config.top_k or 0),
        top_p=jnp.float32(config.top_p),
        length_denominators=jnp.asarray(denominators),
        length_penalty_positive=jnp.bool_(lp > 0.0),
        early_stopping_true=jnp.bool_(config.early_stopping != "never"
                                      and bool(config.early_stopping)),
        early_stopping_never=jnp.bool_(config.early_stopping == "never"))
    eos_ids = jnp.asarray(list(eos) or [-1], jnp.int32)

    graphdef, params = _split(model)
    _STREAM_SINK.streamer = streamer
    try:
        out = _run(graphdef, params, jnp.asarray(prompt), jnp.asarray(valid), jnp.int32(start),
                   jnp.int32(start + max_length), eos_ids,
                   jnp.int32(pad if pad is not None else 0), jax.random.key(config.seed), values,
                   spec=spec)
        out = jax.device_get(out)
    finally:
        _STREAM_SINK.streamer = None
        if streamer is not None:
            streamer.end()
    if beam:
        sequences, lengths = out
        r = config.num_return_sequences
        total = prompt_len + int(lengths[:, :r].max())
        return np.ascontiguousarray(sequences[:, :r, start:start + total].reshape(batch * r, total))
    tokens, end = out
    return np.ascontiguousarray(tokens[:, start:int(end)])


provide("generate", generate)  # GPT.generate
