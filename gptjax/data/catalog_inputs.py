"""TFDS catalog datasets as prepare_data inputs: `tfds:NAME[/CONFIG][:VERSION][@SPLIT]`.

    --inputs=tfds:tiny_shakespeare              # train -> train, validation (or test) -> val
    --inputs='tfds:lm1b:1.1.0@train[:10%]' --val_inputs=tfds:lm1b@test --val_fraction=0

NAME/CONFIG:VERSION is TFDS's own builder string (as `tfds.builder` takes it); SPLIT any TFDS
split, slices included. Without one, an input reads 'train' and brings the dataset's 'validation'
(else 'test') split as the val split unless --val_fraction or --val_inputs is given; a val input
reads that held-out split. The dataset is prepared as array_record (downloaded once when online)
and its examples stream through grain in the split's order, a few hundred at a time; each
example's text feature is one document. The manifest records name, version, split and examples.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterator

import tensorflow_datasets as tfds

from gptjax.data import datasets
from gptjax.data.prepare.settings import TFDS_PREFIX as PREFIX
from gptjax.data.prepare.settings import PrepareError, PrepareSettings, is_catalog


def _parse(spec: str) -> tuple[str, str | None]:
    """'tfds:NAME[/CONFIG][:VERSION][@SPLIT]' -> (builder string, split or None)."""
    name, _, split = spec[len(PREFIX):].partition("@")
    if not name.strip():
        raise PrepareError(f"{spec!r} names no dataset; write tfds:NAME[/CONFIG][:VERSION][@SPLIT],"
                           " e.g. tfds:tiny_shakespeare or 'tfds:lm1b@train[:10%]'")
    return name.strip(), split.strip() or None


def open_builder(name: str, root: str | None) -> tfds.core.DatasetBuilder:
    """The prepared builder of catalog dataset `name`; a clear error if unknown or unavailable."""
    fix = (f"Offline, pass local files to --inputs instead, or prepare it where there is network "
           f"({datasets.build_command(name)}) and copy it into --data_dir")
    try:
        return datasets.prepared_builder(name, root, fix)
    except datasets.NotInCatalogError as e:
        close = difflib.get_close_matches(name.split("/")[0].split(":")[0],
                                          datasets.catalog_names(), n=3)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise PrepareError(f"tfds:{name} is not in TFDS's catalog ({e}){hint}") from None
    except datasets.DatasetUnavailableError as e:
        raise PrepareError(str(e)) from None


def text_key(builder: tfds.core.DatasetBuilder, field: str) -> str:
    """The feature holding the text: `field`, or with the default 'text' the only text feature."""
    texts = datasets.text_features(builder)
    if field in texts:
        return field
    if field == "text" and len(texts) == 1:
        return texts[0]
    features = builder.info.features
    listed = ", ".join(f"{k} ({type(f).__name__})" for k, f in features.items())
    why = (f"its feature {field!r} is no text" if field in features
           else f"it has no text feature {field!r}")
    raise PrepareError(f"tfds:{_full_name(builder)}: {why} (features: {listed}); set "
                       "--text_field to one of its text features, or choose a text dataset")


def _full_name(builder: tfds.core.DatasetBuilder) -> str:
    config = builder.builder_config
    return builder.name + (f"/{config.name}" if config else "")


def resolve(settings: PrepareSettings) -> PrepareSettings:
    """Settings whose catalog inputs each name their split: without one, 'train' for --inputs
    (and its held-out split as --val_inputs unless a val split was asked), the held-out split
    for --val_inputs."""
    root = datasets.tfds_dir(settings.data_dir)
    implicit = [s for s in settings.inputs if is_catalog(s) and _parse(s)[1] is None]
    held_out = []
    if settings.val_fraction is None and not settings.val_inputs:
        for spec in implicit:
            split = datasets.held_out_split(open_builder(_parse(spec)[0], root))
            if split:
                held_out.append(f"{spec}@{split}")
    inputs = tuple(f"{s}@train" if s in implicit else s for s in settings.inputs)
    val_inputs = tuple(f"{s}@{_held_out(s, root)}" if is_catalog(s) and _parse(s)[1] is None
                       else s for s in settings.val_inputs or ()) + tuple(held_out)
    return dataclasses.replace(settings, inputs=inputs, val_inputs=val_inputs or None)


def _held_out(spec: str, root: str | None) -> str:
    name = _parse(spec)[0]
    split = datasets.held_out_split(open_builder(name, root))
    if split is None:
        raise PrepareError(f"--val_inputs={spec}: tfds:{name} has no validation or test split; "
                           f"name one: {spec}@SPLIT (e.g. @train[-1%:])")
    return split


def sources(specs: list[str], split: str, settings: PrepareSettings) -> list[dict]:
    """The manifest's record of each catalog input: dataset, version, its split, examples."""
    out = []
    for spec in specs:
        name, tfds_split = _parse(spec)
        builder = open_builder(name, datasets.tfds_dir(settings.data_dir))
        text_key(builder, settings.text_field)
        examples = len(_data_source(builder, tfds_split))
        try:  # only for the progress bar: TFDS knows bytes per split, not per slice
            size = builder.info.splits[tfds_split].num_bytes
        except (KeyError, ValueError):
            size = 0
        out.append({"tfds": _full_name(builder), "version": str(builder.version),
                    "tfds_split": tfds_split, "examples": examples, "bytes": size,
                    "split": split})
    return out


def _data_source(builder: tfds.core.DatasetBuilder, split: str):
    try:
        return builder.as_data_source(split)
    except (ValueError, KeyError) as e:  # an unknown split or a bad slice
        raise PrepareError(f"tfds:{_full_name(builder)}@{split}: {str(e).splitlines()[0]} "
                           f"(splits: {', '.join(builder.info.splits) or 'unknown'})") from None


def key(source: dict) -> str:
    """How messages and the manifest name a catalog source."""
    return f"{PREFIX}{source['tfds']}:{source['version']}@{source['tfds_split']}"


def read(source: dict, field: str, root: str | None
         ) -> Iterator[tuple[str, str | None, str | None, int]]:
    """(where, text, problem, bytes read so far) of every example of the source, in order."""
    builder = open_builder(f"{source['tfds']}:{source['version']}", datasets.tfds_dir(root))
    feature = text_key(builder, field)
    data = _data_source(builder, source["tfds_split"])
    count, size = max(len(data), 1), source["bytes"]
    for i, example in enumerate(datasets.examples(data)):
        text, problem = example[feature], None
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as e:
                text, problem = None, f"not UTF-8: byte 0x{text[e.start]:02x} at offset {e.start}"
        yield f"example {i}", text, problem, size * (i + 1) // count
