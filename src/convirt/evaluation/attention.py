"""Where in the image does a word point? Word attention maps (GLoRIA) and similarity Grad-CAM (any model).

* A GLoRIA model (``DualEncoder.has_local``) answers directly: the attention of each word of the
  text over the image sub-regions (GLoRIA Fig. 4), upsampled bilinearly to the input size.
* A model with only a global embedding (ConVIRT, CLIP) answers through Grad-CAM of the cosine
  similarity between the image embedding and the text's embedding (each word's, or the phrase's),
  at the last feature stage: the usual way to ask a global model "where".

Maps are returned as probability maps over pixels (each sums to 1), the form in which "how much
of the attention falls inside the finding" is a fraction; :func:`for_display` scales them to [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convirt.errors import ConfigError
from convirt.models.local import word_region_attention


def _as_distribution(maps: torch.Tensor) -> np.ndarray:
    maps = maps.float().clamp(min=0)
    total = maps.flatten(1).sum(dim=1).clamp(min=1e-12)
    return (maps / total[:, None, None]).cpu().numpy()


def _upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


@torch.no_grad()
def word_attention(dual, image: torch.Tensor, text: str) -> tuple[list[str], np.ndarray]:
    """(the words of ``text``, their attention maps ``(n_words, H, W)``) for one preprocessed image
    ``(1, 1, H, W)``; GLoRIA models only."""
    was_training = dual.training
    dual.eval()
    try:
        image = image.to(dual.device)
        _, regions = dual.local_features(image)  # (1, D, h, w)
        tokens = dual.tokenize([text])
        ids, mask = tokens["input_ids"].to(dual.device), tokens["attention_mask"].to(dual.device)
        _, words, word_mask = dual.word_features(ids, mask)
        names = dual.word_merger.words(ids, mask)[0]
    finally:
        dual.train(was_training)
    if not names:
        raise ConfigError(f"the text has no words to explain (only punctuation or special tokens): {text!r}")
    h, w = regions.shape[-2:]
    attn = word_region_attention(words[0, : len(names)], regions[0].flatten(1).T, dual.local_cfg.attention_scale)
    maps = _upsample(attn.reshape(len(names), h, w), tuple(image.shape[-2:]))
    return names, _as_distribution(maps)


class _SimilarityToTexts(nn.Module):
    """images -> cosine similarity to fixed text embeddings (one "class" per text), for Grad-CAM."""

    def __init__(self, dual, text_emb: torch.Tensor) -> None:
        super().__init__()
        self.image_encoder, self.image_head = dual.image_encoder, dual.image_head
        self.register_buffer("text_emb", F.normalize(text_emb.float(), dim=-1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_head(self.image_encoder(images)).float(), dim=-1) @ self.text_emb.T


def similarity_gradcam(dual, image: torch.Tensor, texts: Sequence[str]) -> np.ndarray:
    """Grad-CAM maps ``(len(texts), H, W)`` of the image-text similarity of each text (any model
    with a text tower), at the image backbone's last feature stage."""
    from convirt.evaluation.saliency import grad_cam

    model = _SimilarityToTexts(dual, dual.encode_text(list(texts))).to(dual.device)
    maps = [grad_cam(model, image, k) for k in range(len(texts))]
    return _as_distribution(torch.from_numpy(np.concatenate(maps)))


def explain(dual, image: torch.Tensor, text: str, phrases: Sequence[str] = ()) -> dict:
    """Maps for each word of ``text`` and for each phrase: ``{"method", "labels", "maps"}``.

    GLoRIA: word attention in the context of ``text``; a phrase's map is the mean of its words'
    maps (its words must occur in ``text``, else the phrase is read on its own). Other models:
    similarity Grad-CAM of each word and each phrase on its own.
    """
    if dual.has_local:
        words, maps = word_attention(dual, image, text)
        labels, out = list(words), list(maps)
        for phrase in phrases:
            wanted = _phrase_words(phrase, dual)
            if wanted and all(w in words for w in wanted):
                phrase_maps = maps[[i for i, w in enumerate(words) if w in wanted]]
            else:  # not in the text: the phrase read on its own
                phrase_maps = word_attention(dual, image, phrase)[1]
            mean = phrase_maps.mean(axis=0)
            labels.append(phrase)
            out.append(mean / mean.sum())
        return {"method": "GLoRIA word attention", "labels": labels, "maps": np.stack(out)}
    words = _split_words(dual, text)
    labels = words + list(phrases)
    return {"method": "Grad-CAM of the image-text similarity", "labels": labels,
            "maps": similarity_gradcam(dual, image, labels)}


def _split_words(dual, text: str) -> list[str]:
    from convirt.models.local import WordMerger

    tokens = dual.tokenize([text])
    words = WordMerger(dual.tokenizer).words(tokens["input_ids"], tokens["attention_mask"])[0]
    if not words:
        raise ConfigError(f"the text has no words to explain (only punctuation or special tokens): {text!r}")
    return words


def _phrase_words(phrase: str, dual) -> list[str]:
    tokens = dual.tokenize([phrase])
    return dual.word_merger.words(tokens["input_ids"], tokens["attention_mask"])[0]


def for_display(maps: np.ndarray) -> np.ndarray:
    """Each map divided by its maximum: [0, 1] for overlays."""
    peak = maps.reshape(len(maps), -1).max(axis=1)
    return np.divide(maps, peak[:, None, None], out=np.zeros_like(maps), where=peak[:, None, None] > 0)


def mass_inside(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Fraction of each map's mass inside its mask (``maps`` sum to 1; masks boolean, same shape)."""
    return (maps * masks).reshape(len(maps), -1).sum(axis=1)


def pointing_hits(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Pointing game (Zhang et al., 2018): is each map's maximum inside its mask?"""
    flat = maps.reshape(len(maps), -1)
    return masks.reshape(len(masks), -1)[np.arange(len(maps)), flat.argmax(axis=1)]
