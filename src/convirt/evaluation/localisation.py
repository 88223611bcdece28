"""A localisation check that needs no radiologist: on the synthetic radiographs every finding's mask
is known, so "does the word point at the finding?" has an answer.

For each test image and each finding it shows, the report sentence that describes the finding is
read, and the finding's key word in it (e.g. *effusion*, *pneumothorax*) gets a map over the image
(:mod:`convirt.evaluation.attention`: GLoRIA's word attention, or Grad-CAM of the image-sentence
similarity for global-only models). Two numbers per model:

* **mass inside**: the fraction of the map's mass inside the finding's mask (chance: the mask's
  share of the image, reported as the ``uniform map`` row);
* **pointing game** (Zhang et al., ECCV 2016): the fraction of maps whose maximum lies inside the mask.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from convirt.errors import DataError
from convirt.evaluation.attention import for_display, mass_inside, pointing_hits, similarity_gradcam, word_attention
from convirt.evaluation.report import write_results

# words of the synthetic reports that name each finding (first match in the sentence is used)
KEY_WORDS = {
    "Atelectasis": ("atelectasis",), "Cardiomegaly": ("cardiomegaly", "enlarged", "enlargement"),
    "Consolidation": ("consolidation",), "Edema": ("edema",), "Pleural Effusion": ("effusion",),
    "Pneumonia": ("pneumonia", "opacities", "opacity"), "Pneumothorax": ("pneumothorax",), "Fracture": ("fracture",),
}
_NEGATION = re.compile(r"\b(no|without|normal)\b", re.IGNORECASE)


def finding_sentence(report: str, finding: str) -> str | None:
    """The first non-negated sentence of ``report`` naming ``finding`` (by its key words)."""
    for sentence in re.split(r"(?<=[.!?])\s+", re.sub(r"\b[A-Z]+:\s*", "", report)):
        low = sentence.lower()
        if any(re.search(rf"\b{w}\b", low) for w in KEY_WORDS[finding]) and not _NEGATION.search(sentence):
            return sentence.strip()
    return None


def _key_index(words: list[str], finding: str) -> int | None:
    for key in KEY_WORDS[finding]:
        if key in words:
            return words.index(key)
    return None


def _mask(root: Path, image: str, finding: str, size: int) -> np.ndarray:
    from torchvision.transforms import v2

    from convirt.data.synthetic import MASK_BITS

    bits = np.asarray(Image.open(root / "masks" / Path(image).name))
    mask = torch.from_numpy(((bits & MASK_BITS[finding]) > 0).astype(np.uint8))[None]
    resize = v2.Compose([v2.Resize(size, interpolation=v2.InterpolationMode.NEAREST), v2.CenterCrop(size)])
    return resize(mask)[0].numpy().astype(bool)


def collect_cases(root: str | Path, split: str = "test", max_cases: int | None = 200) -> list[dict]:
    """(image, finding, sentence) of every positive finding with a describing sentence, in manifest order."""
    from convirt.data.synthetic import LESIONS

    root = Path(root)
    if not (root / "masks").is_dir() or not (root / "manifest.csv").is_file():
        raise DataError(f"{root} is not a synthetic data set (manifest.csv and masks/ are written by `convirt data synth`)")
    frame = pd.read_csv(root / "manifest.csv", dtype={"image": str, "text": str, "split": str})
    frame = frame[frame["split"] == split]
    cases = []
    for _, row in frame.iterrows():
        for finding in LESIONS:
            if int(row.get(finding, 0)) == 1:
                sentence = finding_sentence(row["text"], finding)
                if sentence:
                    cases.append({"image": row["image"], "finding": finding, "sentence": sentence})
        if max_cases and len(cases) >= max_cases:
            break
    return cases[:max_cases] if max_cases else cases


def _map_of(dual, image: torch.Tensor, case: dict) -> np.ndarray | None:
    if dual.has_local:
        words, maps = word_attention(dual, image, case["sentence"])
        k = _key_index(words, case["finding"])
        return None if k is None else maps[k]
    return similarity_gradcam(dual, image, [case["sentence"]])[0]


def run_localisation(models: Mapping[str, object], root: str | Path, out: str | Path, split: str = "test",
                     max_cases: int | None = 200, examples: int = 6, progress: bool = True) -> dict:
    """Mass inside the mask and pointing-game hit rate of each model's finding-word maps."""
    from convirt.data.images import load_image, to_tensor

    root, out = Path(root), Path(out)
    cases = collect_cases(root, split, max_cases)
    if not cases:
        raise DataError(f"no {split} image of {root} has a finding with a describing sentence")
    results, shown = {}, {}
    for name, dual in models.items():
        size = dual.image_cfg.size
        mass, hits, per_finding, kept = [], [], {}, []
        for i, case in enumerate(tqdm(cases, desc=f"localisation: {name}", disable=not progress, leave=False)):
            image = dual.preprocess(to_tensor(load_image(root / case["image"])))[None]
            m = _map_of(dual, image, case)
            if m is None:
                continue
            mask = _mask(root, case["image"], case["finding"], size)
            if not mask.any():
                continue
            frac, hit = float(mass_inside(m[None], mask[None])[0]), bool(pointing_hits(m[None], mask[None])[0])
            mass.append(frac)
            hits.append(hit)
            per_finding.setdefault(case["finding"], []).append((frac, hit))
            if len(kept) < examples:
                kept.append((image[0, 0].numpy(), mask, m, case))
        results[name] = {
            "method": "GLoRIA word attention" if dual.has_local else "Grad-CAM of the image-sentence similarity",
            "n": len(mass), "mass_inside": float(np.mean(mass)) if mass else None,
            "pointing": float(np.mean(hits)) if hits else None,
            "per_finding": {f: {"n": len(v), "mass_inside": float(np.mean([a for a, _ in v])),
                                "pointing": float(np.mean([b for _, b in v]))} for f, v in sorted(per_finding.items())},
        }
        shown[name] = kept
    size = next(iter(models.values())).image_cfg.size
    area = [(c["finding"], float(_mask(root, c["image"], c["finding"], size).mean())) for c in cases]
    by_finding: dict[str, list[float]] = {}
    for finding, a in area:
        by_finding.setdefault(finding, []).append(a)
    results["uniform map (chance)"] = {
        "method": "the same mass everywhere: the mask's share of the image", "n": len(area),
        "mass_inside": float(np.mean([a for _, a in area])) if area else None, "pointing": None,
        "per_finding": {f: {"n": len(v), "mass_inside": float(np.mean(v)), "pointing": None} for f, v in sorted(by_finding.items())},
    }
    pictures = []
    if examples and shown:
        pictures.append(_figure(shown, out / "localisation_examples.png").name)
    doc = {"protocol": "localisation", "data": str(root), "split": split, "n_cases": len(cases),
           "key_words": {k: list(v) for k, v in KEY_WORDS.items()}, "models": results}
    return write_results(out, doc, render(doc, pictures))


def _figure(shown: Mapping[str, list], path: Path) -> Path:
    from matplotlib.figure import Figure

    from convirt.evaluation.plots import _save

    names = list(shown)
    rows = max(len(v) for v in shown.values())
    fig = Figure(figsize=(2.2 * (len(names) + 1), 2.3 * rows))
    axes = fig.subplots(rows, len(names) + 1, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r in range(rows):
        first = shown[names[0]][r] if r < len(shown[names[0]]) else None
        if first is not None:
            image, mask, _, case = first
            axes[r, 0].imshow(image, cmap="gray")
            axes[r, 0].contour(mask, levels=[0.5], colors="lime", linewidths=0.8)
            axes[r, 0].set_title(case["finding"], fontsize=7)
        for c, name in enumerate(names, start=1):
            if r < len(shown[name]):
                image, mask, m, _ = shown[name][r]
                axes[r, c].imshow(image, cmap="gray")
                axes[r, c].imshow(for_display(m[None])[0], cmap="jet", alpha=0.45, vmin=0, vmax=1)
                axes[r, c].contour(mask, levels=[0.5], colors="lime", linewidths=0.8)
                if r == 0:
                    axes[r, c].set_title(name, fontsize=7)
    fig.suptitle("finding-word maps; green: the finding's true mask", fontsize=8)
    return _save(fig, path)


def render(doc: dict, pictures: list[str]) -> str:
    lines = ["# Localisation check (synthetic masks)", "",
             f"{doc['n_cases']} (image, finding) cases from the `{doc['split']}` split of `{Path(doc['data']).name}`. "
             "Mass inside: the share of the finding word's map inside the finding's mask; pointing: the map's "
             "maximum inside the mask.", "", "| model | maps | cases | mass inside | pointing game |", "|---|---|---|---|---|"]
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    for name, m in doc["models"].items():
        lines.append(f"| {name} | {m['method']} | {m['n']} | {fmt(m['mass_inside'])} | {fmt(m['pointing'])} |")
    findings = sorted({f for m in doc["models"].values() for f in m["per_finding"]})
    if findings:
        lines += ["", "Mass inside, per finding:", "", "| model | " + " | ".join(findings) + " |",
                  "|---|" + "---|" * len(findings)]
        for name, m in doc["models"].items():
            lines.append(f"| {name} | " + " | ".join(fmt(m["per_finding"].get(f, {}).get("mass_inside")) for f in findings) + " |")
    lines += [""] + [f"![{p}]({p})" for p in pictures]
    return "\n".join(lines) + "\n"


def untrained_copy(dual, seed: int = 0):
    """The same architecture (and tokenizer) with fresh random weights: the "random encoder" reference."""
    from transformers import AutoModel

    from convirt.models.dual_encoder import DualEncoder
    from convirt.models.image import ImageEncoder
    from convirt.models.text import TextEncoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        image = ImageEncoder.from_config(dual.image_cfg, pretrained=False)
        hf = AutoModel.from_config(dual.text_encoder.model.config, add_pooling_layer=False)
        text = TextEncoder(hf, dual.text_cfg.pooling, dual.text_cfg.freeze_layers, dual.text_cfg.freeze_embeddings,
                           dual.text_cfg.unpad)
        copy = DualEncoder(dual.image_cfg, dual.text_cfg, dual.projection_cfg, image, text, dual.tokenizer, dual.local_cfg)
    copy.meta = {"method": f"untrained {dual.meta.get('method', 'model')}"}
    return copy.eval()

