"""What prepare_data is asked (its flags, checked) and the error every part of it raises."""

from __future__ import annotations

import dataclasses

TFDS_PREFIX = "tfds:"  # an input naming a TFDS catalog dataset instead of files
DEFAULT_VAL_FRACTION = 0.0005
BAD_DOCUMENT = ("error", "skip")
SETTINGS = ("inputs", "text_field", "val_fraction", "val_inputs", "shard_tokens",
            "on_bad_document")  # what the shards depend on: a rerun must repeat them


class PrepareError(ValueError):
    """Bad input or settings: the message names the file (and line or row) and the fix."""


@dataclasses.dataclass(frozen=True)
class PrepareSettings:
    """What prepare_data was asked (experiments/prepare_data.py's flags)."""

    inputs: tuple[str, ...]
    tokenizer: str
    outdir: str
    text_field: str = "text"
    val_fraction: float | None = None  # None: DEFAULT_VAL_FRACTION, or 0 with val inputs
    val_inputs: tuple[str, ...] | None = None
    shard_tokens: int = 100_000_000
    on_bad_document: str = "error"
    num_workers: int = 1  # 0: tokenize in this process; never changes the shards
    data_dir: str | None = None  # prepared TFDS datasets (tfds: inputs); None: as for training

    def check(self) -> None:
        if not self.inputs:
            raise PrepareError("--inputs is empty: give one or more globs, e.g. "
                               "--inputs='data/*.jsonl.zst'")
        if self.val_fraction is not None and not 0.0 <= self.val_fraction < 1.0:
            raise PrepareError(f"--val_fraction={self.val_fraction} must be in [0, 1)")
        if self.val_inputs and self.val_fraction:
            raise PrepareError("give --val_inputs or --val_fraction, not both (set "
                               "--val_fraction=0 with --val_inputs)")
        if self.shard_tokens < 1:
            raise PrepareError(f"--shard_tokens={self.shard_tokens} must be positive")
        if self.on_bad_document not in BAD_DOCUMENT:
            raise PrepareError(f"--on_bad_document={self.on_bad_document!r}: allowed are "
                               f"{', '.join(BAD_DOCUMENT)}")
        if self.num_workers < 0:
            raise PrepareError(f"--num_workers={self.num_workers} must be >= 0")
        if self.tokenizer == "char":
            raise PrepareError(
                "--tokenizer=char builds its vocabulary from the whole corpus, which a streaming "
                "preparation never holds; use --tokenizer=byte (any text, 257 ids), gpt2, or a "
                "folder holding a saved tokenizer")

    def resolved(self) -> PrepareSettings:
        """These settings with every default made explicit (catalog inputs name their split)."""
        settings = self
        if any(map(is_catalog, self.inputs + (self.val_inputs or ()))):
            settings = catalog().resolve(self)
        if settings.val_fraction is None:
            fraction = 0.0 if settings.val_inputs else DEFAULT_VAL_FRACTION
            settings = dataclasses.replace(settings, val_fraction=fraction)
        return settings

    def recorded(self) -> dict:
        """The settings as the manifest records them (lists, not tuples: JSON)."""
        out = {k: getattr(self, k) for k in SETTINGS}
        out["inputs"] = list(self.inputs)
        out["val_inputs"] = None if self.val_inputs is None else list(self.val_inputs)
        return out


def is_catalog(spec: str) -> bool:
    """Whether an --inputs entry names a TFDS catalog dataset rather than files."""
    return spec.startswith(TFDS_PREFIX)


def catalog():
    """gptjax.data.catalog_inputs: TFDS and grain load only for a tfds: input (~4 s at start)."""
    from gptjax.data import catalog_inputs

    return catalog_inputs
