"""Make tests/golden/generation.json: Hugging Face `generate` outputs on the tiny GPT-2 fixture.

Run once by hand (needs torch and transformers; the tests need neither):

    pip install torch==2.13.0 transformers && python tests/make_generation_golden.py

Every case records its input ids, attention mask, the keyword arguments given to both
`GPT2LMHeadModel.generate` and gptjax's `generate`, and transformers' output ids.
tests/test_generation.py checks that gptjax produces the same ids, token for token.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing here may download

import collections  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402

import torch  # noqa: E402
import transformers  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
FOLDER = HERE / "golden" / "tiny-gpt2"
OUT = HERE / "golden" / "generation.json"
MAX_LENGTH = 50  # as the article
# 17..32 tokens each: one prompt bucket (gptjax pads prompts to powers of two from 8)
TEXTS = ("Before we proceed any further, hear me speak.", "We know't, we know't.",
         "You are all resolved rather to die")
ARTICLE_TEXT = "The quick brown fox jumps over the"
PAD = 0  # left padding in the batch cases (masked out, so any id would do)


def main() -> None:
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(FOLDER / "tokenizer.json"))
    model = transformers.GPT2LMHeadModel.from_pretrained(FOLDER).eval()
    prompts = [tokenizer.encode(t) for t in TEXTS]
    assert all(17 <= len(p) <= 32 for p in prompts), [len(p) for p in prompts]
    width = max(len(p) for p in prompts[:2])
    batch = {"input_ids": [[PAD] * (width - len(p)) + p for p in prompts[:2]],
             "attention_mask": [[0] * (width - len(p)) + [1] * len(p) for p in prompts[:2]]}

    def run(input_ids, attention_mask, kwargs):
        extra = {} if attention_mask is None else {
            "attention_mask": torch.tensor(attention_mask)}
        with torch.no_grad():
            out = model.generate(torch.tensor(input_ids), **extra, **kwargs)
        return out.tolist()

    # An eos id that the model really produces, so that finishing beams and padding are tested:
    # the token that occurs (after the first new token) in the most greedy / beam outputs.
    counts = collections.Counter()
    for p in prompts:
        for nb in (1, 3, 5):
            out = run([p], None, dict(max_length=MAX_LENGTH, num_beams=nb, eos_token_id=None))
            counts.update(set(out[0][len(p) + 1:]))
    eos = counts.most_common(1)[0][0]
    print(f"eos_token_id for the eos cases: {eos} ({tokenizer.decode([eos])!r})")

    cases = []

    def add(name, kwargs, batched=False, prompt_ids=prompts):
        kwargs = {"max_length": MAX_LENGTH, **kwargs}
        inputs = [(batch["input_ids"], batch["attention_mask"])] if batched else \
            [([p], None) for p in prompt_ids]
        for i, (ids, mask) in enumerate(inputs):
            out = run(ids, mask, kwargs)
            cases.append({"name": f"{name}/{'batch' if batched else f'prompt{i}'}",
                          "input_ids": ids, "attention_mask": mask, "kwargs": kwargs,
                          "output": out})

    for eos_id in (None, eos):
        tag = "eos" if eos_id is not None else "noeos"
        add(f"greedy/{tag}", {"eos_token_id": eos_id})
        add(f"greedy/{tag}", {"eos_token_id": eos_id}, batched=True)
        for nb in (3, 5):
            for ngram in (0, 2, 3):
                kw = {"num_beams": nb, "no_repeat_ngram_size": ngram, "eos_token_id": eos_id}
                add(f"beam{nb}/ngram{ngram}/{tag}", kw)
                add(f"beam{nb}/ngram{ngram}/{tag}", kw, batched=True)
    beam_eos = {"num_beams": 3, "eos_token_id": eos}
    for lp in (0.0, 2.0, -1.0):
        add(f"beam3/length_penalty{lp}", {**beam_eos, "length_penalty": lp})
    for es in (True, "never"):
        add(f"beam3/early_stopping_{es}", {**beam_eos, "early_stopping": es})
        add(f"beam5/early_stopping_{es}/lp2", {"num_beams": 5, "eos_token_id": eos,
                                               "early_stopping": es, "length_penalty": 2.0})
    add("beam5/num_return_sequences3", {"num_beams": 5, "eos_token_id": eos,
                                        "num_return_sequences": 3}, batched=True)
    add("beam3/num_return_sequences3/ngram2", {**beam_eos, "num_return_sequences": 3,
                                               "no_repeat_ngram_size": 2})
    add("greedy/repetition_penalty", {"repetition_penalty": 1.3, "eos_token_id": eos})
    add("greedy/repetition_penalty", {"repetition_penalty": 1.3, "eos_token_id": eos},
        batched=True)
    add("beam3/repetition_penalty", {**beam_eos, "repetition_penalty": 1.5})
    add("greedy/min_new_tokens", {"min_new_tokens": 12, "eos_token_id": eos})
    add("beam3/min_new_tokens", {**beam_eos, "min_new_tokens": 12})
    add("beam5/min_new_tokens/batch", {"num_beams": 5, "eos_token_id": eos,
                                       "min_new_tokens": 8}, batched=True)
    add("greedy/pad_token_id", {"eos_token_id": eos, "pad_token_id": 7}, batched=True)
    # The background article's example, as written (the model's own eos id, made explicit).
    article = tokenizer.encode(ARTICLE_TEXT)
    kwargs = {"max_length": MAX_LENGTH, "num_beams": 5, "no_repeat_ngram_size": 2,
              "eos_token_id": model.generation_config.eos_token_id}
    cases.append({"name": "article", "input_ids": [article], "attention_mask": None,
                  "kwargs": kwargs, "output": run([article], None, kwargs)})

    finished_early = sum(len(row) < MAX_LENGTH or eos in row[-(MAX_LENGTH // 2):]
                         for c in cases if c["kwargs"].get("eos_token_id") is not None
                         for row in c["output"])
    print(f"{len(cases)} cases; {finished_early} output rows end with eos before max_length")
    assert finished_early > 10, "pick an eos id that the model produces"
    OUT.write_text(json.dumps({
        "about": "transformers generate() outputs on tests/golden/tiny-gpt2, made by "
                 "tests/make_generation_golden.py",
        "transformers": transformers.__version__, "torch": torch.__version__,
        "eos_token_id": eos, "cases": cases}, indent=None, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e3:.1f} kB)")


if __name__ == "__main__":
    main()
