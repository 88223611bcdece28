"""``convirt evaluate segment``: a U-Net on the pretrained encoder, frozen or fine-tuned, Dice and IoU.

The protocol of Müller et al. (2022, LoVT) and GLoRIA (Huang et al. 2021) on SIIM-ACR pneumothorax:
the pretrained image encoder becomes the contracting path of a U-Net (Ronneberger et al. 2015), here
segmentation_models_pytorch's ``Unet`` with a timm-universal encoder (``tu-NAME``,
``encoder_weights=None``) into which the encoder's own weights are copied
(:func:`localized.copy_backbone_weights`; nothing is downloaded). Training: Adam, per-pixel binary
cross-entropy + soft Dice loss (Dice alone is unstable on images without a finding, BCE alone is
swamped by background), the best epoch by validation Dice.

Metrics on the test split at the model's resolution, threshold 0.5 on the sigmoid:

* ``dice`` = 2·TP / (2·TP + FP + FN) and ``iou`` = TP / (TP + FP + FN), pixels pooled over all test
  images (torchmetrics' ``DiceScore(aggregation_level="global")`` / binary ``jaccard_index`` give the
  same; tests check it), with a bootstrap interval over test images for Dice;
* ``dice_positive``: mean per-image Dice over images that have the finding (lesion-level quality);
* ``dice_image_mean``: mean per-image Dice over all images, an empty prediction of an empty mask
  scoring 1 (the SIIM-ACR Kaggle metric).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from convirt.errors import ConfigError
from convirt.evaluation.localized import (FrozenEncoderMixin, LocalizedConfig, LocalizedData, LocalizedImages, Task,
                                          is_blank, copy_backbone_weights, deep_copy_encoder, denormalize, fit,
                                          localized_transform, run_protocol)

METRICS = [("dice", "Dice (pixels pooled)"), ("iou", "IoU (pixels pooled)"),
           ("dice_positive", "mean Dice of images with the finding"), ("dice_image_mean", "mean per-image Dice (SIIM)")]


def build_unet(image_encoder: nn.Module, decoder_channels: Sequence[int] = (256, 128, 64, 32, 16)) -> tuple[nn.Module, dict]:
    """smp ``Unet`` over ``tu-<timm name>`` with the weights of ``image_encoder.backbone`` (an ImageEncoder)."""
    import segmentation_models_pytorch as smp

    try:
        unet = smp.Unet(f"tu-{image_encoder.name}", encoder_weights=None, in_channels=image_encoder.in_chans,
                        classes=1, decoder_channels=tuple(decoder_channels))
    except (ValueError, RuntimeError, KeyError, TypeError) as err:
        raise ConfigError(f"segmentation_models_pytorch cannot build a U-Net on {image_encoder.name!r} ({err}); "
                          "use a CNN backbone with stride-2 stages (ResNet, ConvNeXt, EfficientNet, ...)") from err
    return unet, copy_backbone_weights(image_encoder.backbone, unet.encoder.model)


def counts(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per-image ``(TP, FP, FN)`` of boolean ``(B, 1, H, W)`` masks -> ``(B, 3)`` int64."""
    pred, truth = pred.bool().flatten(1), truth.bool().flatten(1)
    return torch.stack([(pred & truth).sum(1), (pred & ~truth).sum(1), (~pred & truth).sum(1)], dim=1).long()


def dice_iou(c: np.ndarray) -> tuple[float | None, float | None]:
    """Pooled Dice and IoU from summed ``(TP, FP, FN)``; undefined (None) when both masks are empty."""
    tp, fp, fn = (float(v) for v in np.asarray(c).reshape(-1, 3).sum(axis=0))
    if tp + fp + fn == 0:
        return None, None
    return 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)


def segmentation_metrics(c: np.ndarray, n_boot: int = 0, seed: int = 0) -> dict:
    """Metrics of the module docstring from per-image counts ``(N, 3)``."""
    c = np.asarray(c, dtype=np.float64).reshape(-1, 3)
    dice, iou = dice_iou(c)
    denom = 2 * c[:, 0] + c[:, 1] + c[:, 2]
    per_image = np.where(denom > 0, 2 * c[:, 0] / np.maximum(denom, 1), 1.0)
    positive = (c[:, 0] + c[:, 2]) > 0
    out = {"dice": dice, "iou": iou, "dice_positive": float(per_image[positive].mean()) if positive.any() else None,
           "dice_image_mean": float(per_image.mean()) if len(c) else None, "n_images": int(len(c)),
           "n_positive": int(positive.sum())}
    if n_boot and len(c) > 1 and dice is not None:
        rng = np.random.default_rng(seed)
        stats = []
        for _ in range(n_boot):
            d, _ = dice_iou(c[rng.integers(0, len(c), len(c))])
            if d is not None:
                stats.append(d)
        if stats:
            out["dice_ci"] = {"low": float(np.percentile(stats, 2.5)), "high": float(np.percentile(stats, 97.5)),
                              "n_boot": len(stats)}
    return out


class SegmentationModel(FrozenEncoderMixin, L.LightningModule):
    """U-Net (encoder = the pretrained one) -> one logit per pixel."""

    def __init__(self, image_encoder: nn.Module, freeze: bool, cfg: LocalizedConfig) -> None:
        super().__init__()
        self.net, self.weights_report = build_unet(image_encoder)
        self.freeze, self.cfg, self.in_chans = freeze, cfg, image_encoder.in_chans
        if freeze:
            self.net.encoder.requires_grad_(False)
        self._val: list[torch.Tensor] = []
        self._epoch_loss: list[float] = []
        self.train_loss_per_epoch: list[float] = []

    def frozen_part(self) -> nn.Module:
        return self.net.encoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.in_chans == 3 and images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return self.net(images)

    @staticmethod
    def loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        bce = nn.functional.binary_cross_entropy_with_logits(logits, mask)
        p = logits.sigmoid()
        dims = (1, 2, 3)
        soft_dice = (2 * (p * mask).sum(dims) + 1) / (p.sum(dims) + mask.sum(dims) + 1)
        return bce + (1 - soft_dice).mean()

    def training_step(self, batch, _):
        loss = self.loss(self(batch[0]), batch[1])
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch[1]))
        self._epoch_loss.append(float(loss.detach()))
        return loss

    def on_train_epoch_end(self) -> None:
        if self._epoch_loss:
            self.train_loss_per_epoch.append(float(np.mean(self._epoch_loss)))
        self._epoch_loss.clear()

    def validation_step(self, batch, _):
        self._val.append(counts(self(batch[0]).float() > 0, batch[1] > 0.5).cpu())

    def on_validation_epoch_end(self) -> None:
        dice, _ = dice_iou(torch.cat(self._val).numpy())
        self._val.clear()
        self.log("val_dice", torch.tensor(-1.0 if dice is None else dice), prog_bar=True)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=max(1, self.cfg.patience // 2))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": plateau, "monitor": "val_dice"}}


@torch.no_grad()
def predict_masks(model: SegmentationModel, loader: DataLoader) -> tuple[np.ndarray, list[torch.Tensor]]:
    """Per-image counts ``(N, 3)`` and the predicted probability maps."""
    model.eval()
    c, probs = [], []
    for images, masks in loader:
        p = model(images).float().sigmoid()
        c.append(counts(p > 0.5, masks > 0.5))
        probs += list(p[:, 0])
    return torch.cat(c).numpy(), probs


def train_segmentation(encoder, data: LocalizedData, idx: Sequence[int], cfg: LocalizedConfig, freeze: bool, seed: int,
                       settings, workdir: Path, keep_model: bool = False) -> dict:
    """One run on the training subset ``idx``; test metrics, best validation Dice and the loss curve."""
    L.seed_everything(seed, workers=True, verbose=False)
    module = deep_copy_encoder(encoder)
    model = SegmentationModel(module, freeze, cfg)
    train_set = LocalizedImages(data, "train", idx, localized_transform(encoder.size, encoder.mean, encoder.std, cfg.augment))
    tf_eval = localized_transform(encoder.size, encoder.mean, encoder.std, "none")
    val_set, test_set = LocalizedImages(data, "valid", None, tf_eval), LocalizedImages(data, "test", None, tf_eval)
    best, epochs = fit(model, train_set, val_set, cfg, seed, "val_dice", settings.progress, workdir)
    model = model.cpu()
    loader = DataLoader(test_set, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers)
    c, _ = predict_masks(model, loader)
    out = {"best_val_dice": best, "epochs": epochs, "n_train": len(train_set),
           "n_train_with_mask": int(sum(not is_blank(cell) for cell in train_set.cells)),
           "train_loss_per_epoch": model.train_loss_per_epoch, "weights": model.weights_report,
           "test": segmentation_metrics(c, settings.n_boot, seed)}
    if keep_model:
        out["model"] = model.eval()
    return out


def draw_overlays(model: SegmentationModel, encoder, data: LocalizedData, path: Path, n: int) -> bool:
    """Test images with the finding first: ground truth outlined in green, prediction filled in red."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    from convirt.evaluation.plots import _save

    test = LocalizedImages(data, "test", None, localized_transform(encoder.size, encoder.mean, encoder.std, "none"))
    order = sorted(range(len(test)), key=lambda i: (is_blank(test.cells[i]), i))[:n]
    if not order:
        return False
    items = [test[i] for i in order]
    images = torch.stack([x for x, _ in items])
    with torch.no_grad():
        model.eval()
        pred = (model(images).float().sigmoid() > 0.5)[:, 0].numpy()
    cols = min(4, len(items))
    rows = -(-len(items) // cols)
    fig = Figure(figsize=(2.6 * cols, 2.8 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, ((image, mask), p) in enumerate(zip(items, pred)):
        ax = axes.flat[k]
        truth = mask[0].numpy() > 0.5
        ax.imshow(denormalize(image, encoder.mean, encoder.std), cmap="gray", vmin=0, vmax=1)
        ax.imshow(np.ma.masked_where(~p, p.astype(float)), cmap=ListedColormap(["red"]), alpha=0.45, vmin=0, vmax=1)
        if truth.any():
            ax.contour(truth.astype(float), levels=[0.5], colors="lime", linewidths=0.8)
        d, _ = dice_iou(counts(torch.from_numpy(p)[None, None], torch.from_numpy(truth)[None, None]).numpy())
        ax.set_title(f"{Path(test.paths[order[k]]).name}\nDice {'–' if d is None else f'{d:.2f}'}", fontsize=7)
    fig.suptitle(f"{encoder.name}: green = ground truth, red = prediction (p > 0.5)", fontsize=9)
    _save(fig, path)
    return True


TASK = Task("segment", "U-Net (segmentation_models_pytorch) with the pretrained encoder as its encoder",
            METRICS, train_segmentation, draw_overlays)


def run_segmentation(encoders: Sequence, data: LocalizedData, out: str | Path, settings, cfg: LocalizedConfig,
                     freeze: bool, overlays: int = 8) -> dict:
    """Segmentation at label fractions for every encoder; writes results.json / results.md / overlays."""
    if data.kind != "mask":
        raise ConfigError("segmentation needs a mask column (load_localized(..., kind='mask'))")
    return run_protocol(TASK, encoders, data, out, settings, cfg, freeze, overlays)
