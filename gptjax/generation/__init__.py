"""Text generation with Hugging Face `generate` semantics: greedy, sampling, beam search.

    output = generate(model, input_ids, max_length=50, num_beams=5, no_repeat_ngram_size=2)

The KV cache is preallocated for a bucket of the requested length; prefill and every decode step
run inside one jitted program (a lax.while_loop), compiled once per (batch, prompt bucket, length
bucket, options that change the program). Everything a user can get wrong is checked on the host
first (gptjax.generation.config). `generate` itself lives in gptjax.generation.api.
"""

from __future__ import annotations

from gptjax.generation.api import generate
from gptjax.generation.config import GenerationConfig, GenerationError, load_generation_defaults
from gptjax.generation.decoding import TRACES, decode_step, prefill
from gptjax.generation.streamers import TextStreamer
from gptjax.model.gpt import provide

__all__ = ["generate", "GenerationConfig", "GenerationError", "TextStreamer", "prefill",
           "decode_step", "load_generation_defaults", "TRACES"]


provide("generate", generate)  # GPT.generate
