"""Image-text scores that use GLoRIA's local similarity as well as the global one (Huang et al. 2021, Sec. 3.4).

GLoRIA's released zero-shot and retrieval code scores an (image, text) pair by both similarities:
the global cosine and the local word-region agreement ``Z`` (:func:`convirt.losses.local.local_similarity`),
each standardised over the images (per text: zero mean, unit standard deviation), then averaged.
:func:`scores` does that for a GLoRIA model (``similarity="both"``, the default for such models), or
gives either part alone for ablations; models without local features have the global part only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from convirt.errors import ConfigError

SIMILARITIES = ("auto", "global", "local", "both")


def resolve(similarity: str, dual) -> str:
    """``auto`` -> ``both`` for models with local features, else ``global``; checks the request."""
    if similarity not in SIMILARITIES:
        raise ConfigError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    if similarity == "auto":
        return "both" if dual.has_local else "global"
    if similarity != "global" and not dual.has_local:
        raise ConfigError(f"similarity {similarity!r} needs a GLoRIA model (local features); this one has only the global "
                          "embedding: use --similarity global")
    return similarity


@torch.no_grad()
def image_regions(dual, paths: Sequence[str | Path], batch_size: int = 64, progress: bool = True) -> torch.Tensor:
    """Projected sub-region features ``(n_images, M, D)`` of image files (the model's eval transform)."""
    from convirt.evaluation.embed import _loader

    was_training = dual.training
    dual.eval()
    out = []
    try:
        for batch in tqdm(_loader(paths, dual.preprocess, batch_size, 0), desc="local image features",
                          disable=not progress, leave=False):
            _, regions = dual.local_features(batch.to(dual.device))
            out.append(regions.flatten(2).transpose(1, 2).float().cpu())
    finally:
        dual.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def text_words(dual, texts: Sequence[str], batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Word vectors ``(n_texts, W, H)`` (padded to the longest) and their mask ``(n_texts, W)``."""
    was_training = dual.training
    dual.eval()
    words, masks = [], []
    try:
        for start in range(0, len(texts), batch_size):
            tokens = dual.tokenize(list(texts[start : start + batch_size]))
            _, w, m = dual.word_features(tokens["input_ids"].to(dual.device), tokens["attention_mask"].to(dual.device))
            words.append(w.float().cpu())
            masks.append(m.cpu())
    finally:
        dual.train(was_training)
    width = max(w.shape[1] for w in words)
    words = [torch.nn.functional.pad(w, (0, 0, 0, width - w.shape[1])) for w in words]
    masks = [torch.nn.functional.pad(m, (0, width - m.shape[1])) for m in masks]
    return torch.cat(words), torch.cat(masks)


@torch.no_grad()
def local_scores(dual, regions: torch.Tensor, texts: Sequence[str], image_chunk: int = 64) -> np.ndarray:
    """``Z`` ``(n_images, n_texts)`` of every image against every text (chunks bound the memory)."""
    from convirt.losses.local import local_similarity

    words, mask = text_words(dual, texts)
    cfg = dual.local_cfg
    rows = [local_similarity(regions[s : s + image_chunk], words, mask, cfg.attention_scale, cfg.word_scale, chunk=32)
            for s in range(0, len(regions), image_chunk)]
    return torch.cat(rows).double().numpy()


def standardise(scores: np.ndarray) -> np.ndarray:
    """Per column (text): zero mean and unit standard deviation over the images (rows)."""
    std = scores.std(axis=0, keepdims=True)
    return (scores - scores.mean(axis=0, keepdims=True)) / np.where(std > 0, std, 1.0)


def scores(dual, image_emb: np.ndarray, regions: torch.Tensor | None, texts: Sequence[str], similarity: str = "auto"
           ) -> np.ndarray:
    """Image-text scores ``(n_images, n_texts)``: global cosine, local ``Z``, or GLoRIA's combination."""
    similarity = resolve(similarity, dual)
    img = image_emb / np.maximum(np.linalg.norm(image_emb, axis=1, keepdims=True), 1e-12)
    global_part = img.astype(np.float64) @ dual.encode_text(list(texts)).double().numpy().T
    if similarity == "global":
        return global_part
    if regions is None:
        raise ConfigError("local similarity needs the images' region features (image_regions)")
    local_part = local_scores(dual, regions, texts)
    if similarity == "local":
        return local_part
    return 0.5 * (standardise(global_part) + standardise(local_part))
