"""Localized downstream tasks on a pretrained image encoder: data, weights, training and reporting shared
by segmentation (:mod:`.segmentation`) and detection (:mod:`.detection`).

Why: a global image embedding can look good in linear probes while its spatial features are poor;
Müller et al. (2022, "Joint Learning of Localized Representations from Medical Images and
Reports", ECCV) therefore compare initialisations on semantic segmentation (SIIM-ACR
pneumothorax, Dice) and object detection (RSNA pneumonia, mAP) with the encoder frozen or
fine-tuned at several label fractions, and GLoRIA (Huang et al., ICCV 2021) plugs its image encoder
into a U-Net. The same protocol here runs on any ``--model`` spec, on pinned label-fraction subsets.

Manifest columns (as the ``siim-pneumothorax`` and ``rsna-pneumonia`` adapters and
:func:`convirt.data.synthetic.write_localized_manifest` write them):

* ``mask``: a PNG path relative to the manifest (non-zero = foreground, any size: it is resized
  with the image), a run-length string (Kaggle SIIM standard runs: 1-based starts, column-major),
  or blank / ``-1`` for an empty mask;
* ``boxes``: JSON ``[[x, y, width, height], ...]`` in pixels of the image file (RSNA's layout,
  COCO's convention); an optional 5th element names the box's class. Blank = no box.

Images are resized to ``size x size`` (no crop, so no lesion is cut away); masks and boxes follow
through ``torchvision.transforms.v2`` with ``tv_tensors`` (nearest interpolation for masks, box
corners transformed exactly). Metrics are computed at that resolution.
"""

from __future__ import annotations

import copy
import json
import math
import re
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, WeightedRandomSampler
from torchvision import tv_tensors
from torchvision.transforms import v2

from convirt.data.images import load_image, to_tensor
from convirt.data.manifest import file_sha256, read_manifest, resolve_image_paths
from convirt.errors import ConfigError, DataError
from convirt.evaluation.finetune import FinetuneConfig
from convirt.evaluation.labelled import LabelledData, load_labelled

LOCALIZED = ("segment", "segment-frozen", "detect", "detect-frozen")  # suite protocol names
KINDS = {"segment": "mask", "detect": "boxes"}
AUGMENT = ("mild", "none")
_RLE = re.compile(r"^\d+(\s+\d+)*$")


# ------------------------------------------------------------------------------------------- targets


def encode_rle(mask: np.ndarray, relative_starts: bool = False) -> str:
    """``(H, W)`` bool mask -> run-length string, the inverse of :func:`convirt.data.adapters.siim.decode_rle`.

    Runs go down the columns (column-major) as in SIIM-ACR; starts are 1-based and absolute
    (``stage_2_train.csv``) or, with ``relative_starts``, counted from the end of the previous run
    (``train-rle.csv``). An empty mask is ``"-1"``.
    """
    flat = np.asarray(mask, bool).T.reshape(-1)
    padded = np.concatenate([[False], flat, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = edges[0::2], edges[1::2]
    if not len(starts):
        return "-1"
    if relative_starts:
        previous = np.concatenate([[0], ends[:-1]])
        values = np.stack([starts - previous, ends - starts], axis=1)
    else:
        values = np.stack([starts + 1, ends - starts], axis=1)
    return " ".join(str(int(v)) for v in values.reshape(-1))


def is_blank(cell: Any) -> bool:
    """An empty mask / box cell: blank, NaN, ``-1`` (SIIM) or ``[]``."""
    return cell is None or (isinstance(cell, float) and math.isnan(cell)) or str(cell).strip() in ("", "-1", "[]")


def read_mask(cell: Any, shape: tuple[int, int], root: Path, allow_absolute: bool = False) -> np.ndarray:
    """One ``mask`` cell -> ``(H, W)`` bool at the image's ``shape`` (see module doc for the formats)."""
    from convirt.data.adapters.siim import decode_rle

    if is_blank(cell):
        return np.zeros(shape, bool)
    text = str(cell).strip()
    if _RLE.match(text):
        return decode_rle(text, shape[1], shape[0], relative_starts=False)
    path = resolve_image_paths(text, root, allow_absolute)[0]
    try:
        with Image.open(path) as img:
            mask = np.asarray(img.convert("L")) > 0
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read mask {path}: {err}") from None
    if mask.shape != shape:  # e.g. a mask stored at another resolution: nearest keeps it binary
        mask = np.asarray(Image.fromarray(mask).resize((shape[1], shape[0]), Image.NEAREST))
    return mask


def parse_boxes(cell: Any, default_class: str) -> tuple[np.ndarray, list[str]]:
    """One ``boxes`` cell -> ``(N, 4)`` float32 ``[x0, y0, x1, y1]`` and the class of each box."""
    if is_blank(cell):
        return np.zeros((0, 4), np.float32), []
    try:
        items = json.loads(str(cell))
    except json.JSONDecodeError as err:
        raise DataError(f"boxes must be JSON [[x, y, width, height], ...]; got {str(cell)[:60]!r} ({err})") from None
    xyxy, classes = [], []
    for box in items:
        if not isinstance(box, (list, tuple)) or len(box) not in (4, 5):
            raise DataError(f"a box is [x, y, width, height] or [x, y, width, height, class]; got {box!r}")
        x, y, w, h = (float(v) for v in box[:4])
        if w < 0 or h < 0:
            raise DataError(f"box {box!r} has a negative width or height")
        xyxy.append([x, y, x + w, y + h])
        classes.append(str(box[4]) if len(box) == 5 else default_class)
    return np.asarray(xyxy, np.float32).reshape(-1, 4), classes


@dataclass
class LocalizedData:
    """A :class:`LabelledData` (rows, splits, the label the subsets are stratified by) plus targets."""

    labelled: LabelledData
    kind: str  # "mask" or "boxes"
    column: str
    classes: list[str] = field(default_factory=list)  # detection classes, label i + 1 in torchvision
    allow_absolute: bool = False

    @property
    def root(self) -> Path:
        return self.labelled.manifest.parent

    def cells(self, split: str, idx: Sequence[int] | None = None) -> list:
        rows = self.labelled.splits[split] if idx is None else self.labelled.splits[split][np.asarray(idx, int)]
        return list(self.labelled.frame[self.column].iloc[rows])

    def paths(self, split: str, idx: Sequence[int] | None = None) -> list[Path]:
        paths = self.labelled.split_paths(split)
        return paths if idx is None else [paths[int(i)] for i in idx]

    def describe(self) -> dict:
        d = self.labelled.describe()
        d.update(target={"kind": self.kind, "column": self.column}, classes=self.classes or None)
        return d


def load_localized(manifest: str | Path, kind: str, column: str | None = None, labels: Sequence[str] | None = None,
                   uncertain: str = "error", allow_absolute: bool = False) -> LocalizedData:
    """Read a segmentation (``kind="mask"``) or detection (``"boxes"``) manifest with train/valid/test rows.

    Label-fraction subsets are stratified by ``labels`` (e.g. ``Pneumothorax``) or, by default, by
    whether the row has a mask / a box, so every subset keeps images with and without findings.
    """
    if kind not in ("mask", "boxes"):
        raise ConfigError(f"kind must be 'mask' or 'boxes', got {kind!r}")
    column = column or kind
    manifest = Path(manifest)
    if labels:
        data = load_labelled(manifest, labels, "auto", uncertain, allow_absolute)
        frame = data.frame
    else:
        frame = read_manifest(manifest)
        if "image" not in frame.columns:
            raise DataError(f"manifest {manifest} has no 'image' column")
    if column not in frame.columns:
        raise DataError(f"manifest {manifest} has no {column!r} column (columns: {list(frame.columns)}); "
                        f"name it with --target-column")
    present = np.array([not is_blank(c) for c in frame[column]], dtype=np.int64)
    if not labels:
        from convirt.evaluation.labelled import _splits

        splits = _splits(frame, manifest, ("train", "valid", "test"))
        paths = []
        for row, entry in enumerate(frame["image"]):
            try:
                paths.append(resolve_image_paths(entry, manifest.parent, allow_absolute)[0])
            except DataError as err:
                raise DataError(f"manifest {manifest}, row {row + 1}: {err}") from None
        data = LabelledData(manifest, file_sha256(manifest), frame, paths, [f"has {column}"], "binary",
                            present[:, None], splits)
    if not present[data.splits["train"]].any():
        raise DataError(f"manifest {manifest}: no training row has a {column}: nothing to learn")
    classes: list[str] = []
    if kind == "boxes":
        default = data.label_names[0] if labels else "finding"
        for row, cell in enumerate(frame[column]):
            try:
                classes += [c for c in dict.fromkeys(parse_boxes(cell, default)[1]) if c not in classes]
            except DataError as err:
                raise DataError(f"manifest {manifest}, row {row + 1}: {err}") from None
        classes.sort()
    return LocalizedData(data, kind, column, classes, allow_absolute)


# ---------------------------------------------------------------------------------------- transforms


def localized_transform(size: int, mean: float, std: float, augment: str = "none", boxes: bool = False) -> v2.Compose:
    """Resize to ``size x size`` (+ mild augmentation), normalise; masks and boxes move with the image.

    ``mild``: horizontal flip (p 0.5; lesions occur on both sides, so a flipped radiograph is a
    plausible one for localisation), affine (±10°, 5% shift, scale 0.9–1.1), brightness/contrast
    0.8–1.2. With ``boxes`` (samples holding ``boxes`` and ``labels``), boxes are clamped to the image
    and dropped with their labels when they shrink below one pixel.
    """
    if augment not in AUGMENT:
        raise ConfigError(f"augment must be one of {AUGMENT} for localized tasks, got {augment!r}")
    ops: list = [v2.Resize((size, size), antialias=True)]
    if augment == "mild":
        ops += [v2.RandomHorizontalFlip(0.5), v2.RandomAffine(10.0, translate=(0.05, 0.05), scale=(0.9, 1.1)),
                v2.ColorJitter(brightness=(0.8, 1.2), contrast=(0.8, 1.2))]
    ops.append(v2.Normalize([mean], [std]))
    if boxes:
        ops += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=1.0)]
    return v2.Compose(ops)


class LocalizedImages(Dataset):
    """Images with their masks (``(1, H, W)`` float 0/1) or detection targets (``boxes``, ``labels``)."""

    def __init__(self, data: LocalizedData, split: str, idx: Sequence[int] | None, transform) -> None:
        self.paths, self.cells = data.paths(split, idx), data.cells(split, idx)
        self.kind, self.root, self.allow_absolute = data.kind, data.root, data.allow_absolute
        self.class_index = {c: i + 1 for i, c in enumerate(data.classes)}
        self.default_class = data.classes[0] if data.classes else "finding"
        self.transform = transform
        self.positive = np.array([not is_blank(c) and (self.kind == "mask" or len(parse_boxes(c, self.default_class)[0]) > 0)
                                  for c in self.cells], dtype=bool)  # rows with a mask / a box

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        array = load_image(self.paths[i])
        image = tv_tensors.Image(to_tensor(array))
        if self.kind == "mask":
            mask = read_mask(self.cells[i], array.shape, self.root, self.allow_absolute)
            out = self.transform({"image": image, "mask": tv_tensors.Mask(torch.from_numpy(mask[None].astype(np.uint8)))})
            return out["image"].as_subclass(torch.Tensor), out["mask"].as_subclass(torch.Tensor).float()
        xyxy, classes = parse_boxes(self.cells[i], self.default_class)
        boxes = tv_tensors.BoundingBoxes(torch.from_numpy(xyxy), format="XYXY", canvas_size=array.shape)
        labels = torch.tensor([self.class_index.get(c, 1) for c in classes], dtype=torch.int64)
        out = self.transform({"image": image, "boxes": boxes, "labels": labels})
        return out["image"].as_subclass(torch.Tensor), {"boxes": out["boxes"].as_subclass(torch.Tensor).float(),
                                                        "labels": out["labels"]}


def positive_weights(positive: np.ndarray, fraction: float) -> torch.Tensor:
    """Per-sample draw weights under which images with a finding make up ``fraction`` of the draws."""
    positive = np.asarray(positive, bool)
    weights = np.where(positive, fraction / positive.sum(), (1 - fraction) / (~positive).sum())
    return torch.as_tensor(weights, dtype=torch.double)


def collate_detection(batch):
    """Detection batches: a list of images and a list of target dicts (torchvision's detector API)."""
    images, targets = zip(*batch)
    return list(images), list(targets)


# ------------------------------------------------------------------------------------------- weights


def copy_backbone_weights(source: nn.Module, target: nn.Module) -> dict:
    """Copy the pretrained timm backbone's tensors into a ``features_only`` copy of it (U-Net / detector).

    timm's feature wrappers flatten module paths (``stages.0`` -> ``stages_0``), so names are matched
    with ``.`` and ``_`` treated alike. Every tensor of ``target`` must be found with the same shape
    (else the wrong architecture would silently keep random weights); source tensors the feature
    extractor lacks (the final norm / classifier head) are listed as ``unused``.
    """
    src = source.state_dict()
    norm = {k.replace(".", "_"): k for k in src}
    if len(norm) != len(src):
        raise ConfigError("backbone parameter names collide when '.' and '_' are identified")
    dst = target.state_dict()
    new, missing = {}, []
    for key, value in dst.items():
        match = norm.get(key.replace(".", "_"))
        if match is None or src[match].shape != value.shape:
            missing.append(key)
        else:
            new[key] = src[match].detach().clone()
    if missing:
        raise ConfigError(f"cannot place the encoder's weights into the feature extractor: {len(missing)} tensors "
                          f"have no counterpart (first: {missing[:3]})")
    target.load_state_dict(new)
    used = {norm[k.replace(".", "_")] for k in dst}
    return {"copied": len(new), "unused": sorted(set(src) - used)}


def timm_features(image_encoder: nn.Module) -> tuple[nn.Module, dict]:
    """A timm ``features_only`` twin of ``ImageEncoder.backbone`` holding its weights (no download)."""
    import timm

    try:
        body = timm.create_model(image_encoder.name, pretrained=False, features_only=True,
                                 in_chans=image_encoder.in_chans)
    except (RuntimeError, ValueError, TypeError) as err:
        raise ConfigError(f"timm cannot give stage features of {image_encoder.name!r} ({err}); localized tasks "
                          "need a backbone with a feature pyramid (ResNet, ConvNeXt, EfficientNet, DenseNet, ...)") from err
    return body, copy_backbone_weights(image_encoder.backbone, body)


# ------------------------------------------------------------------------------------------ training


@dataclass
class LocalizedConfig(FinetuneConfig):
    """The classification fine-tuning settings (Adam; best epoch by validation score), with smaller
    batches and only augmentations that move masks and boxes with the image."""

    batch_size: int = 16
    augment: str = "mild"
    # share of training draws that show a finding (mask or box); None: images drawn uniformly. Findings are
    # rare (SIIM ~22%, RSNA ~23%, synthetic ~12%); oversampling them is the usual remedy (not in Müller et al.)
    positive_fraction: float | None = None

    def validate(self) -> "LocalizedConfig":
        super().validate()
        if self.augment not in AUGMENT:
            raise ConfigError(f"augment must be one of {AUGMENT} for localized tasks, got {self.augment!r}")
        if self.positive_fraction is not None and not 0 < self.positive_fraction < 1:
            raise ConfigError(f"positive_fraction must lie in (0, 1), or be unset for uniform draws; got {self.positive_fraction}")
        return self


def default_config(freeze: bool, **overrides) -> LocalizedConfig:
    """lr 1e-3 for a decoder / heads on a frozen encoder; 3e-4 when the encoder is fine-tuned with them
    (the freshly initialised decoder needs a larger step than the 1e-4 classification fine-tuning uses)."""
    base = LocalizedConfig(lr=1e-3 if freeze else 3e-4)
    return LocalizedConfig(**{**asdict(base), **{k: v for k, v in overrides.items() if v is not None}}).validate()


class FrozenEncoderMixin:
    """``train()`` keeps a frozen encoder in eval mode (fixed batch-norm statistics), as finetune.py does."""

    freeze: bool

    def frozen_part(self) -> nn.Module:  # pragma: no cover - overridden
        raise NotImplementedError

    def train(self, mode: bool = True):
        super().train(mode)  # type: ignore[misc]
        if self.freeze:
            self.frozen_part().eval()
        return self


def fit(model: L.LightningModule, train_set: Dataset, val_set: Dataset, cfg: LocalizedConfig, seed: int,
        monitor: str, progress: bool, workdir: Path, collate: Callable | None = None) -> tuple[float | None, int]:
    """Train with early stopping on ``monitor`` (max), reload the best epoch's weights; (best score, epochs)."""
    epoch_samples = max(len(train_set), cfg.min_epoch_steps * cfg.batch_size)
    generator = torch.Generator().manual_seed(seed)
    sampler = RandomSampler(train_set, replacement=False, num_samples=epoch_samples, generator=generator)
    positive = getattr(train_set, "positive", None)
    if cfg.positive_fraction is not None and positive is not None and 0 < positive.sum() < len(positive):
        sampler = WeightedRandomSampler(positive_weights(positive, cfg.positive_fraction), epoch_samples,
                                        replacement=True, generator=generator)
    kw = dict(batch_size=cfg.batch_size, num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0,
              collate_fn=collate)
    train_loader = DataLoader(train_set, sampler=sampler, drop_last=len(train_set) > cfg.batch_size, **kw)
    val_loader = DataLoader(val_set, shuffle=False, **kw)
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        best = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp, monitor=monitor, mode="max", save_top_k=1,
                                                   save_weights_only=True, enable_version_counter=False)
        stop = L.pytorch.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=cfg.patience)
        # CUDA has no deterministic kernels for some upsampling / RoI backward passes: warn there instead
        trainer = L.Trainer(accelerator="auto", devices=1, precision=cfg.precision, max_epochs=cfg.max_epochs,
                            callbacks=[best, stop], logger=False, enable_progress_bar=progress,
                            enable_model_summary=False, num_sanity_val_steps=0,
                            deterministic="warn" if torch.cuda.is_available() else True)
        model.train()  # Lightning keeps the modules' modes; the encoder arrives in eval mode
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            trainer.fit(model, train_loader, val_loader)
        state = torch.load(best.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
        model.load_state_dict(state)
        epochs = trainer.current_epoch
    score = None if best.best_model_score is None else float(best.best_model_score)
    return score, int(epochs)


# ------------------------------------------------------------------------------------------ protocol


@dataclass
class Task:
    """What differs between segmentation and detection inside the shared protocol loop."""

    protocol: str  # "segment" / "detect"
    variant: str
    metrics: list[tuple[str, str]]  # (key in run["test"], column title); the first is the headline
    train: Callable[..., dict]  # (encoder, data, idx, cfg, freeze, seed, settings, workdir, keep_model) -> run
    overlays: Callable[..., bool]  # (model, encoder, data, path, n) -> drawn?


def run_protocol(task: Task, encoders: Sequence, data: LocalizedData, out: str | Path, settings, cfg: LocalizedConfig,
                 freeze: bool, overlays: int = 8) -> dict:
    """Every encoder x (label fraction, seed) on pinned subsets, as :func:`protocols.run_finetune` does."""
    from convirt.evaluation.plots import plot_label_fraction_curves
    from convirt.evaluation.protocols import model_record, pinned_subsets, prepare
    from convirt.evaluation.report import write_results

    out, settings, cfg = Path(out), settings.validate(), cfg.validate()
    subsets, subsets_info = pinned_subsets(data.labelled, settings, out)
    explain = (max(float(f) for f in settings.fractions), int(settings.seeds[0]))  # the run whose output is pictured
    models, pictures = {}, []
    for m, enc in enumerate(encoders):
        prepare(enc, data.labelled, settings)  # random init: batch-norm statistics from the training images
        runs, done = [], {}
        for (fraction, seed), idx in sorted(subsets.items()):
            key = (tuple(int(i) for i in idx), int(seed))
            if key not in done:  # identical subset and seed (e.g. 100%): same run
                r = task.train(enc, data, idx, cfg, freeze, int(seed), settings, out,
                               keep_model=(float(fraction), int(seed)) == explain)
                model = r.pop("model", None)
                if model is not None and overlays:
                    file = f"overlays_{m}.png"
                    if task.overlays(model, enc, data, out / file, overlays):
                        pictures.append(file)
                done[key] = r
            runs.append({"fraction": float(fraction), "seed": int(seed), **done[key]})
        models[enc.name] = {"model": model_record(enc), "runs": runs, "summary": summarize(runs, task.metrics)}
    name = task.protocol + ("-frozen" if freeze else "")
    doc = {"protocol": name, "variant": task.variant + (" on the frozen encoder" if freeze else ", encoder fine-tuned"),
           "freeze": freeze, "data": data.describe(), "settings": settings.to_dict(), "training": asdict(cfg),
           "subsets": subsets_info, "models": models}
    headline, title = task.metrics[0]
    if len(settings.fractions) > 1:
        plot_label_fraction_curves({n: mm["summary"] for n, mm in models.items()}, out / "label_fractions.png",
                                   metric=headline, title=f"{name}: test {title}, mean ± std over seeds")
        pictures.insert(0, "label_fractions.png")
    return write_results(out, doc, render_localized(doc, task.metrics, pictures))


def summarize(runs: list[dict], metrics: Sequence[tuple[str, str]]) -> dict[str, dict]:
    """Mean ± sample std over seeds per fraction (keys ``repr(fraction)``, like the classification protocols)."""
    from convirt.evaluation.probe import _mean_std

    out = {}
    for fraction in sorted({r["fraction"] for r in runs}):
        rs = [r for r in runs if r["fraction"] == fraction]
        entry: dict[str, Any] = {"fraction": fraction, "seeds": [r["seed"] for r in rs],
                                 "n_train_mean": float(np.mean([r["n_train"] for r in rs]))}
        for key, _ in metrics:
            entry[key] = _mean_std([r["test"].get(key) for r in rs])
        out[repr(float(fraction))] = entry
    return out


def render_localized(doc: dict, metrics: Sequence[tuple[str, str]], pictures: list[str]) -> str:
    from convirt.evaluation.report import pm

    data, settings = doc["data"], doc["settings"]
    fractions = settings["fractions"]
    pct = [f"{100 * float(f):g}%" for f in fractions]
    lines = [f"# {doc['protocol']} evaluation", "",
             f"{doc['variant']}. Test split of `{Path(data['manifest']).name}` (sha256 {data['manifest_sha256'][:12]}…): "
             f"{data['n_images'].get('train', 0)} train / {data['n_images'].get('valid', 0)} valid / "
             f"{data['n_images'].get('test', 0)} test images; targets: column `{data['target']['column']}` "
             f"({data['target']['kind']}). Mean ± sample std over seeds {settings['seeds']}; "
             f"subsets stratified by {', '.join(data['labels'])} (sha256 {doc['subsets']['sha256'][:12]}…)."]
    for key, title in metrics:
        lines += ["", f"## Test {title}", "", "| model | " + " | ".join(pct) + " |", "|---|" + "---|" * len(pct)]
        for name, m in doc["models"].items():
            lines.append(f"| {name} | " + " | ".join(pm(m["summary"].get(repr(float(f)), {}).get(key)) for f in fractions) + " |")
    ci_rows = [f"| {name} | {100 * r['fraction']:g}% | {r['seed']} | {r['test']['dice']:.3f} | "
               f"{r['test']['dice_ci']['low']:.3f} – {r['test']['dice_ci']['high']:.3f} |"
               for name, m in doc["models"].items() for r in m["runs"]
               if (r["test"].get("dice_ci") or {}).get("low") is not None and r["test"].get("dice") is not None]
    if ci_rows:
        lines += ["", "## Bootstrap 95% intervals of each run's test Dice (resampling test images)", "",
                  "| model | fraction | seed | Dice | 95% CI |", "|---|---|---|---|---|"] + ci_rows
    lines += ["", "## Models", ""]
    for name, m in doc["models"].items():
        rec = m["model"]
        epochs = ", ".join(str(r["epochs"]) for r in m["runs"])
        lines.append(f"- **{name}**: `{rec['spec']}` (weights sha256 {rec['fingerprint'][:12]}…, {rec['image_size']} px"
                     + (f", batch norm recalibrated {rec['bn_recalibrated']}" if rec.get("bn_recalibrated") else "")
                     + f"; epochs run: {epochs})")
    if pictures:
        lines += ["", "## Pictures", ""] + [f"![{p}]({p})" for p in pictures]
    return "\n".join(lines) + "\n"


def comparison_columns(name: str, model_doc: dict) -> dict[str, float | None]:
    """The suite's comparison-table cells of one localized protocol for one model (mean and std per fraction)."""
    titles = ({"dice": "Dice", "iou": "IoU"} if name.startswith("segment")
              else {"map_50": "mAP@0.5", "map": "mAP@[.5:.95]"})
    row = {}
    for key, v in model_doc["summary"].items():
        pct = f"{100 * float(key):g}%"
        for metric, title in titles.items():
            row[f"{name} {title} @{pct}"] = v[metric]["mean"]
            row[f"{name} {title} @{pct} std"] = v[metric]["std"]
    return row


def run_suite_protocol(name: str, p, suite_cfg, suite_settings, encoders: Sequence, data_path: Path, out: Path,
                       cache, base: Path, progress: bool) -> dict:
    """One ``segment`` / ``segment-frozen`` / ``detect`` / ``detect-frozen`` entry of ``convirt evaluate suite``."""
    from convirt.evaluation.protocols import Settings

    task, freeze = name.split("-")[0], name.endswith("-frozen")
    data = load_localized(data_path, KINDS[task], p.target_column, p.labels, p.uncertain, suite_cfg.allow_absolute_paths)
    s = suite_settings
    settings = Settings(fractions=p.fractions or s.fractions, seeds=p.seeds or s.seeds, batch_size=s.batch_size,
                        num_workers=s.num_workers, n_boot=s.n_boot, cache_dir=cache,
                        subsets_file=(base / p.subsets) if p.subsets else None, progress=progress).validate()
    cfg = default_config(freeze, lr=p.lr, max_epochs=p.epochs, patience=p.patience, augment=p.augment,
                         precision=p.precision, batch_size=p.batch_size, num_workers=s.num_workers,
                         positive_fraction=p.positive_fraction)
    if task == "segment":
        from convirt.evaluation.segmentation import run_segmentation as run
    else:
        from convirt.evaluation.detection import run_detection as run
    return run(encoders, data, out, settings, cfg, freeze)


def denormalize(image: torch.Tensor, mean: float, std: float) -> np.ndarray:
    """A network input ``(C, H, W)`` back to a displayable ``(H, W)`` array in [0, 1]."""
    return np.clip(image[0].float().numpy() * std + mean, 0, 1)


def deep_copy_encoder(encoder) -> nn.Module:
    """The caller's encoder is never modified (several protocols share it)."""
    return copy.deepcopy(encoder.module)
