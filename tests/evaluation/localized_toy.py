"""A toy segmentation / detection manifest: bright rectangles on noise, learnable in a few steps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


def write_toy_localized(root: Path, n: dict | None = None, size: int = 32, seed: int = 0, p_lesion: float = 0.7) -> Path:
    """Images with one bright rectangle (p_lesion) or none; ``mask`` PNG (0/255, blank when none) and
    ``boxes`` JSON [[x, y, w, h]] as the SIIM / RSNA adapters write them; ``lesion`` 0/1; patients of 2 images."""
    n = n or {"train": 32, "valid": 12, "test": 12}
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    rows, i = [], 0
    for split, count in n.items():
        for _ in range(count):
            pixels = rng.normal(60, 12, (size, size))
            mask = np.zeros((size, size), bool)
            boxes = []
            if rng.random() < p_lesion:
                w, h = (int(v) for v in rng.integers(size // 4, size // 2, 2))
                x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
                mask[y:y + h, x:x + w] = True
                boxes.append([x, y, w, h])
            pixels[mask] += 120
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / "images" / f"{i}.png")
            cell = ""
            if mask.any():
                cell = f"masks/{i}.png"
                Image.fromarray(mask.astype(np.uint8) * 255).save(root / cell)
            rows.append({"image": f"images/{i}.png", "patient_id": f"p{i // 2}", "split": split,
                         "lesion": int(mask.any()), "mask": cell, "boxes": json.dumps(boxes)})
            i += 1
    path = root / "localized.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path
