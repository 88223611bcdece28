"""Which image encoder to evaluate: a ``convirt`` model folder, a timm name (ImageNet or random), or a file.

Every evaluation command takes ``--model SPEC`` so that ConVIRT and its baselines are measured by
the same code on the same splits. Accepted specs:

* ``PATH`` — a ``convirt`` model folder (``model.safetensors`` + ``config.json`` + ``tokenizer/``)
  or a pretraining run folder (its ``model/`` is used). Image *and* text towers are available, so
  zero-shot and text retrieval work. Linear probes use the encoder output h_v (before the
  projection head), as the paper does (Sec. 4.2). Runs of image-only methods (``simclr``,
  ``mocov2``) hold no text tower: they are evaluated like the other image-only encoders.
* ``imagenet:NAME`` — timm ``NAME`` with its ImageNet weights (downloaded by timm, or a local file
  with ``imagenet:NAME@/path/weights.safetensors``). The gray image is fed to a 1-channel first
  convolution (timm folds the RGB filters) and normalised with the ImageNet mean/std averaged
  over RGB.
* ``random:NAME`` — timm ``NAME`` randomly initialised (seeded). Its batch-norm statistics are
  re-estimated on the training images before use (``recalibrate_bn``): with the init statistics
  (mean 0, var 1) the features of radiographs are nearly constant, which would make the random
  baseline look worse than random weights are (docs/demo.md measures it).
* ``file:PATH.safetensors`` — a plain timm state dict, e.g. from ``convirt export --image-encoder``
  (its ``.json`` sidecar names the timm model).

The encoder's *identity* (``fingerprint``) is the sha256 of the weights actually used, including
recalibrated batch-norm buffers: the embedding cache is keyed on it, so a cache can never serve
features of other weights under the same name.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from convirt.errors import ConfigError

IMAGENET_GRAY_MEAN = (0.485 + 0.456 + 0.406) / 3
IMAGENET_GRAY_STD = (0.229 + 0.224 + 0.225) / 3
KINDS = ("imagenet", "random", "file")


@dataclass
class Encoder:
    """An image encoder ready to evaluate: ``module(images (B,1,H,W)) -> features (B, D)``."""

    name: str  # short label for tables
    spec: str  # what the user passed
    module: nn.Module
    size: int
    mean: float
    std: float
    dual: object | None = None  # the DualEncoder when a text tower exists (convirt model folders)
    needs_bn_recalibration: bool = False
    info: dict = field(default_factory=dict)
    _fingerprint: str | None = None

    @property
    def num_features(self) -> int:
        return int(self.module.num_features)

    def transform(self):
        from convirt.data.transforms import eval_transform

        return eval_transform(size=self.size, mean=self.mean, std=self.std)

    def fingerprint(self) -> str:
        """sha256 over the parameter and buffer tensors (names, shapes, bytes), in state-dict order."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for key, value in self.module.state_dict().items():
                t = value.detach().cpu().contiguous()
                h.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def forget_fingerprint(self) -> None:
        """Call after changing the weights (e.g. batch-norm recalibration)."""
        self._fingerprint = None


def _parse(spec: str) -> tuple[str, str, str | None]:
    kind, _, rest = spec.partition(":")
    if kind not in KINDS or not rest:
        return "path", spec, None
    name, _, weights = rest.partition("@")
    return kind, name, weights or None


def load_encoder(spec: str, size: int | None = None, seed: int = 0, name: str | None = None) -> Encoder:
    """Resolve ``spec`` (see module docstring) into an :class:`Encoder` in eval mode on the CPU.

    ``size`` overrides the input resolution (default: the model's own, else 224).
    """
    kind, target, weights = _parse(spec)
    if kind == "path":
        return _from_folder(spec, size, name)
    from convirt.models.image import ImageEncoder

    if kind == "file":
        return _from_file(spec, Path(target), size, name)
    if kind == "imagenet":
        module = ImageEncoder(target, pretrained=True, weights=weights)
        return Encoder(name or f"ImageNet {target}", spec, module.eval(), size or 224, IMAGENET_GRAY_MEAN,
                       IMAGENET_GRAY_STD, info={"kind": kind, "timm_model": target, "weights": weights})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = ImageEncoder(target, pretrained=False)
    return Encoder(name or f"Random {target}", spec, module.eval(), size or 224, 0.5, 0.5, needs_bn_recalibration=True,
                   info={"kind": kind, "timm_model": target, "init_seed": seed})


def _from_folder(spec: str, size: int | None, name: str | None) -> Encoder:
    from convirt.models.dual_encoder import CONFIG, DualEncoder

    folder = Path(spec)
    if (folder / "model" / CONFIG).is_file():
        folder = folder / "model"
    if not folder.exists():
        raise ConfigError(f"--model {spec!r}: no such folder. Give a convirt model/run folder, or "
                          f"imagenet:NAME / random:NAME / file:PATH.safetensors (timm names)")
    model = DualEncoder.load(folder)
    cfg = model.image_cfg
    label = name or (folder.resolve().parent.name if folder.name == "model" else folder.name)
    return Encoder(label, spec, model.image_encoder.eval(), size or cfg.size, cfg.mean, cfg.std,
                   dual=model if model.has_text else None,
                   info={"kind": "convirt", "folder": str(folder), "timm_model": cfg.model, "meta": model.meta})


def _from_file(spec: str, path: Path, size: int | None, name: str | None) -> Encoder:
    from convirt.models.image import ImageEncoder

    sidecar = path.with_suffix(".json")
    if not path.is_file() or not sidecar.is_file():
        raise ConfigError(f"--model {spec!r}: need {path} and its sidecar {sidecar.name} "
                          "(as written by `convirt export --image-encoder`)")
    meta = json.loads(sidecar.read_text())
    grayscale = "in_chans" if int(meta.get("in_chans", 1)) == 1 else "repeat"
    module = ImageEncoder(meta["timm_model"], weights=str(path), grayscale=grayscale)
    return Encoder(name or path.stem, spec, module.eval(), size or int(meta.get("size", 224)),
                   float(meta.get("mean", 0.5)), float(meta.get("std", 0.5)),
                   info={"kind": "file", "timm_model": meta["timm_model"], "file": str(path)})


def load_encoders(specs: Sequence[str], names: Sequence[str] | None = None, size: int | None = None,
                  seed: int = 0) -> list[Encoder]:
    """Several encoders; ``names`` (same length) label them in tables."""
    if names is not None and len(names) != len(specs):
        raise ConfigError(f"{len(names)} --names for {len(specs)} --models")
    encoders = [load_encoder(s, size, seed, names[i] if names else None) for i, s in enumerate(specs)]
    seen: set[str] = set()
    for e in encoders:  # table rows must be distinguishable
        base, k = e.name, 2
        while e.name in seen:
            e.name, k = f"{base} ({k})", k + 1
        seen.add(e.name)
    return encoders
