"""Text corpora: local text files, the embedded offline corpus, the TFDS catalog.

    corpus = text_file(config.data, data_dir(config.data))   # prepared as array_record
    for document, text in corpus.documents(corpus.train_split): ...

A corpus function is `(DataConfig, data_dir) -> Corpus`; gptjax.data.pipeline.DATASETS
registers each one as a dataset through gptjax.data.text.text_dataset.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
from collections.abc import Iterator

import grain
import tensorflow_datasets as tfds

from gptjax.config import ConfigError, DataConfig
from gptjax.data.base import file_paths
from gptjax.data.text_builder import GptjaxText, documents_source, file_source

OFFLINE_WAY = "--config.data.dataset=text_file --config.data.text_file=PATH"
PROBE_HOST = ("storage.googleapis.com", 443)  # TFDS's download mirror (gs://tfds-data)
PROBE_SECONDS = 3.0


class DatasetUnavailableError(RuntimeError):
    """A TFDS catalog dataset that is not prepared here and cannot be downloaded now."""


class NotInCatalogError(ConfigError):
    """A data.dataset name that TFDS's catalog does not hold either."""


@dataclasses.dataclass(frozen=True)
class Corpus:
    """A prepared TFDS dataset and which of its splits and features hold the text."""

    name: str
    builder: tfds.core.DatasetBuilder
    train_split: str = "train"
    val_split: str = "validation"
    text_key: str = "text"
    document_key: str | None = "document"  # None: every example is a document of its own

    def documents(self, split: str) -> Iterator[tuple[int, str]]:
        """(document id, text) of every example of `split`, in order."""
        for index, example in enumerate(examples(self.builder.as_data_source(split))):
            text = example[self.text_key]
            text = text.decode("utf-8") if isinstance(text, bytes) else str(text)
            doc = int(example[self.document_key]) if self.document_key else index
            yield doc, text


def examples(source) -> Iterator[dict]:
    """The examples of a TFDS data source in order, read ahead by a few threads (bounded)."""
    return iter(grain.MapDataset.source(source).to_iter_dataset(
        grain.ReadOptions(num_threads=4, prefetch_buffer_size=256)))


def data_dir(data: DataConfig) -> str | None:
    """Where datasets are prepared; None lets TFDS pick ($TFDS_DATA_DIR, ~/tensorflow_datasets)."""
    return tfds_dir(data.data_dir)


def tfds_dir(given: str | None) -> str | None:
    """`given`, else $GPTJAX_DATA_DIR, else None (TFDS's default)."""
    return given or os.environ.get("GPTJAX_DATA_DIR") or None


def text_file(data: DataConfig, root: str | None) -> Corpus:
    """Local UTF-8 text file(s); validation is data.val_text_file or the end of the text."""
    if not data.text_file:
        raise ConfigError(
            "data.dataset='text_file' needs data.text_file: pass "
            "--config.data.text_file=PATH (several files: PATH1,PATH2)")
    train = file_source(file_paths(data.text_file), "data.text_file")
    val = (file_source(file_paths(data.val_text_file), "data.val_text_file")
           if data.val_text_file else None)
    builder = GptjaxText(train=train, val=val, val_fraction=data.val_fraction, data_dir=root)
    return Corpus(f"text_file:{train.label}", builder.prepare())


def embedded(data: DataConfig, root: str | None) -> Corpus:
    """The documentation CPython ships in pydoc_data.topics: ~465k characters, no download."""
    refuse_text_file(data)
    try:
        from pydoc_data import topics
    except ImportError as e:  # some distributions strip it from their Python
        raise ConfigError(
            "data.dataset='embedded' reads the documentation that CPython ships in "
            f"pydoc_data.topics, which this Python lacks ({e}); use {OFFLINE_WAY}") from None
    docs = [text for _, text in sorted(topics.topics.items())]
    builder = GptjaxText(train=documents_source("pydoc_topics", docs), val=None,
                         val_fraction=data.val_fraction, data_dir=root)
    return Corpus("embedded", builder.prepare())


def network_available(host: tuple[str, int] = PROBE_HOST,
                      timeout: float = PROBE_SECONDS) -> bool:
    """Whether `host` accepts a TCP connection within `timeout` s (DNS included: a thread)."""
    result: list[bool] = []

    def probe():
        try:
            socket.create_connection(host, timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def catalog(name: str, data: DataConfig, root: str | None) -> Corpus:
    """A TFDS catalog dataset, prepared as array_record; downloaded once when online."""
    refuse_text_file(data)
    builder = prepared_builder(name, root, (
        f"Offline, train on a local text file instead: {OFFLINE_WAY} (or on the embedded "
        f"corpus: --config.data.dataset=embedded); or prepare it where there is network "
        f"({build_command(name)}) and copy it into data.data_dir"))
    text_keys = text_features(builder)
    if not text_keys:
        raise ConfigError(f"data.dataset={name!r} has no text feature (features: "
                          f"{list(builder.info.features)}); choose a text dataset")
    train, val = "train", held_out_split(builder)
    if val is None:  # no held-out split: the end of train, as for local text
        keep = round(100 * (1 - data.val_fraction))
        train, val = f"train[:{keep}%]", f"train[{keep}%:]"
    return Corpus(name, builder, train, val,
                  text_key="text" if "text" in text_keys else text_keys[0], document_key=None)


def prepared_builder(name: str, root: str | None, fix: str) -> tfds.core.DatasetBuilder:
    """TFDS's builder for `name` (name[/config][:version]), prepared as array_record: downloaded
    and prepared once when online; `fix` is the way out offered when it cannot be."""
    try:
        builder = tfds.builder(name, data_dir=root, file_format="array_record")
    except (tfds.core.registered.DatasetNotFoundError, ValueError, AssertionError) as e:
        # AssertionError: a version the catalog does not have
        raise NotInCatalogError(f"{type(e).__name__}: {str(e).splitlines()[0]}") from None
    if not builder.is_prepared():
        if not network_available():
            raise DatasetUnavailableError(
                f"TFDS catalog dataset {name!r} is not prepared in {builder.data_dir} and cannot "
                f"be downloaded: {PROBE_HOST[0]} is unreachable (no network). {fix}")
        try:
            builder.download_and_prepare(file_format="array_record")
        except Exception as e:  # any download/prepare failure gets the same way out
            if isinstance(e, ModuleNotFoundError):  # TFDS imports more than it installs
                fix = f"`pip install {e.name}` and try again. {fix}"
            raise DatasetUnavailableError(
                f"TFDS catalog dataset {name!r} could not be downloaded and prepared in "
                f"{builder.data_dir}: {type(e).__name__}: {e}. {fix}") from e
    return builder


def text_features(builder: tfds.core.DatasetBuilder) -> list[str]:
    """The names of the dataset's top-level text features."""
    return [k for k, f in builder.info.features.items() if isinstance(f, tfds.features.Text)]


def held_out_split(builder: tfds.core.DatasetBuilder) -> str | None:
    """The split of held-out examples: 'validation', else 'test', else None."""
    return next((s for s in ("validation", "test") if s in builder.info.splits), None)


def build_command(name: str) -> str:
    """The command that prepares catalog dataset `name` where there is network."""
    return f"`tfds build {name} --file_format=array_record`"


def refuse_text_file(data: DataConfig) -> None:
    """A corpus other than text_file fails when data.text_file is set: the user meant the file."""
    if data.text_file or data.val_text_file:
        raise ConfigError(
            f"data.text_file is set but data.dataset={data.dataset!r} ignores it; to train on "
            f"the file add --config.data.dataset=text_file")


def catalog_names() -> list[str]:
    """TFDS's catalog (for suggestions only: empty where it cannot be listed)."""
    try:
        return list(tfds.list_builders(with_community_datasets=False))
    except Exception:  # only for suggestions
        return []
