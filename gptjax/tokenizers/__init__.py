"""Tokenizers: character-level, byte-level and byte-level BPE (GPT-2), behind one class.

    tok = Tokenizer.from_pretrained(folder)      # tokenizer.json, vocab.json + merges.txt, or ours
    ids = tok.encode("Hello world")              # GPT-2: [15496, 995]
    text = tok.decode(ids, skip_special_tokens=True)

BPE is the `tokenizers` library set up exactly as Hugging Face sets up GPT-2 (ByteLevel
pre-tokenizer with GPT-2's regex, no prefix space, ByteLevel decoder), so ids are GPT-2's.
Character- and byte-level are a few lines each and are saved as `gptjax_tokenizer.json`.
Special tokens follow Hugging Face: an `<|endoftext|>` written inside the text encodes to its
id, `encode` adds nothing for GPT-2, and `decode` is the exact inverse of `encode` (no clean-up
of spaces).
`encode_documents` (corpus preparation) encodes GPT-2-style BPE with tiktoken instead, built
offline from the same vocabulary and merges, where the pipeline and vocabulary guarantee the
same ids (`tiktoken_bpe.tiktoken_for` says why not otherwise): several times faster.
"""

from gptjax.tokenizers.codec import EOT
from gptjax.tokenizers.corpus import encode_documents
from gptjax.tokenizers.tokenizer import (GPTJAX_FILE, NAMES, Tokenizer, find_gpt2_folder,
                                         fingerprint)

__all__ = ["EOT", "GPTJAX_FILE", "NAMES", "Tokenizer", "encode_documents", "find_gpt2_folder",
           "fingerprint"]
