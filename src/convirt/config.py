"""Typed configuration: dataclasses with the paper's defaults, YAML in and out, strict validation.

One name per setting from YAML to command line to attribute: ``loss.temperature`` in YAML is
``--set loss.temperature=0.1`` on the command line and ``cfg.loss.temperature`` in code. Unknown
keys, wrong types and out-of-range values are rejected before any work starts.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from convirt.errors import ConfigError


@dataclass
class ImageConfig:
    """Image encoder f_v. Paper: ResNet-50 from ImageNet weights, 224 px input (Sec. 3)."""

    model: str = "resnet50"
    pretrained: bool = True
    weights: str | None = None  # a local timm-format weights file (used instead of a download)
    grayscale: str = "in_chans"  # "in_chans": 1-channel first conv; "repeat": gray repeated to RGB
    size: int = 224
    mean: float = 0.5
    std: float = 0.5
    pool: str = "avg"  # "attention": CLIP's attention pooling over the feature map (method clip sets it)
    pool_heads: int | None = None  # attention pooling heads; None: width / 64, as CLIP

    def validate(self) -> None:
        _check(self.size >= 16, "image.size", "must be >= 16", self.size)
        _check(self.pool in ("avg", "attention"), "image.pool", "must be 'avg' or 'attention'", self.pool)
        _check(self.pool_heads is None or self.pool_heads >= 1, "image.pool_heads", "must be >= 1, or null for width / 64",
               self.pool_heads)
        _check(self.std > 0, "image.std", "must be > 0", self.std)
        _check(self.grayscale in ("in_chans", "repeat"), "image.grayscale", "must be 'in_chans' or 'repeat'", self.grayscale)


@dataclass
class ScratchTextConfig:
    """Size of a BERT started from scratch (``text.model: scratch``), with a WordPiece vocabulary
    learned on the training reports."""

    vocab_size: int = 8000
    hidden: int = 256
    layers: int = 4
    heads: int = 4

    def validate(self) -> None:
        _check(self.vocab_size >= 100, "text.scratch.vocab_size", "must be >= 100", self.vocab_size)
        _check(self.hidden % self.heads == 0, "text.scratch.hidden", "must be divisible by text.scratch.heads", self.hidden)


@dataclass
class TextConfig:
    """Text encoder f_u. Paper: ClinicalBERT, max pooling, embeddings + first 6 layers frozen."""

    model: str = "emilyalsentzer/Bio_ClinicalBERT"
    pooling: str = "max"
    freeze_layers: int = 6
    freeze_embeddings: bool = True
    max_length: int = 128
    sampling: str = "sentence"  # t_u: one sentence sampled uniformly ("report": the whole text)
    sections: list[str] = field(default_factory=lambda: ["FINDINGS", "IMPRESSION"])
    # not a modelling choice: skip the work on padding positions (models/unpadded.py); same function
    unpad: bool = True
    scratch: ScratchTextConfig = field(default_factory=ScratchTextConfig)

    def validate(self) -> None:
        _check(self.pooling in ("max", "mean", "cls"), "text.pooling", "must be max, mean or cls", self.pooling)
        _check(self.sampling in ("sentence", "report"), "text.sampling", "must be 'sentence' or 'report'", self.sampling)
        _check(self.max_length >= 8, "text.max_length", "must be >= 8", self.max_length)
        _check(self.freeze_layers >= 0, "text.freeze_layers", "must be >= 0", self.freeze_layers)
        self.scratch.validate()


@dataclass
class ProjectionConfig:
    """Projection heads g_v, g_u: one hidden ReLU layer, d = 512 (Sec. 2)."""

    dim: int = 512
    hidden_dim: int | None = None  # None: the encoder's width
    batchnorm: bool = False  # not in the paper: batch norm after the hidden layer (see models/heads.py)

    def validate(self) -> None:
        _check(self.dim >= 1, "projection.dim", "must be >= 1", self.dim)


@dataclass
class LossConfig:
    """Bidirectional contrastive loss. Paper: tau = 0.1, lambda = 0.75 (Sec. 3)."""

    temperature: float = 0.1
    image_weight: float = 0.75
    learn_temperature: bool = False

    def validate(self) -> None:
        _check(self.temperature > 0, "loss.temperature", "must be > 0 (paper: 0.1)", self.temperature)
        _check(0 <= self.image_weight <= 1, "loss.image_weight", "must lie in [0, 1] (paper: 0.75)", self.image_weight)


@dataclass
class SSLConfig:
    """Image-only baselines (``method: simclr | mocov2``): projection head, InfoNCE temperature, MoCo queue.

    SimCLR (Chen et al., ICML 2020): 2-layer ReLU MLP to 128-d, NT-Xent. MoCo v2 (Chen et al.,
    arXiv:2003.04297): the same head (2048-d hidden for ResNet-50), tau = 0.2, momentum 0.999,
    K = 65536 keys; 4096 here, so that the queue stays well below a pass over a small data set.
    """

    temperature: float | None = None  # None: the method's paper value (SimCLR 0.1, MoCo v2 0.2)
    proj_dim: int = 128
    proj_hidden: int | None = None  # None: the encoder's width (2048 for ResNet-50), as both papers
    proj_batchnorm: bool = False  # batch norm after the hidden layer (SimCLR's code, not its paper text)
    queue_size: int = 4096  # MoCo v2 paper: 65536 (ImageNet, 1.28M images)
    momentum: float = 0.999

    def validate(self) -> None:
        _check(self.temperature is None or self.temperature > 0, "ssl.temperature",
               "must be > 0, or null for the method's paper value (SimCLR 0.1, MoCo v2 0.2)", self.temperature)
        _check(self.proj_dim >= 1, "ssl.proj_dim", "must be >= 1 (papers: 128)", self.proj_dim)
        _check(self.proj_hidden is None or self.proj_hidden >= 1, "ssl.proj_hidden",
               "must be >= 1, or null for the encoder's width", self.proj_hidden)
        _check(self.queue_size >= 1, "ssl.queue_size", "must be >= 1 (MoCo v2 paper: 65536)", self.queue_size)
        _check(0 <= self.momentum < 1, "ssl.momentum", "must lie in [0, 1) (MoCo v2 paper: 0.999)", self.momentum)


@dataclass
class BinaryConfig:
    """``method: binary``, ConVIRT's Contrastive-Binary-Loss baseline: an MLP on the concatenated
    projections tells true pairs from pairs whose text comes from another study of the batch."""

    negatives: int = 1  # mismatched pairs per true pair (paper: one random "fake" pair per pair)
    hidden_dim: int | None = None  # the classifier MLP's hidden width; None: projection.dim

    def validate(self) -> None:
        _check(self.negatives >= 1, "binary.negatives", "must be >= 1 (paper: 1)", self.negatives)
        _check(self.hidden_dim is None or self.hidden_dim >= 1, "binary.hidden_dim", "must be >= 1, or null for projection.dim",
               self.hidden_dim)


@dataclass
class CaptionConfig:
    """``method: caption-lstm | caption-transformer``: the image encoder learns by generating the
    report. LSTM: Show, Attend and Tell (Xu et al., ICML 2015); transformer: Cornia et al. (CVPR 2020)
    sizes, d = 512, 3 layers, 8 heads."""

    hidden: int = 512  # LSTM state / word embedding / attention width; transformer d_model
    layers: int = 3  # transformer encoder and decoder layers (the LSTM has one layer, as Xu et al.)
    heads: int = 8  # transformer attention heads
    dropout: float | None = None  # None: 0.5 for the LSTM (Xu et al.'s code), 0.1 for the transformer (Cornia et al.)
    attention_reg: float = 1.0  # LSTM: weight of Xu et al.'s doubly stochastic attention penalty (Eq. 14)

    def validate(self) -> None:
        _check(self.hidden >= 1, "caption.hidden", "must be >= 1 (papers: 512)", self.hidden)
        _check(self.layers >= 1, "caption.layers", "must be >= 1 (Cornia et al.: 3)", self.layers)
        _check(self.heads >= 1 and self.hidden % self.heads == 0, "caption.heads", "must be >= 1 and divide caption.hidden",
               self.heads)
        _check(self.dropout is None or 0 <= self.dropout < 1, "caption.dropout", "must lie in [0, 1), or null for the paper's",
               self.dropout)
        _check(self.attention_reg >= 0, "caption.attention_reg", "must be >= 0 (Xu et al.: 1)", self.attention_reg)


@dataclass
class GloriaConfig:
    """``method: gloria`` (Huang et al., ICCV 2021): the local word-region objective on top of the
    global one. Defaults are GLoRIA's released configuration: ``local_loss_weight`` and
    ``global_loss_weight`` 1.0, tau1 = 4 (attention), tau2 = 5 (word aggregation), tau3 = 10 (report
    logits), image sub-regions from ResNet ``layer3`` (``stage: -2``, the second-to-last feature stage)
    and word vectors summed over the text tower's last 4 layers. Saved with the model (``local`` in
    its config.json) so that attention maps and local similarities can be computed from it."""

    local_weight: float = 1.0
    global_weight: float = 1.0
    attention_scale: float = 4.0  # tau1
    word_scale: float = 5.0  # tau2
    report_scale: float = 10.0  # tau3
    stage: int = -2  # feature stage of the image backbone giving the sub-regions (ResNet: layer3)
    word_layers: int = 4  # word vectors: sum of the text tower's last N layers

    def validate(self) -> None:
        _check(self.local_weight >= 0, "gloria.local_weight", "must be >= 0 (paper: 1.0)", self.local_weight)
        _check(self.global_weight >= 0, "gloria.global_weight", "must be >= 0 (paper: 1.0)", self.global_weight)
        for name in ("attention_scale", "word_scale", "report_scale"):
            _check(getattr(self, name) > 0, f"gloria.{name}", "must be > 0 (paper: 4, 5, 10)", getattr(self, name))
        _check(self.word_layers >= 1, "gloria.word_layers", "must be >= 1 (paper: 4)", self.word_layers)


@dataclass
class AugmentConfig:
    """The image transformation family T of the paper (Sec. 3 / Appendix), in its order."""

    crop_scale: list[float] = field(default_factory=lambda: [0.6, 1.0])
    hflip_p: float = 0.5
    rotation: float = 20.0
    translate: float = 0.1
    affine_scale: list[float] = field(default_factory=lambda: [0.95, 1.05])
    brightness: list[float] = field(default_factory=lambda: [0.6, 1.4])
    contrast: list[float] = field(default_factory=lambda: [0.6, 1.4])
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 3.0])
    blur_kernel: int | None = None  # None: odd, covering +-3 of the largest sigma (the paper gives none)
    fused: bool = False  # crop + flip + affine as one resampling: same random views, ~3x cheaper (transforms.py)

    def validate(self) -> None:
        # one set of rules, the one the transforms themselves enforce
        from convirt.data.transforms import ImageAugmentConfig

        ImageAugmentConfig(**dataclasses.asdict(self)).validate()


@dataclass
class OptimConfig:
    """Paper: Adam, lr 1e-4, weight decay 1e-6, reduce-on-plateau and early stopping on val loss.
    ``fused`` (default true) only changes how the update is computed, not what it is."""

    optimizer: str = "adam"  # adam | adamw
    lr: float = 1e-4
    weight_decay: float = 1e-6
    scheduler: str = "plateau"  # plateau | cosine | none
    warmup_steps: int = 0
    plateau_factor: float = 0.5
    plateau_patience: int = 5  # validation checks without improvement before the lr is reduced
    early_stopping_patience: int | None = 10  # None: no early stopping
    # torch's fused Adam/AdamW: the same update rule in one kernel per step (results equal to float
    # rounding; 2-6% faster steps on CPU, benchmarks/RESULTS.md), hence the default; false: torch's foreach
    fused: bool = True

    def validate(self) -> None:
        _check(self.optimizer in ("adam", "adamw"), "optim.optimizer", "must be adam or adamw", self.optimizer)
        _check(self.scheduler in ("plateau", "cosine", "none"), "optim.scheduler", "must be plateau, cosine or none", self.scheduler)
        _check(self.lr > 0, "optim.lr", "must be > 0", self.lr)
        _check(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0", self.weight_decay)
        _check(self.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0", self.warmup_steps)
        _check(0 < self.plateau_factor < 1, "optim.plateau_factor", "must lie in (0, 1)", self.plateau_factor)


@dataclass
class DataConfig:
    """Where the pairs come from. ``train``/``val`` are manifests; with only ``train``, its
    ``split`` column (train / valid) chooses the rows."""

    train: str | None = None
    val: str | None = None
    batch_size: int = 32
    num_workers: int = 0
    skip_bad_rows: bool = False
    check_images: bool = True  # decode every image once before training (convirt data check)
    allow_absolute_paths: bool = False
    image_cache: str | None = None  # a `convirt data cache` folder of data.train: no decoding at run time
    shards: str | None = None  # a `convirt data shard` folder of data.train's training rows: streamed tar shards
    shard_shuffle_buffer: int = 1000  # samples each loader stream shuffles among (data.shards); 1: shard order only

    def validate(self) -> None:
        _check(self.batch_size >= 2, "data.batch_size", "must be >= 2 (a contrastive batch needs negatives)", self.batch_size)
        _check(self.image_cache is None or (Path(self.image_cache) / "index.json").is_file(), "data.image_cache",
               "must be a folder written by `convirt data cache MANIFEST --out DIR`", self.image_cache)
        _check(self.shards is None or "://" in str(self.shards) or (Path(self.shards) / "index.json").is_file(),
               "data.shards", "must be a complete folder written by `convirt data shard MANIFEST --out DIR` "
               "(index.json missing), or the URL of one (s3://, gs://, https://: checked when opened)", self.shards)
        _check(self.shard_shuffle_buffer >= 1, "data.shard_shuffle_buffer", "must be >= 1", self.shard_shuffle_buffer)
        _check(self.num_workers >= 0, "data.num_workers", "must be >= 0", self.num_workers)


@dataclass
class TrainerConfig:
    """The Lightning loop: steps, precision, devices, checkpoints, logs."""

    out_dir: str = "runs/convirt"
    seed: int = 0
    max_steps: int = 10000
    val_every_n_steps: int | None = None  # None: once per pass over the training set
    checkpoint_every_n_steps: int = 500
    log_every_n_steps: int = 10
    precision: str = "32-true"  # 32-true | bf16-mixed | 16-mixed
    accumulate_grad_batches: int = 1
    devices: int | str = "auto"  # a count, "auto", or a list string such as "0,1"
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | ddp_spawn | ...
    accelerator: str = "auto"
    channels_last: bool = True
    compile: bool = False  # torch.compile both towers (slow first steps; benchmarks/RESULTS.md)
    gradient_checkpointing: bool = False  # recompute tower activations in backward: less memory, slower steps
    progress_bar: bool = True
    max_bad_steps: int = 10  # NaN/Inf losses in a row before the run stops

    def validate(self) -> None:
        _check(self.max_steps >= 1, "trainer.max_steps", "must be >= 1", self.max_steps)
        _check(self.checkpoint_every_n_steps >= 1, "trainer.checkpoint_every_n_steps", "must be >= 1", self.checkpoint_every_n_steps)
        _check(self.precision in ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true"), "trainer.precision",
               "must be 32-true, bf16-mixed or 16-mixed", self.precision)
        _check(self.accumulate_grad_batches >= 1, "trainer.accumulate_grad_batches", "must be >= 1", self.accumulate_grad_batches)


@dataclass
class PretrainConfig:
    """Everything one ``convirt pretrain`` run needs. Defaults are the paper's."""

    method: str = "convirt"
    image: ImageConfig = field(default_factory=ImageConfig)
    text: TextConfig = field(default_factory=TextConfig)
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    binary: BinaryConfig = field(default_factory=BinaryConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    gloria: GloriaConfig = field(default_factory=GloriaConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def validate(self) -> "PretrainConfig":
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                value.validate()
        if self.method == "mocov2":  # every step enqueues a whole batch; a shorter queue would overwrite itself
            _check(self.ssl.queue_size >= self.data.batch_size, "ssl.queue_size",
                   f"must be >= data.batch_size ({self.data.batch_size}) for mocov2: raise it or lower the batch size",
                   self.ssl.queue_size)
        if self.method == "binary":  # the mismatched texts are other rows of the same batch
            _check(self.binary.negatives < self.data.batch_size, "binary.negatives",
                   f"must be < data.batch_size ({self.data.batch_size}): raise the batch size or lower it", self.binary.negatives)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path) -> None:
        from convirt.atomic import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def _check(ok: bool, key: str, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key} {rule}; got {value!r}")


def from_dict(cls: type, data: dict[str, Any], prefix: str = ""):
    """Build dataclass ``cls`` from nested dicts, refusing unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping; got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(prefix + k for k in unknown)}; valid keys: {', '.join(sorted(names))}")
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _coerce(hints[key], value, prefix + key)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, key + ".")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        plain = [a for a in args if a is not type(None)]
        if any(isinstance(value, a) and not (isinstance(value, bool) and a is not bool) for a in plain if isinstance(a, type)):
            return value
        hint = plain[0]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list; got {value!r}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false; got {value!r}")
    if hint in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{key} must be a number; got {value!r}")
    if hint in (int, float, str) and not isinstance(value, hint):
        raise ConfigError(f"{key} must be of type {hint.__name__}; got {value!r}")
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


# What a method changes in the built-in defaults (the paper's ConVIRT). Precedence: built-in defaults <
# these < the YAML file < --set; so `--config paper --method clip` keeps that file's explicit loss values.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    # CLIP (Radford et al., 2021): attention pooling, symmetric loss, learnable tau from 0.07
    "clip": {"image": {"pool": "attention"}, "loss": {"learn_temperature": True, "temperature": 0.07, "image_weight": 0.5}},
    # ConVIRT's captioning baselines decode the paired report, not one sentence of it
    "caption-lstm": {"text": {"sampling": "report"}},
    "caption-transformer": {"text": {"sampling": "report"}},
    # GLoRIA (Huang et al., 2021): words attend over the whole report; symmetric global loss
    "gloria": {"text": {"sampling": "report"}, "loss": {"image_weight": 0.5}},
}


def with_method_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` laid over the defaults of the method it names (see ``METHOD_DEFAULTS``)."""
    method = data.get("method", "convirt")
    if not isinstance(method, str) or method not in METHOD_DEFAULTS:
        return data
    return _merge(METHOD_DEFAULTS[method], data)


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


PRESETS = Path(__file__).parent / "configs"


def resolve_config_path(path: str | Path) -> Path:
    """A YAML file, or the name of a packaged preset (``paper``, ``demo``)."""
    path = Path(path)
    if path.is_file():
        return path
    preset = PRESETS / f"{path}.yaml"
    if path.suffix == "" and preset.is_file():
        return preset
    names = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
    raise ConfigError(f"config file not found: {path} (packaged presets: {names})")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PretrainConfig:
    """Paper defaults (and the method's, ``METHOD_DEFAULTS``), updated by a YAML file, updated by
    command-line overrides; validated."""
    data: dict[str, Any] = {}
    if path is not None:
        path = resolve_config_path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from err
    apply_overrides(data, overrides or [])
    return from_dict(PretrainConfig, with_method_defaults(data)).validate()


# settings that change how a run is executed, not what it learns (the data stream is seeded per sample)
EXECUTION_ONLY = ("trainer.progress_bar", "data.num_workers", "trainer.log_every_n_steps", "trainer.out_dir")


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def changed_settings(saved: str | Path, cfg: PretrainConfig, ignore: tuple[str, ...] = EXECUTION_ONLY) -> list[str]:
    """The settings (dotted keys) in which the run config saved at ``saved`` differs from ``cfg``, those
    in ``ignore`` aside; [] when there is none or nothing was saved. Keys added to convirt after the run
    was saved count as their defaults."""
    saved = Path(saved)
    if not saved.is_file():
        return []
    try:
        before = load_config(saved)
    except ConfigError as err:
        return [f"its config.yaml no longer loads: {err}"]
    old, new = _flat(before.to_dict()), _flat(cfg.to_dict())
    return sorted(k for k in old.keys() | new.keys() if k not in ignore and old.get(k, "(unset)") != new.get(k, "(unset)"))
