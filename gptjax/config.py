"""Typed, validated views of an experiment config.

An ml_collections ConfigDict (configs/*.py) is turned into frozen dataclasses once, at the edge;
every bad value or shape fails here, before anything compiles, with a message that names the
field and what is allowed. Names chosen from a registry (model.attention, model.position,
optim.schedule, data.dataset) are checked by their registries, which know what they hold:
gptjax.model.check_config, gptjax.training.optim.check, gptjax.data.build_data; a run calls
them all before it reads data or compiles.

This module imports nothing of gptjax: every layer may read it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping

DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field and the fix."""


def _fail(field: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{field}={value!r} is invalid: {allowed}")


def _require_finite(section: Any, name: str) -> None:
    """Every float field of `section` is finite: nan and inf pass comparisons like lr <= 0."""
    for field in dataclasses.fields(section):
        value = getattr(section, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            _fail(f"{name}.{field.name}", value, "must be a finite number")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The GPT's shape and variants. Defaults are GPT-2 small (124M)."""

    vocab_size: int = 50257  # the tokenizer's; 0: take it from the run's tokenizer
    # The embedding and LM head have vocab_size rounded up to a multiple of this (for a mesh's
    # tensor axis, or speed: nanoGPT pads GPT-2's 50257 to 50304); the padded rows start at
    # zero and their logits are masked, so the model computes the same function. A run also
    # rounds it up to its tensor axis by itself.
    vocab_multiple: int = 1
    max_len: int = 1024
    num_layers: int = 12
    num_heads: int = 12
    num_kv_heads: int | None = None  # None: = num_heads (MHA); 1: MQA; otherwise GQA
    d_model: int = 768
    d_ff: int | None = None  # None: 4 * d_model
    dropout: float = 0.0  # embeddings, attention weights and residual branches
    attention: str = "xla"  # a name in gptjax.model.kernels.KERNELS
    position: str = "learned"  # a name in gptjax.model.positions.POSITIONS
    window: int | None = None  # sliding-window attention: attend to the last `window` tokens
    tie_embeddings: bool = True  # LM head shares the token embedding (GPT-2)
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    remat: bool = False  # rematerialise each block in the backward pass
    layer_norm_epsilon: float = 1e-5
    rope_theta: float = 10000.0
    # LoRA adapters (Hu et al. 2021) beside the projections lora_targets names; 0: none. Set
    # from the finetune section (Config does it), never by hand: see FinetuneConfig.
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: str = "query,value"

    def __post_init__(self):
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        if self.d_ff is None:
            object.__setattr__(self, "d_ff", 4 * self.d_model)
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def padded_vocab(self) -> int:
        """Rows of the embedding and LM head: vocab_size rounded up to vocab_multiple."""
        return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple

    def validate(self) -> None:
        _require_finite(self, "model")
        if (not isinstance(self.vocab_size, int) or isinstance(self.vocab_size, bool)
                or self.vocab_size < 0):
            _fail("model.vocab_size", self.vocab_size,
                  "must be a positive integer, or 0 to take it from the tokenizer")
        for name in ("max_len", "num_layers", "num_heads", "num_kv_heads", "d_model", "d_ff",
                     "vocab_multiple"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                _fail(f"model.{name}", value, "must be a positive integer")
        if self.d_model % self.num_heads:
            _fail("model.d_model", self.d_model,
                  f"must be divisible by model.num_heads={self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            _fail("model.num_heads", self.num_heads,
                  f"must be divisible by model.num_kv_heads={self.num_kv_heads} "
                  "(num_kv_heads=1 is MQA, =num_heads is MHA)")
        if not 0.0 <= self.dropout < 1.0:
            _fail("model.dropout", self.dropout, "must be in [0, 1)")
        if self.window is not None:
            if not isinstance(self.window, int) or self.window <= 0:
                _fail("model.window", self.window, "must be a positive integer or None")
            if self.window > self.max_len:
                _fail("model.window", self.window,
                      f"must not exceed model.max_len={self.max_len}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                _fail(f"model.{name}", getattr(self, name), f"choose one of {list(DTYPES)}")
        if self.layer_norm_epsilon <= 0:
            _fail("model.layer_norm_epsilon", self.layer_norm_epsilon, "must be positive")
        if isinstance(self.rope_theta, bool) or not isinstance(self.rope_theta, (int, float)) \
                or self.rope_theta <= 0:  # 0 or less makes RoPE's frequencies inf/NaN
            _fail("model.rope_theta", self.rope_theta,
                  "must be a positive number (RoPE's base wavelength; 10000 in Su et al. 2021)")
        _check_lora("model", self.lora_rank, self.lora_alpha, self.lora_dropout,
                    self.lora_targets, rank_may_be_zero=True)

    @property
    def lora_scale(self) -> float:
        """The adapters' output scale alpha / r (Hu et al. 2021, section 4.1)."""
        return self.lora_alpha / self.lora_rank if self.lora_rank else 0.0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        return _from_dict(cls, d, "model")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where tokens come from and how they are batched."""

    dataset: str = "embedded"  # a name in gptjax.data's registry, or a TFDS catalog name
    text_file: str | tuple[str, ...] | None = None  # local text file(s) for dataset='text_file'
    val_text_file: str | tuple[str, ...] | None = None  # separate validation file(s)
    val_fraction: float = 0.1  # validation split taken from the end when no val_text_file
    tokenizer: str = "char"  # char | byte | gpt2 | init_from (its tokenizer) | a folder;
    # dataset='tokens' uses the shards' own and refuses another (gptjax/data/shards.py)
    task: str = "completion"  # dataset='task': completion | qa | translation | dialogue
    seq_len: int = 256
    batch_size: int = 32  # global batch, in sequences
    shuffle: bool = True
    mqar_num_kv_pairs: int = 8  # dataset='mqar': key-value pairs per sequence
    mqar_vocab_size: int = 256  # dataset='mqar': token ids, when model.vocab_size is 0
    data_dir: str | None = None  # prepared TFDS data; None: $GPTJAX_DATA_DIR or TFDS default
    tokens_dir: str | None = None  # dataset='tokens': a folder written by experiments.prepare_data
    document_mask: bool = False  # dataset='tokens': segment ids; attention stays in its document
    document_positions: bool = False  # with document_mask: positions restart at each document
    pack: bool = False  # dataset='task': several examples per row, each attending to itself only

    def validate(self) -> None:
        _require_finite(self, "data")
        for name in ("seq_len", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                _fail(f"data.{name}", value, "must be a positive integer")
        if not 0.0 < self.val_fraction < 1.0:
            _fail("data.val_fraction", self.val_fraction, "must be in (0, 1)")
        if self.document_positions and not self.document_mask:
            _fail("data.document_positions", self.document_positions,
                  "restarts positions at each document, which data.document_mask=True marks; "
                  "set data.document_mask=True too, or document_positions=False")
        if self.document_mask and self.dataset != "tokens":
            # Only prepared shards keep every document boundary (an eos after each document).
            _fail("data.document_mask", self.document_mask,
                  f"needs data.dataset='tokens' (prepared shards), not {self.dataset!r}; "
                  "set data.document_mask=False")
        if self.pack and self.dataset != "task":
            # Text and shards are cut into full windows already; only task rows have padding.
            _fail("data.pack", self.pack, f"packs fine-tuning examples (data.dataset='task'), "
                  f"not {self.dataset!r}; set data.pack=False (data.document_mask keeps "
                  "attention within the documents of prepared shards)")

    def __post_init__(self):
        self.validate()


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with warmup + schedule, global-norm clipping and gradient accumulation."""

    lr: float = 6e-4
    min_lr: float = 6e-5
    warmup_steps: int = 100
    schedule: str = "cosine"  # a name in gptjax.training.optim.SCHEDULES: cosine | linear |
    # constant | wsd (warmup-stable-decay)
    decay_steps: int | None = None  # None: train.num_steps
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float | None = 1.0
    grad_accum: int = 1
    z_loss: float = 0.0
    decay_embeddings: bool = False  # also weight-decay token/position embeddings (nanoGPT does)
    wsd_decay_fraction: float = 0.2  # schedule='wsd': the last fraction of decay_steps decays
    # model.dtype='float16' only: dynamic loss scaling (gptjax.training.loss_scale) starts the
    # scale here, halves it on every overflowing step, doubles it after this many good steps.
    loss_scale: float = 2.0 ** 15
    loss_scale_period: int = 2000

    def validate(self) -> None:
        _require_finite(self, "optim")
        if self.lr <= 0:
            _fail("optim.lr", self.lr, "must be positive")
        if self.min_lr < 0 or self.min_lr > self.lr:
            _fail("optim.min_lr", self.min_lr, f"must be in [0, optim.lr={self.lr}]")
        if not 0.0 < self.wsd_decay_fraction <= 1.0:
            _fail("optim.wsd_decay_fraction", self.wsd_decay_fraction, "must be in (0, 1]")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            _fail("optim.warmup_steps", self.warmup_steps, "must be a non-negative integer")
        if self.decay_steps is not None and (not isinstance(self.decay_steps, int)
                                             or self.decay_steps <= self.warmup_steps):
            _fail("optim.decay_steps", self.decay_steps,
                  f"must be an integer > optim.warmup_steps={self.warmup_steps}, or None "
                  "for train.num_steps")
        for name in ("b1", "b2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                _fail(f"optim.{name}", getattr(self, name), "must be in [0, 1)")
        if self.weight_decay < 0:
            _fail("optim.weight_decay", self.weight_decay, "must be non-negative")
        if self.grad_clip is not None and self.grad_clip <= 0:
            _fail("optim.grad_clip", self.grad_clip, "must be positive, or None for no clipping")
        if not isinstance(self.grad_accum, int) or self.grad_accum < 1:
            _fail("optim.grad_accum", self.grad_accum, "must be an integer >= 1")
        if self.z_loss < 0:
            _fail("optim.z_loss", self.z_loss, "must be non-negative")
        if self.loss_scale < 1.0:
            _fail("optim.loss_scale", self.loss_scale, "must be >= 1 (float16's starting loss "
                  "scale, e.g. 32768)")
        if (not isinstance(self.loss_scale_period, int)
                or isinstance(self.loss_scale_period, bool) or self.loss_scale_period < 1):
            _fail("optim.loss_scale_period", self.loss_scale_period,
                  "must be an integer >= 1 (finite steps in a row before the loss scale doubles)")

    def __post_init__(self):
        self.validate()


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The loop: how long, how often to evaluate, log and checkpoint."""

    num_steps: int = 1000
    seed: int = 0
    eval_every: int = 250
    eval_steps: int = 20
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    sample_every: int = 0  # 0: sample only at evaluations
    sample_tokens: int = 100  # 0: no text samples
    sample_prompt: str = "\n"
    peak_flops: float | None = None  # per-device FLOP/s for MFU where the chip is not known
    # Fine-tuning: a Hugging Face GPT-2 folder or hub id, or a gptjax run, whose architecture
    # and weights a new run starts from (a run resuming its own checkpoint loads those weights).
    init_from: str | None = None
    # Partial training: a regular expression over parameter paths ('blocks/0/attn/query/kernel',
    # 'lm_head/kernel', 'ln_f/scale'); only parameters whose path it matches (re.search) train
    # and hold optimizer state, the rest stay bitwise as they are. None: every parameter.
    trainable: str | None = None
    # A step whose loss or gradient norm is not finite is skipped (params and optimizer state
    # kept); this many skipped in a row stop the run with an error (0: never stop).
    max_consecutive_skips: int = 10
    # Loss-spike skipping (MaxText's skip_step_on_spikes, OLMo-core's): a step whose loss or
    # gradient norm is above the mean + spike_threshold std of the last spike_window finite
    # steps is skipped like a non-finite one (and counts toward max_consecutive_skips); it acts
    # once spike_warmup finite steps are recorded. Off: the state and checkpoints are as before.
    skip_spikes: bool = False
    spike_threshold: float = 6.0
    spike_window: int = 100
    spike_warmup: int = 50
    # Steps per compiled call: K > 1 runs K train steps in one program (lax.scan over K batches),
    # so the host's dispatch, batch transfer and loop work come once per K steps (Keras's
    # steps_per_execution, TPUEstimator's iterations_per_loop). The same updates; logging,
    # evaluation, samples, checkpoints and preemption act between calls, so K divides their
    # periods. Callbacks get every K-th step.
    steps_per_call: int = 1
    # Multiple-choice accuracy while training (build-nanogpt's HellaSwag): a JSON-lines file of
    # questions in gptjax.multiple_choice's formats (e.g. hellaswag_val.jsonl), scored every
    # choice_every steps (0: at each evaluation) on its first choice_examples (0: all of them);
    # metrics.jsonl gets choice_accuracy, choice_accuracy_norm and choice_accuracy_per_token.
    choice_file: str = ""
    choice_every: int = 0
    choice_examples: int = 0

    def validate(self) -> None:
        _require_finite(self, "train")
        self._validate_spikes()
        self._validate_steps_per_call()
        if (not isinstance(self.max_consecutive_skips, int)
                or isinstance(self.max_consecutive_skips, bool)
                or self.max_consecutive_skips < 0):
            _fail("train.max_consecutive_skips", self.max_consecutive_skips,
                  "must be a non-negative integer (0: never stop on skipped steps)")
        if self.trainable is not None:
            try:
                re.compile(self.trainable)
            except (re.error, TypeError) as e:
                _fail("train.trainable", self.trainable,
                      f"must be a regular expression over parameter paths ({e})")
        if not isinstance(self.num_steps, int) or self.num_steps <= 0:
            _fail("train.num_steps", self.num_steps, "must be a positive integer")
        for name in ("eval_every", "eval_steps", "log_every", "checkpoint_every",
                     "keep_checkpoints"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                _fail(f"train.{name}", value, "must be a positive integer")
        for name in ("choice_every", "choice_examples"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                _fail(f"train.{name}", value, "must be a non-negative integer (0: "
                      + ("at each evaluation)" if name == "choice_every" else "every question)"))

    def _validate_steps_per_call(self) -> None:
        k = self.steps_per_call
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            _fail("train.steps_per_call", k, "must be a positive integer (1: a call per step)")
        periods = ("log_every", "eval_every", "checkpoint_every", "sample_every", "choice_every")
        for name in periods:
            period = getattr(self, name)
            if isinstance(period, int) and period > 0 and period % k:
                raise ConfigError(
                    f"train.steps_per_call={k} does not divide train.{name}={period}: the loop "
                    f"acts only between calls of {k} steps; choose a steps_per_call that divides "
                    f"every period ({', '.join(periods)})")

    def _validate_spikes(self) -> None:
        if not isinstance(self.skip_spikes, bool):
            _fail("train.skip_spikes", self.skip_spikes, "must be True or False")
        if (not isinstance(self.spike_threshold, (int, float)) or isinstance(
                self.spike_threshold, bool) or not self.spike_threshold > 0):
            _fail("train.spike_threshold", self.spike_threshold,
                  "must be a positive number of standard deviations (e.g. 6.0)")
        for name in ("spike_window", "spike_warmup"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 2:
                _fail(f"train.{name}", value, "must be an integer >= 2 (steps: a standard "
                      "deviation needs two values)")

    def __post_init__(self):
        self.validate()


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh: data x fsdp x tensor; -1 fills the devices left over."""

    strategy: str = "jit"  # jit (NamedSharding over a Mesh) | pmap (data parallel)
    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    # CPU hosts: how many JAX devices to make of the cores, for data parallelism across them
    # (0: JAX's default, one device; -1: one per core, as many as divide the batch). Applies
    # when JAX has not started yet (gptjax.training.host).
    cpu_devices: int = 0

    def validate(self) -> None:
        if not isinstance(self.cpu_devices, int) or self.cpu_devices < -1:
            _fail("mesh.cpu_devices", self.cpu_devices,
                  "must be a non-negative integer, or -1 for one per core")
        if self.strategy not in ("jit", "pmap"):
            _fail("mesh.strategy", self.strategy, "choose 'jit' or 'pmap'")
        sizes = {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}
        for name, value in sizes.items():
            if not isinstance(value, int) or (value <= 0 and value != -1):
                _fail(f"mesh.{name}", value, "must be a positive integer or -1 (fill)")
        if sum(v == -1 for v in sizes.values()) > 1:
            raise ConfigError(f"mesh {sizes}: at most one axis may be -1")

    def __post_init__(self):
        self.validate()


# LoRA's target names: the model's projections, and groups of them.
LORA_PROJECTIONS = ("query", "key", "value", "out", "fc", "proj")
LORA_GROUPS = {"attention": ("query", "key", "value", "out"), "mlp": ("fc", "proj"),
               "all": LORA_PROJECTIONS}


def lora_target_items(targets: str) -> list[str]:
    """finetune.lora_targets split at commas: projection or group names, or regexes."""
    return [t.strip() for t in str(targets).split(",") if t.strip()]


def _check_lora(section: str, rank, alpha, dropout, targets, *, rank_may_be_zero=False) -> None:
    low = 0 if rank_may_be_zero else 1
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < low:
        _fail(f"{section}.lora_rank", rank, "must be a positive integer (the adapters' rank r)")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        _fail(f"{section}.lora_alpha", alpha, "must be a positive number (scale alpha / r)")
    if not 0.0 <= dropout < 1.0:
        _fail(f"{section}.lora_dropout", dropout, "must be in [0, 1)")
    items = lora_target_items(targets) if isinstance(targets, str) else None
    if not items:
        _fail(f"{section}.lora_targets", targets,
              f"must name projections {list(LORA_PROJECTIONS)} or groups {list(LORA_GROUPS)}, "
              "comma-separated, or regexes over module paths like 'blocks/0/attn/query'")
    known = set(LORA_PROJECTIONS) | set(LORA_GROUPS)
    for item in items:
        if re.fullmatch(r"[a-z_]+", item) and item not in known:  # a name, not a pattern
            _fail(f"{section}.lora_targets", targets,
                  f"unknown target {item!r}; known: {sorted(known)}, or a regex over module "
                  "paths like 'blocks/[0-5]/attn/(query|value)'")
        try:
            re.compile(item)
        except re.error as e:
            _fail(f"{section}.lora_targets", targets, f"{item!r} is not a regular expression ({e})")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Which parameters a fine-tuning run trains (gptjax/training/finetune.py's registry).

    full: every one (the default); lora: low-rank adapters beside the frozen projections named
    by lora_targets (Hu et al. 2021); freeze: all but the first freeze_layers blocks (and the
    embeddings unless freeze_embeddings); bitfit: biases and LayerNorm parameters only.
    """

    method: str = "full"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: str = "query,value"  # Hu et al.'s choice; 'attention', 'mlp', 'all', regexes
    freeze_layers: int = 0
    freeze_embeddings: bool = False

    # The fields each method reads; another method's field changed from its default is refused
    # (an ablation row that says r=16 must never have trained something else).
    FIELDS = {"lora": ("lora_rank", "lora_alpha", "lora_dropout", "lora_targets"),
              "freeze": ("freeze_layers", "freeze_embeddings")}

    def validate(self) -> None:
        _require_finite(self, "finetune")
        if not isinstance(self.method, str):
            _fail("finetune.method", self.method, "must be a method's name (its registry: "
                  "gptjax/training/finetune.py)")
        _check_lora("finetune", self.lora_rank, self.lora_alpha, self.lora_dropout,
                    self.lora_targets)
        if (not isinstance(self.freeze_layers, int) or isinstance(self.freeze_layers, bool)
                or self.freeze_layers < 0):
            _fail("finetune.freeze_layers", self.freeze_layers,
                  "must be a non-negative integer (the first k blocks stay frozen)")
        if not isinstance(self.freeze_embeddings, bool):
            _fail("finetune.freeze_embeddings", self.freeze_embeddings, "must be True or False")
        for method, names in self.FIELDS.items():
            for name in names:
                value = getattr(self, name)
                if method != self.method and value != _default(FinetuneConfig, name):
                    _fail(f"finetune.{name}", value,
                          f"applies to finetune.method={method!r} only, but the method is "
                          f"{self.method!r}; set --config.finetune.method={method} or leave "
                          f"finetune.{name} at its default")

    def __post_init__(self):
        self.validate()


def _default(cls, name: str):
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole experiment: model, data, optim, train, mesh, finetune."""

    model: ModelConfig
    data: DataConfig
    optim: OptimConfig
    train: TrainConfig
    mesh: MeshConfig
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)

    def __post_init__(self):
        if self.train.steps_per_call > 1 and self.mesh.strategy == "pmap":
            raise ConfigError(
                f"train.steps_per_call={self.train.steps_per_call} needs mesh.strategy='jit' "
                "(pmap runs one step per call); use mesh.strategy='jit' for data parallelism")
        ft = self.finetune
        if ft.method != "full" and self.train.trainable is not None:
            raise ConfigError(
                f"train.trainable={self.train.trainable!r} and finetune.method={ft.method!r} "
                "both choose the trainable parameters; set one of them (train.trainable only "
                "with finetune.method='full')")
        # The model builds what the finetune section asks for: its LoRA fields follow it.
        lora = {name: getattr(ft, name) for name in FinetuneConfig.FIELDS["lora"]}
        if ft.method != "lora":
            lora = {name: _default(ModelConfig, name) for name in lora}
        current = {name: getattr(self.model, name) for name in lora}
        unset = all(v == _default(ModelConfig, k) for k, v in current.items())
        if current != lora and not unset:
            raise ConfigError(
                f"model.lora_* {current} differ from what finetune asks for {lora}; the model's "
                "LoRA fields follow the finetune section: set finetune.method='lora' and "
                "finetune.lora_rank/lora_alpha/lora_dropout/lora_targets instead")
        if current != lora:
            object.__setattr__(self, "model", dataclasses.replace(self.model, **lora))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Config":
        """Turn an ml_collections ConfigDict (or dict) into a validated Config."""
        if hasattr(d, "to_dict"):
            d = d.to_dict()
        sections = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig,
                    "train": TrainConfig, "mesh": MeshConfig, "finetune": FinetuneConfig}
        unknown = sorted(set(d) - set(sections))
        if unknown:
            raise ConfigError(f"unknown config section(s) {unknown}; known: {list(sections)}")
        return cls(**{name: _from_dict(kind, d.get(name, {}), name)
                      for name, kind in sections.items()})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _from_dict(cls, d: Mapping[str, Any], section: str):
    """Build dataclass `cls` from a mapping, rejecting unknown keys by name."""
    if hasattr(d, "to_dict"):
        d = d.to_dict()
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown field(s) {', '.join(section + '.' + u for u in unknown)}; "
                          f"known fields of {section}: {sorted(names)}")
    d = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(d).items()}
    return cls(**d)


def default_config():
    """An ml_collections ConfigDict with every field of every section at its default.

    configs/*.py start from it and change what differs, so that any field can be overridden as
    --config.section.field=value (fields whose default is None become typed placeholders).
    """
    import ml_collections
    from ml_collections.config_dict import placeholder

    kinds = {"int": int, "float": float, "str": str, "bool": bool}
    root = ml_collections.ConfigDict()
    for f in dataclasses.fields(Config):
        section = ml_collections.ConfigDict()
        for field in dataclasses.fields(f.type if isinstance(f.type, type) else globals()[f.type]):
            value = field.default
            if value is None:  # "int | None" -> placeholder(int)
                value = placeholder(kinds[str(field.type).split("|")[0].strip()])
            section[field.name] = value
        root[f.name] = section
    return root
