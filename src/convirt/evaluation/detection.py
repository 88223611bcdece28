"""``convirt evaluate detect``: a detector on the pretrained encoder, frozen or fine-tuned, mAP.

Müller et al. (2022, LoVT) evaluate localized representations on RSNA pneumonia detection (mAP at
label fractions, encoder frozen or fine-tuned; they use YOLOv3). Here the detector is torchvision's
Faster R-CNN (Ren et al. 2015) with a feature pyramid (Lin et al. 2017): a maintained, well-tested
two-stage detector whose region proposals train reliably from a few hundred images, which a
one-stage focal-loss detector (RetinaNet) or YOLO does not do in a CPU budget. Its backbone is
:class:`TimmFPN`: the encoder's timm stages (strides 4–32, ``features_only``, holding the encoder's
own weights, :func:`localized.copy_backbone_weights`) under torchvision's ``FeaturePyramidNetwork``.

Small radiographs need small anchors: one size per pyramid level, twice its stride (8–128 px at
strides 4–64), aspect ratios 0.5 / 1 / 2. The detector's own resize is set to the encoder's input
size (images arrive resized and normalised). Fewer proposals (300 in training, 100 at test) and
RoI samples (64 per image), a 128-channel pyramid and a 256-wide RoI head instead of torchvision's
COCO defaults (256 / 1024) keep a CPU step affordable for lesions that number one or two per
image; images without boxes are negatives (allowed by torchvision).

Metrics (torchmetrics ``MeanAveragePrecision``, COCO evaluation via pycocotools, boxes scored
>= 0.01 kept): ``map_50`` (mAP at IoU 0.5, RSNA-style), ``map`` (mean over IoU .5:.95, COCO),
``map_75`` and ``mar_100``; averaged over classes when there are several.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from convirt.errors import ConfigError
from convirt.evaluation.localized import (FrozenEncoderMixin, LocalizedConfig, LocalizedData, LocalizedImages, Task,
                                          collate_detection, deep_copy_encoder, denormalize, fit, is_blank,
                                          localized_transform, run_protocol, timm_features)

METRICS = [("map_50", "mAP@0.5"), ("map", "mAP@[.5:.95]"), ("map_75", "mAP@0.75"), ("mar_100", "mean recall (100 boxes)")]
SCORE_THRESHOLD = 0.01  # boxes kept for mAP (low: mAP integrates over the whole precision-recall curve)
DRAW_THRESHOLD = 0.5  # boxes drawn in the overlays
REPRESENTATION = 256  # RoI head width (torchvision: 1024; its 6272 x 1024 layer dominated a CPU step)


class TimmFPN(nn.Module):
    """timm stage features (strides >= 4) -> torchvision FPN (+ a max-pooled level): a detector backbone."""

    def __init__(self, image_encoder: nn.Module, out_channels: int = 128) -> None:
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        super().__init__()
        self.body, self.weights_report = timm_features(image_encoder)
        reductions = list(self.body.feature_info.reduction())
        self.keep = [i for i, r in enumerate(reductions) if r >= 4]
        self.strides = [reductions[i] for i in self.keep]
        if len(self.keep) < 2 or any(b <= a for a, b in zip(self.strides, self.strides[1:])):
            raise ConfigError(f"{image_encoder.name}: a feature pyramid needs stages of increasing stride, got {reductions}")
        channels = list(self.body.feature_info.channels())
        self.in_chans = image_encoder.in_chans
        self.fpn = FeaturePyramidNetwork([channels[i] for i in self.keep], out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    @property
    def level_names(self) -> list[str]:
        return [str(i) for i in range(len(self.keep))]

    def forward(self, x: torch.Tensor) -> OrderedDict:
        if self.in_chans == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        features = self.body(x)
        return self.fpn(OrderedDict((str(k), features[i]) for k, i in enumerate(self.keep)))


def build_detector(image_encoder: nn.Module, num_classes: int, size: int) -> nn.Module:
    """Faster R-CNN (torchvision) over :class:`TimmFPN` of ``image_encoder`` for ``size`` px inputs."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    backbone = TimmFPN(image_encoder)
    strides = backbone.strides + [backbone.strides[-1] * 2]  # + the max-pooled level
    anchors = AnchorGenerator(tuple((2 * s,) for s in strides), ((0.5, 1.0, 2.0),) * len(strides))
    roi_pool = MultiScaleRoIAlign(backbone.level_names, output_size=7, sampling_ratio=2)
    box_head = TwoMLPHead(backbone.out_channels * 7 * 7, REPRESENTATION)
    return FasterRCNN(backbone, rpn_anchor_generator=anchors, box_roi_pool=roi_pool,
                      box_head=box_head, box_predictor=FastRCNNPredictor(REPRESENTATION, num_classes + 1),
                      min_size=size, max_size=size, image_mean=[0.0] * image_encoder.in_chans,
                      image_std=[1.0] * image_encoder.in_chans, rpn_pre_nms_top_n_train=1000,
                      rpn_post_nms_top_n_train=300, rpn_pre_nms_top_n_test=500, rpn_post_nms_top_n_test=100,
                      box_batch_size_per_image=64, box_score_thresh=SCORE_THRESHOLD, box_detections_per_img=50)


def mean_average_precision(predictions: Sequence[dict], targets: Sequence[dict]) -> dict:
    """torchmetrics' COCO mAP; -1 (torchmetrics' "undefined", e.g. no ground-truth box) becomes None."""
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox")
    metric.update([{k: v.detach().cpu() for k, v in p.items()} for p in predictions],
                  [{k: v.detach().cpu() for k, v in t.items()} for t in targets])
    result = metric.compute()
    out = {}
    for key in ("map", "map_50", "map_75", "mar_100"):
        v = float(result[key])
        out[key] = None if v < 0 else v
    return out


class DetectionModel(FrozenEncoderMixin, L.LightningModule):
    """Faster R-CNN whose backbone body is the pretrained encoder."""

    def __init__(self, image_encoder: nn.Module, num_classes: int, size: int, freeze: bool, cfg: LocalizedConfig) -> None:
        super().__init__()
        self.net = build_detector(image_encoder, num_classes, size)
        self.freeze, self.cfg = freeze, cfg
        if freeze:
            self.net.backbone.body.requires_grad_(False)
        self._preds: list[dict] = []
        self._targets: list[dict] = []
        self._epoch_loss: list[float] = []
        self.train_loss_per_epoch: list[float] = []

    @property
    def weights_report(self) -> dict:
        return self.net.backbone.weights_report

    def frozen_part(self) -> nn.Module:
        return self.net.backbone.body

    def forward(self, images, targets=None):
        return self.net(images, targets)

    def training_step(self, batch, _):
        images, targets = batch
        losses = self.net(images, targets)
        loss = sum(losses.values())
        self.log("train_loss", loss, prog_bar=True, batch_size=len(images))
        self._epoch_loss.append(float(loss.detach()))
        return loss

    def on_train_epoch_end(self) -> None:
        if self._epoch_loss:
            self.train_loss_per_epoch.append(float(np.mean(self._epoch_loss)))
        self._epoch_loss.clear()

    def validation_step(self, batch, _):
        images, targets = batch
        self._preds += self.net(images)
        self._targets += targets

    def on_validation_epoch_end(self) -> None:
        m = mean_average_precision(self._preds, self._targets)
        self._preds, self._targets = [], []
        self.log("val_map_50", torch.tensor(-1.0 if m["map_50"] is None else m["map_50"]), prog_bar=True)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=max(1, self.cfg.patience // 2))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": plateau, "monitor": "val_map_50"}}


@torch.no_grad()
def predict_boxes(model: DetectionModel, loader: DataLoader) -> tuple[list[dict], list[dict]]:
    model.eval()
    preds, targets = [], []
    for images, t in loader:
        preds += model(images)
        targets += t
    return preds, targets


def train_detection(encoder, data: LocalizedData, idx: Sequence[int], cfg: LocalizedConfig, freeze: bool, seed: int,
                    settings, workdir: Path, keep_model: bool = False) -> dict:
    """One run on the training subset ``idx``; test mAP, best validation mAP@0.5 and the loss curve."""
    L.seed_everything(seed, workers=True, verbose=False)
    module = deep_copy_encoder(encoder)
    model = DetectionModel(module, len(data.classes), encoder.size, freeze, cfg)
    train_set = LocalizedImages(data, "train", idx, localized_transform(encoder.size, encoder.mean, encoder.std, cfg.augment, boxes=True))
    tf_eval = localized_transform(encoder.size, encoder.mean, encoder.std, "none", boxes=True)
    val_set, test_set = LocalizedImages(data, "valid", None, tf_eval), LocalizedImages(data, "test", None, tf_eval)
    best, epochs = fit(model, train_set, val_set, cfg, seed, "val_map_50", settings.progress, workdir, collate_detection)
    model = model.cpu()
    loader = DataLoader(test_set, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers,
                        collate_fn=collate_detection)
    preds, targets = predict_boxes(model, loader)
    test = mean_average_precision(preds, targets)
    test.update(n_images=len(test_set), n_boxes=int(sum(len(t["boxes"]) for t in targets)))
    out = {"best_val_map_50": best, "epochs": epochs, "n_train": len(train_set),
           "n_train_with_boxes": int(sum(not is_blank(c) for c in train_set.cells)),
           "train_loss_per_epoch": model.train_loss_per_epoch, "weights": model.weights_report, "test": test}
    if keep_model:
        out["model"] = model.eval()
    return out


def draw_overlays(model: DetectionModel, encoder, data: LocalizedData, path: Path, n: int) -> bool:
    """Test images with boxes first: ground truth in green, predictions scored >= 0.5 in red."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from convirt.evaluation.plots import _save

    test = LocalizedImages(data, "test", None, localized_transform(encoder.size, encoder.mean, encoder.std, "none", boxes=True))
    order = sorted(range(len(test)), key=lambda i: (is_blank(test.cells[i]), i))[:n]
    if not order:
        return False
    items = [test[i] for i in order]
    with torch.no_grad():
        model.eval()
        preds = model([x for x, _ in items])
    cols = min(4, len(items))
    rows = -(-len(items) // cols)
    fig = Figure(figsize=(2.6 * cols, 2.8 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, ((image, target), pred) in enumerate(zip(items, preds)):
        ax = axes.flat[k]
        ax.imshow(denormalize(image, encoder.mean, encoder.std), cmap="gray", vmin=0, vmax=1)
        for x0, y0, x1, y1 in target["boxes"].tolist():
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="lime", linewidth=1.0))
        for (x0, y0, x1, y1), s in zip(pred["boxes"].tolist(), pred["scores"].tolist()):
            if s >= DRAW_THRESHOLD:
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="red", linewidth=1.0))
                ax.text(x0, y0, f"{s:.2f}", color="red", fontsize=6, va="bottom")
        ax.set_title(Path(test.paths[order[k]]).name, fontsize=7)
    fig.suptitle(f"{encoder.name}: green = ground truth, red = predicted (score >= {DRAW_THRESHOLD})", fontsize=9)
    _save(fig, path)
    return True


TASK = Task("detect", "Faster R-CNN + FPN (torchvision) with the pretrained encoder as its backbone",
            METRICS, train_detection, draw_overlays)


def run_detection(encoders: Sequence, data: LocalizedData, out: str | Path, settings, cfg: LocalizedConfig,
                  freeze: bool, overlays: int = 8) -> dict:
    """Detection at label fractions for every encoder; writes results.json / results.md / overlays."""
    if data.kind != "boxes":
        raise ConfigError("detection needs a boxes column (load_localized(..., kind='boxes'))")
    return run_protocol(TASK, encoders, data, out, settings, cfg, freeze, overlays)
