"""A short text sample for the training loop's reports.

Uses gptjax.generation (model.generate, KV cache) when that module is present and the sample fits
in the model's positions; otherwise a small jitted sampling loop over `apply` (no KV cache: each
new token re-reads a window of the last `window` tokens, plenty for a progress sample).
"""

from __future__ import annotations

import functools
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gptjax.model import apply

TEMPERATURE = 0.8  # nanoGPT's sample.py defaults
TOP_K = 200


def sample_text(graphdef, params, tokenizer, prompt_ids, num_tokens: int, *, window: int,
                seed: int = 0) -> str:
    """Decode `num_tokens` sampled continuation tokens of `prompt_ids` (the prompt excluded)."""
    prompt = np.asarray(prompt_ids, np.int32)[-window:]
    fits = len(prompt) + num_tokens <= window
    if fits and importlib.util.find_spec("gptjax.generation") is not None:
        model = nnx.merge(graphdef, params)
        out = model.generate(prompt[None], max_new_tokens=num_tokens, do_sample=True,
                             temperature=TEMPERATURE, top_k=TOP_K, seed=seed)
        ids = np.asarray(out)[0, len(prompt):]
    else:
        ids = _sampler(graphdef, len(prompt), num_tokens, window)(
            params, jnp.asarray(prompt), jax.random.PRNGKey(seed))
    return tokenizer.decode(np.asarray(ids).tolist())


@functools.lru_cache(maxsize=8)
def _sampler(graphdef, prompt_len: int, num_tokens: int, window: int):
    total = prompt_len + num_tokens
    width = min(window, total)

    @jax.jit
    def run(params, prompt, key):
        buf = jnp.zeros((total,), jnp.int32).at[:prompt_len].set(prompt)

        def body(i, carry):
            buf, key = carry
            cur = prompt_len + i  # tokens so far
            start = jnp.maximum(cur - width, 0)
            ctx = jax.lax.dynamic_slice(buf, (start,), (width,))
            logits = apply(graphdef, params, ctx[None], deterministic=True)[0, cur - 1 - start]
            logits = logits / TEMPERATURE
            k = min(TOP_K, logits.shape[-1])
            kth = jax.lax.top_k(logits, k)[0][-1]
            logits = jnp.where(logits < kth, -jnp.inf, logits)
            key, sub = jax.random.split(key)
            tok = jax.random.categorical(sub, logits).astype(jnp.int32)
            return buf.at[cur].set(tok), key

        buf, _ = jax.lax.fori_loop(0, num_tokens, body, (buf, key))
        return buf[prompt_len:]

    return run
