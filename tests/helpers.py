"""Small on-disk fixtures shared by tests (no downloads, no shared data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

SENTENCES = [
    "There is a small left pleural effusion.", "The heart size is normal.", "No pneumothorax is seen.",
    "Mild cardiomegaly is present.", "The lungs are clear.", "There is right basilar atelectasis.",
]


def write_pair_manifest(root: Path, n_train: int = 16, n_valid: int = 8, size: int = 32, seed: int = 0) -> Path:
    """A manifest of random grayscale PNGs with two-sentence reports and a split column."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_train + n_valid):
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        a, b = rng.choice(len(SENTENCES), 2, replace=False)
        rows.append({"image": f"images/{i}.png", "text": f"FINDINGS: {SENTENCES[a]} {SENTENCES[b]}",
                     "patient_id": f"p{i}", "split": "train" if i < n_train else "valid"})
    path = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def tiny_overrides(manifest: Path, out: Path, max_steps: int = 4) -> list[str]:
    """A model small enough that a training step takes milliseconds on a CPU."""
    return [
        "image.model=resnet18", "image.pretrained=false", "image.size=32", "text.model=scratch",
        "text.freeze_layers=0", "text.max_length=16", "text.scratch.vocab_size=100", "text.scratch.hidden=32",
        "text.scratch.layers=2", "text.scratch.heads=2", "projection.dim=16", "data.batch_size=4",
        f"data.train={manifest}", f"trainer.out_dir={out}", f"trainer.max_steps={max_steps}",
        "trainer.checkpoint_every_n_steps=2", "trainer.progress_bar=false", "trainer.log_every_n_steps=1",
        "optim.lr=1e-3", "optim.scheduler=none", "optim.early_stopping_patience=null",
    ]


def write_labelled_manifest(root: Path, n: dict | None = None, size: int = 32, seed: int = 0) -> Path:
    """Labelled images with reports and a ``split`` column: ``bright`` (0/1) is a brighter image, ``kind`` a text class.

    The brightness gap makes the label learnable by any encoder, so protocol tests can check that
    a classifier learns without training anything big. Patients own two images each.
    """
    n = n or {"train": 40, "valid": 16, "test": 16}
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows, i = [], 0
    for split, count in n.items():
        for _ in range(count):
            bright = int(rng.integers(0, 2))
            level = 170 if bright else 70
            pixels = np.clip(rng.normal(level, 25, (size, size)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "images" / f"{i}.png")
            text = "FINDINGS: The lungs look bright." if bright else "FINDINGS: The lungs look dark. No effusion."
            rows.append({"image": f"images/{i}.png", "text": text, "patient_id": f"p{i // 2}", "split": split,
                         "bright": bright, "kind": ["light", "dark"][1 - bright] if i % 5 else "mid"})
            i += 1
    path = root / "labelled.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def tiny_dual_encoder(folder: Path, size: int = 32, local: bool = False, corpus: list[str] | None = None) -> Path:
    """A saved convirt model small enough to build in a second (random weights, scratch text tower);
    ``local``: with GLoRIA's local branch."""
    import torch

    from convirt.config import GloriaConfig, ImageConfig, ProjectionConfig, ScratchTextConfig, TextConfig
    from convirt.models.dual_encoder import DualEncoder

    torch.manual_seed(0)
    text = TextConfig(model="scratch", freeze_layers=0, max_length=16,
                      scratch=ScratchTextConfig(vocab_size=80, hidden=32, layers=1, heads=2))
    corpus = corpus or ["The lungs look bright.", "The lungs look dark. No effusion.", "lungs light dark mid"] * 10
    model = DualEncoder.build(ImageConfig(model="resnet18", pretrained=False, size=size), text, ProjectionConfig(dim=8),
                              corpus=corpus, local_cfg=GloriaConfig() if local else None)
    model.meta = {"method": "gloria" if local else "convirt"}
    return model.save(folder)


class SimulatedCrash(RuntimeError):
    pass


def crash_after(at: int):
    """A Lightning callback simulating a node that dies right after step ``at`` (its checkpoint written)."""
    import lightning as L

    class Crash(L.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            if trainer.global_step == at:
                raise SimulatedCrash(f"node died after step {at}")

    return Crash()
