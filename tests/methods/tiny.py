"""A tiny method (ResNet-18 at 32 px, 2-layer scratch BERT) and a fixed batch, for objective tests."""

from __future__ import annotations

from pathlib import Path

import torch

from convirt.config import load_config
from convirt.methods import METHODS
from convirt.models.dual_encoder import DualEncoder
from tests.helpers import SENTENCES, tiny_overrides

TEXTS = SENTENCES + ["Both lungs are hyperinflated.", "A catheter tip projects over the right atrium."]


def tiny_method(method: str, extra: tuple[str, ...] = (), seed: int = 0):
    cfg = load_config(overrides=tiny_overrides(Path("unused.csv"), Path("unused")) + [f"method={method}"] + list(extra))
    torch.manual_seed(seed)
    local_cfg = cfg.gloria if METHODS[method].local_features else None
    model = DualEncoder.build(cfg.image, cfg.text, cfg.projection, corpus=TEXTS * 4, local_cfg=local_cfg)
    return METHODS[method](cfg, model)


def tiny_batch(method, texts: list[str] = TEXTS, size: int = 32, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    tokens = method.model.tokenize(texts)
    return {"images": torch.randn(len(texts), 1, size, size, generator=generator), "input_ids": tokens["input_ids"],
            "attention_mask": tokens["attention_mask"], "rows": torch.arange(1, len(texts) + 1), "replaced": torch.tensor(0)}


def train_losses(method, batch: dict, steps: int = 30, lr: float = 1e-3, seed: int = 0) -> list[float]:
    """Adam steps on one fixed batch (overfitting it); the loss of each step."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=lr)
    method.train()
    losses = []
    for _ in range(steps):
        loss = method.compute_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses
