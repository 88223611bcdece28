"""Train a linear layer on an image encoder, frozen (the paper's linear protocol) or end to end (fine-tuning).

The paper (Sec. 4.2) evaluates "linear classification" by training only a linear layer on the
frozen encoder, and "fine-tuning" by training the whole encoder with it, both with the training
image augmentations and model selection on the validation split. Here:

* one Lightning run per (label fraction, seed): Adam, binary cross-entropy per label
  (binary / multi-label) or softmax cross-entropy (multi-class), the augmentations of the paper's
  family (or ``augment="mild"``/``"none"``);
* the validation macro AUROC is computed after every epoch; the best epoch's weights are kept
  (``ModelCheckpoint``) and training stops after ``patience`` epochs without improvement
  (``EarlyStopping``); the learning rate halves on a plateau;
* an "epoch" covers at least ``min_epoch_steps`` batches (sampling the subset again), so a 1%
  subset of a few dozen images is not stopped after a handful of steps;
* with ``freeze=True`` the encoder stays in eval mode (batch-norm statistics fixed) and receives
  no gradient, so only the linear layer learns.

Everything is seeded (``lightning.seed_everything``; loader workers derive their seeds), so on a
CPU the same seed gives the same numbers.
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from convirt.data.images import load_image, to_tensor
from convirt.data.transforms import eval_transform, train_transform
from convirt.errors import ConfigError
from convirt.evaluation.metrics import classification_metrics, macro_auroc, multiclass_metrics

AUGMENT = ("paper", "mild", "none")


@dataclass
class FinetuneConfig:
    """Hyper-parameters of one run; defaults differ by mode (see :func:`default_config`)."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 64
    max_epochs: int = 30
    patience: int = 5
    min_epoch_steps: int = 20
    augment: str = "paper"
    precision: str = "32-true"
    num_workers: int = 0

    def validate(self) -> "FinetuneConfig":
        if self.lr <= 0 or self.batch_size < 1 or self.max_epochs < 1 or self.patience < 1 or self.min_epoch_steps < 1:
            raise ConfigError(f"invalid fine-tuning settings: {asdict(self)} (lr > 0, sizes and counts >= 1)")
        if self.augment not in AUGMENT:
            raise ConfigError(f"augment must be one of {AUGMENT}, got {self.augment!r}")
        return self


def default_config(freeze: bool, **overrides) -> FinetuneConfig:
    """Linear layer: lr 1e-3; fine-tuning the whole network: lr 1e-4 (a pretrained encoder must not be
    knocked out of its minimum by the freshly initialised layer's large gradients)."""
    base = FinetuneConfig(lr=1e-3 if freeze else 1e-4)
    return FinetuneConfig(**{**asdict(base), **{k: v for k, v in overrides.items() if v is not None}}).validate()


class _Images(Dataset):
    def __init__(self, paths: Sequence[Path], y: np.ndarray, transform) -> None:
        self.paths, self.y, self.transform = list(paths), torch.as_tensor(y, dtype=torch.float32), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.transform(to_tensor(load_image(self.paths[i]))), self.y[i]


def _train_transform(augment: str, size: int, mean: float, std: float):
    if augment == "none":
        return eval_transform(size, mean, std)
    if augment == "mild":
        return train_transform(size, crop_scale=(0.8, 1.0), rotation=10.0, translate=0.05, brightness=(0.8, 1.2),
                               contrast=(0.8, 1.2), blur_sigma=(0.1, 0.5), mean=mean, std=std)
    return train_transform(size, mean=mean, std=std)


class LinearClassifier(L.LightningModule):
    """encoder -> linear layer; ``multiclass`` uses softmax cross-entropy, else one sigmoid per label."""

    def __init__(self, encoder: nn.Module, num_features: int, n_outputs: int, multiclass: bool, freeze: bool,
                 cfg: FinetuneConfig) -> None:
        super().__init__()
        self.encoder, self.freeze, self.multiclass, self.cfg = encoder, freeze, multiclass, cfg
        self.head = nn.Linear(num_features, n_outputs)
        if freeze:
            self.encoder.requires_grad_(False)
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze:
            self.encoder.eval()  # fixed batch-norm statistics: a frozen encoder is not re-estimated
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.freeze and self.training:  # no activations kept for a frozen encoder (saliency runs in eval mode)
            with torch.no_grad():
                features = self.encoder(images)
            return self.head(features.float())
        return self.head(self.encoder(images))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(dim=1) if self.multiclass else logits.sigmoid()

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.multiclass:
            return nn.functional.cross_entropy(logits, y.argmax(dim=1))
        return nn.functional.binary_cross_entropy_with_logits(logits, y)

    def training_step(self, batch, _):
        loss = self._loss(self(batch[0]), batch[1])
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch[1]))
        return loss

    def validation_step(self, batch, _):
        logits = self(batch[0])
        self.log("val_loss", self._loss(logits, batch[1]), batch_size=len(batch[1]))
        self._val.append((self.probabilities(logits.float()).cpu(), batch[1].cpu()))

    def on_validation_epoch_end(self) -> None:
        scores = torch.cat([s for s, _ in self._val]).numpy()
        y = torch.cat([t for _, t in self._val]).numpy()
        self._val.clear()
        auroc = macro_auroc(y, scores)
        # undefined (one class in validation): fall back to minus the loss so selection still works
        self.log("val_auroc", torch.tensor(auroc if np.isfinite(auroc) else -1.0), prog_bar=True)

    def configure_optimizers(self):
        params = self.head.parameters() if self.freeze else self.parameters()
        opt = torch.optim.Adam(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=max(1, self.cfg.patience // 2))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": plateau, "monitor": "val_auroc"}}


@torch.no_grad()
def predict(model: LinearClassifier, loader: DataLoader) -> np.ndarray:
    model.eval()
    return torch.cat([model.probabilities(model(x).float()) for x, _ in loader]).numpy()


def train_classifier(encoder, train_paths: Sequence[Path], train_y: np.ndarray, val_paths: Sequence[Path],
                     val_y: np.ndarray, test_paths: Sequence[Path], test_y: np.ndarray, label_names: Sequence[str],
                     multiclass: bool, freeze: bool, cfg: FinetuneConfig, seed: int = 0, progress: bool = True,
                     workdir: str | Path | None = None, keep_model: bool = False) -> dict:
    """One run; returns test metrics, the best validation AUROC and epoch, and the test probabilities
    (``scores``); ``keep_model`` adds the trained :class:`LinearClassifier` (``model``, on the CPU)."""
    cfg.validate()
    L.seed_everything(seed, workers=True, verbose=False)
    module = copy.deepcopy(encoder.module)  # never modify the caller's encoder
    model = LinearClassifier(module, encoder.num_features, len(label_names), multiclass, freeze, cfg)
    tf_eval = eval_transform(encoder.size, encoder.mean, encoder.std)
    tf_train = _train_transform(cfg.augment, encoder.size, encoder.mean, encoder.std)
    train_set = _Images(train_paths, train_y, tf_train)
    epoch_samples = max(len(train_set), cfg.min_epoch_steps * cfg.batch_size)
    generator = torch.Generator().manual_seed(seed)
    sampler = RandomSampler(train_set, replacement=False, num_samples=epoch_samples, generator=generator)
    loader_kw = dict(batch_size=cfg.batch_size, num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0)
    train_loader = DataLoader(train_set, sampler=sampler, drop_last=len(train_set) > cfg.batch_size, **loader_kw)
    val_loader = DataLoader(_Images(val_paths, val_y, tf_eval), shuffle=False, **loader_kw)
    test_loader = DataLoader(_Images(test_paths, test_y, tf_eval), shuffle=False, **loader_kw)

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        best = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp, monitor="val_auroc", mode="max", save_top_k=1,
                                                   save_weights_only=True, enable_version_counter=False)
        stop = L.pytorch.callbacks.EarlyStopping(monitor="val_auroc", mode="max", patience=cfg.patience)
        trainer = L.Trainer(accelerator="auto", devices=1, precision=cfg.precision, max_epochs=cfg.max_epochs,
                            callbacks=[best, stop], logger=False, enable_progress_bar=progress,
                            enable_model_summary=False, deterministic=True, num_sanity_val_steps=0)
        model.train()  # Lightning keeps the modules' modes; the encoder arrives in eval mode
        with warnings.catch_warnings():  # a frozen encoder is in eval mode on purpose
            warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
            trainer.fit(model, train_loader, val_loader)
        state = torch.load(best.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
        model.load_state_dict(state)
        epochs_run = trainer.current_epoch
    model = model.cpu()
    scores = predict(model, test_loader)
    test = classification_metrics(test_y, scores, label_names)
    if multiclass:
        test["multiclass"] = multiclass_metrics(test_y, scores)
    out = {"best_val_macro_auroc": float(best.best_model_score), "epochs": int(epochs_run),
           "n_train": len(train_set), "test": test, "config": asdict(cfg), "scores": scores}
    if keep_model:
        out["model"] = model.eval()
    return out

