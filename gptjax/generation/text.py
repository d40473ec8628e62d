"""Text in, text out: prompts through a tokenizer, `generate`, and back (the CLI's library half)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from gptjax.generation.api import generate
from gptjax.generation.config import GenerationError, model_defaults


def defaults_for(model, tokenizer) -> dict[str, Any]:
    """The model's generation defaults (GPT.from_pretrained attaches its folder's
    generation_config.json / config.json), with the tokenizer's eos and pad ids where they name
    none."""
    if tokenizer.vocab_size > model.cfg.vocab_size:  # ids the model never learned
        raise GenerationError(
            f"the tokenizer has {tokenizer.vocab_size} ids but the model's vocabulary holds "
            f"{model.cfg.vocab_size}: they were not trained together; use the checkpoint's own "
            "tokenizer (leave --tokenizer unset to take the checkpoint folder's)")
    defaults = model_defaults(model)
    if defaults.get("eos_token_id") is None and tokenizer.eos_token_id is not None:
        defaults["eos_token_id"] = tokenizer.eos_token_id
    if defaults.get("pad_token_id") is None and tokenizer.pad_token_id is not None:
        defaults["pad_token_id"] = tokenizer.pad_token_id
    return defaults


def generate_text(model, tokenizer, prompts: Sequence[str], *, streamer=None,
                  **options) -> list[dict[str, Any]]:
    """Encode `prompts` (each a text, or its token ids as a list), generate (options as
    `generate`'s), decode.

    Returns one dict per output sequence, in order (prompt i's num_return_sequences outputs
    side by side): {'prompt': i, 'ids': prompt + new ids (no padding), 'text': the decoded ids,
    special tokens skipped, 'new_text': the continuation alone}.
    """
    if not prompts:
        raise GenerationError("no prompt given: pass --prompt TEXT or --prompt_file PATH")
    encoded = [tokenizer.encode(p) if isinstance(p, str) else list(p) for p in prompts]
    for i, ids in enumerate(encoded):
        if not ids:
            raise GenerationError(f"prompt {i} ({prompts[i]!r}) encodes to no tokens; give it "
                                  "some text")
    out = generate(model, encoded if len(encoded) > 1 else encoded[0], streamer=streamer,
                   **options)
    width = max(len(ids) for ids in encoded)
    per_prompt = out.shape[0] // len(encoded)
    eos = options.get("eos_token_id")
    eos = set(np.atleast_1d(eos).tolist()) if eos is not None else set()
    results = []
    for row_index, row in enumerate(out):
        i = row_index // per_prompt
        new = row[width:].tolist()
        for j, token in enumerate(new):
            if token in eos:  # the sequence ended here; the rest is padding
                new = new[:j + 1]
                break
        ids = list(encoded[i]) + [t for t in new if t >= 0]
        results.append({"prompt": i, "ids": ids,
                        "text": tokenizer.decode(ids, skip_special_tokens=True),
                        "new_text": tokenizer.decode(new, skip_special_tokens=True)})
    return results
