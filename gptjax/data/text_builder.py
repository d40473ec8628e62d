"""A TFDS builder for text that is already on this machine: local files, the embedded corpus.

Each builder config is keyed on a hash of the text (and of how it is split), so a changed file
is prepared again under a new name and an unchanged one is read back without a second pass.
Examples are chunks of documents, `{'text': str, 'document': int}`, in order (no TFDS shuffle),
written as array_record so grain reads them without TensorFlow.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import hashlib
import logging
import pathlib
import re
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging as absl_logging

FORMAT_VERSION = "1"  # bump when the example layout changes, to re-prepare everything
CHUNK_CHARS = 1 << 20  # a record holds at most ~1M characters of a document


@dataclasses.dataclass(frozen=True)
class TextSource:
    """Documents that are read only when the dataset is prepared.

    `key` identifies the content (a hash); `read` returns the documents, one str each.
    """

    label: str  # a short readable name: the first file's stem, or 'embedded'
    key: str
    read: Callable[[], list[str]]


def file_source(paths: Sequence[str], what: str = "data.text_file") -> TextSource:
    """Local UTF-8 text files, each one document. A missing file raises FileNotFoundError."""
    files = [pathlib.Path(p).expanduser() for p in paths]
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(
                f"{what}: no such file {str(path)!r}"
                f"{' (it is a directory)' if path.is_dir() else ''}; pass an existing UTF-8 "
                f"text file, e.g. --config.{what}=/path/to/input.txt, or use the offline "
                "corpus that ships with Python: --config.data.dataset=embedded")
    digest = hashlib.sha256()
    for path in files:  # stream: the hash costs no memory, whatever the file's size
        _hash_utf8(path, digest, what)
        digest.update(b"\0file\0")

    def read() -> list[str]:
        docs = []
        for path in files:
            try:
                docs.append(path.read_text(encoding="utf-8"))
            except UnicodeDecodeError as e:
                raise ValueError(f"{what}: {path} is not UTF-8 text ({e}); convert it, e.g. "
                                 f"`iconv -t utf-8 {path} > out.txt`") from None
        return docs

    return TextSource(files[0].stem, digest.hexdigest(), read)


def _hash_utf8(path: pathlib.Path, digest, what: str) -> None:
    """Add the file to `digest`; an empty or non-UTF-8 file fails here, before TFDS writes
    anything (TFDS would fail later, leaving an empty dataset folder behind)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    size = 0
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
            size += len(block)
            try:
                decoder.decode(block)
            except UnicodeDecodeError as e:
                raise ValueError(f"{what}: {path} is not UTF-8 text ({e.reason} near byte "
                                 f"{size - len(block) + e.start}); convert it, e.g. "
                                 f"`iconv -t utf-8 {path} > out.txt`") from None
    if size == 0:
        raise ValueError(f"{what}: {path} is empty; give a file that holds the training text")


def documents_source(label: str, documents: Sequence[str]) -> TextSource:
    """Documents already in memory (the embedded corpus)."""
    digest = hashlib.sha256()
    for doc in documents:
        digest.update(doc.encode("utf-8", "surrogatepass"))
        digest.update(b"\0doc\0")
    return TextSource(label, digest.hexdigest(), lambda: list(documents))


def split_at_end(documents: Sequence[str], val_fraction: float,
                 ) -> tuple[list[str], list[str]]:
    """Train / validation documents, validation the last `val_fraction` of the characters.

    Contiguous, as nanoGPT splits a text: the cut is at int(n * (1 - val_fraction)) of the
    concatenated characters, and the document it falls in is split in two.
    """
    total = sum(map(len, documents))
    cut = int(total * (1 - val_fraction))
    train, val, seen = [], [], 0
    for doc in documents:
        if seen + len(doc) <= cut:
            train.append(doc)
        elif seen >= cut:
            val.append(doc)
        else:
            train.append(doc[:cut - seen])
            val.append(doc[cut - seen:])
        seen += len(doc)
    return [d for d in train if d], [d for d in val if d]


def chunks(text: str, size: int = CHUNK_CHARS) -> Iterator[str]:
    """`text` in pieces of at most `size` characters, cut after a newline where there is one."""
    start = 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            newline = text.rfind("\n", start, end)
            end = newline + 1 if newline > start else end
        yield text[start:end]
        start = end


class _LocalInfo(tfds.core.DatasetInfo):
    """A local text's DatasetInfo, with no metadata to look up on TFDS's bucket: TFDS's lookup
    makes a temporary folder (tempfile.mkdtemp) that it never removes, one in /tmp for every
    builder of a text not yet prepared."""

    def initialize_from_bucket(self) -> None:
        pass


class GptjaxText(tfds.core.GeneratorBasedBuilder):
    """Local text as TFDS splits 'train' and 'validation' (registered as 'gptjax_text')."""

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, train: TextSource, val: TextSource | None, val_fraction: float,
                 data_dir: str | None = None):
        self._train, self._val, self._val_fraction = train, val, val_fraction
        key = hashlib.sha256(
            f"{FORMAT_VERSION}|{train.key}|{val.key if val else val_fraction!r}".encode()
        ).hexdigest()[:16]
        label = re.sub(r"[^A-Za-z0-9_]+", "_", train.label).strip("_").lower()[:40] or "text"
        how = f"validation from {val.label}" if val else f"last {val_fraction:.0%} as validation"
        config = tfds.core.BuilderConfig(name=f"{label}_{key}",
                                         description=f"{train.label}, {how}")
        with quiet_tfds():
            super().__init__(config=config, data_dir=data_dir, file_format="array_record")

    # Nothing is downloaded, so there are no checksums to find; finding them would need
    # `importlib_resources`, which tensorflow-datasets imports but does not install on 3.11.
    @tfds.core.utils.classproperty
    @classmethod
    def _checksums_path(cls):
        return None

    def _info(self) -> tfds.core.DatasetInfo:
        return _LocalInfo(
            builder=self,
            description="Text documents in chunks, in their original order.",
            features=tfds.features.FeaturesDict(
                {"text": tfds.features.Text(), "document": np.int64}),
            disable_shuffling=True,  # the order of a text is its meaning
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        docs = self._train.read()
        if self._val is None:
            train, val = split_at_end(docs, self._val_fraction)
        else:
            train, val = docs, self._val.read()
        return {"train": self._generate_examples(train),
                "validation": self._generate_examples(val)}

    def _generate_examples(self, documents):
        index = 0
        for doc_id, doc in enumerate(documents):
            for piece in chunks(doc):
                yield index, {"text": piece, "document": doc_id}
                index += 1

    # TFDS prints these two to stdout; `prepare` logs one line instead.
    def _log_download_bytes(self) -> None:
        pass

    def _log_download_done(self) -> None:
        pass

    def prepare(self) -> GptjaxText:
        """Write the array_record files unless this exact content is already prepared."""
        with quiet_tfds():
            prepared = self.is_prepared()
            if not prepared:
                try:
                    self.download_and_prepare(file_format="array_record")
                except OSError:
                    # Another process (a second host, a parallel run) prepared the same text
                    # first and its rename won; its files are the same as ours would be.
                    if not self.is_prepared():
                        raise
        if not prepared:
            absl_logging.info("prepared %s in %s", self.builder_config.name,
                              self.data_dir)
        return self


@contextlib.contextmanager
def quiet_tfds():
    """No tqdm bars or 'custom configuration' warnings for a local, seconds-long prepare."""
    from tensorflow_datasets.core.utils import tqdm_utils

    absl_logger = logging.getLogger("absl")
    level, bars = absl_logger.level, getattr(tqdm_utils, "_active", True)
    absl_logger.setLevel(logging.ERROR)
    tfds.display_progress_bar(False)
    try:
        yield
    finally:
        absl_logger.setLevel(level)
        tfds.display_progress_bar(bars)
