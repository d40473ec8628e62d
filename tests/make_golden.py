"""Make the Hugging Face golden fixture: a tiny random GPT-2, its tokenizer and its logits.

Run once by hand (needs torch and transformers; the tests need neither):

    pip install torch==2.13.0 transformers && python tests/make_golden.py

Writes tests/golden/tiny-gpt2/ (config.json, model.safetensors, vocab.json, merges.txt,
tokenizer.json, as `save_pretrained` and `tokenizers` write them) and
tests/golden/tiny-gpt2-logits.npz (prompt_i: int32 [1, len], logits_i: float32 [1, len, vocab]).
Other tests read the folder; regenerate it only on purpose, it changes every expected output.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing here may download

import pathlib  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from tokenizers import ByteLevelBPETokenizer  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
FOLDER = HERE / "golden" / "tiny-gpt2"
LOGITS = HERE / "golden" / "tiny-gpt2-logits.npz"
SHAKESPEARE = HERE.parents[1] / "shared" / "data" / "tinyshakespeare.txt"

VOCAB_SIZE = 320  # 256 bytes + <|endoftext|> + 63 merges
N_POSITIONS = 128
PROMPT_LENGTHS = (1, 9, 40, N_POSITIONS)  # the last fills every learned position
EOT = "<|endoftext|>"


def train_tokenizer(text: str) -> ByteLevelBPETokenizer:
    """A byte-level BPE (GPT-2's scheme) with a tiny vocabulary."""
    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator([text], vocab_size=VOCAB_SIZE, min_frequency=2,
                                  special_tokens=[EOT], show_progress=False)
    return tokenizer


def random_gpt2(vocab_size: int, eot_id: int) -> transformers.GPT2LMHeadModel:
    """A small GPT-2 with every parameter perturbed away from its init.

    HF initialises biases to 0 and LayerNorm to (1, 0); noise on every tensor makes a mis-mapped
    bias or LayerNorm show in the logits. A wide init keeps attention far from uniform, so a wrong
    causal mask or head split shows too.
    """
    config = transformers.GPT2Config(
        vocab_size=vocab_size, n_positions=N_POSITIONS, n_embd=64, n_layer=2, n_head=4,
        initializer_range=0.1, bos_token_id=eot_id, eos_token_id=eot_id)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def main() -> None:
    text = SHAKESPEARE.read_text(encoding="utf-8")
    tokenizer = train_tokenizer(text[:200_000])
    eot_id = tokenizer.token_to_id(EOT)
    model = random_gpt2(tokenizer.get_vocab_size(), eot_id)

    FOLDER.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(FOLDER)  # config.json + model.safetensors (+ generation_config.json)
    tokenizer.save_model(str(FOLDER))  # vocab.json + merges.txt
    tokenizer.save(str(FOLDER / "tokenizer.json"))

    # Prompts from text the tokenizer never saw, cut to the chosen lengths.
    ids = tokenizer.encode(text[-20_000:]).ids
    arrays = {}
    model.set_attn_implementation("eager")  # the textbook computation is the reference
    for i, n in enumerate(PROMPT_LENGTHS):
        prompt = np.asarray(ids[1000 * i: 1000 * i + n], np.int32)[None]
        with torch.no_grad():
            logits = model(torch.from_numpy(prompt).long()).logits.numpy().astype(np.float32)
        arrays[f"prompt_{i}"], arrays[f"logits_{i}"] = prompt, logits
        probs = torch.softmax(torch.from_numpy(logits[0]), -1)
        print(f"prompt {i}: {n} tokens, logits std {logits.std():.3f}, "
              f"max prob {probs.max():.3f}")
    np.savez_compressed(LOGITS, **arrays)
    size = sum(f.stat().st_size for f in FOLDER.iterdir()) + LOGITS.stat().st_size
    print(f"wrote {FOLDER} and {LOGITS} ({size / 1e6:.2f} MB; torch {torch.__version__}, "
          f"transformers {transformers.__version__})")


if __name__ == "__main__":
    main()
