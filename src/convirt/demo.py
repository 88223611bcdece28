"""The embedded demo: synthetic radiographs -> ConVIRT pretraining -> evaluation against a fair
random baseline -> ``report.md`` + ``results.json`` + plots + the model.

Everything runs offline on a 2-core CPU. Compute is matched the way the paper's comparison needs:
both encoders are evaluated on the same frozen-feature protocol, the random encoder with its
batch-norm statistics recalibrated on the training images.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from convirt.atomic import atomic_write_text
from convirt.config import load_config
from convirt.data.manifest import read_manifest, resolve_image_paths
from convirt.data.synthetic import FINDINGS, generate
from convirt.data.transforms import eval_transform
from convirt.evaluation.embed import embed_images, recalibrate_batchnorm
from convirt.evaluation.plots import plot_label_fraction_curves
from convirt.evaluation.probe import linear_probe_over_fractions
from convirt.evaluation.retrieval import text_to_image_precision
from convirt.evaluation.splits import label_fraction_subsets
from convirt.models.image import ImageEncoder


@dataclass(frozen=True)
class DemoSize:
    n_images: int
    max_steps: int
    batch_size: int
    fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    seeds: tuple[int, ...] = (0, 1, 2)


SIZES = {
    "default": DemoSize(n_images=3000, max_steps=600, batch_size=64),
    "small": DemoSize(n_images=800, max_steps=60, batch_size=32, fractions=(0.1, 1.0), seeds=(0, 1)),
}

# One query sentence per finding for text-to-image retrieval (never seen verbatim in training).
QUERIES = {
    "Atelectasis": "Atelectasis is present.",
    "Cardiomegaly": "The heart is enlarged.",
    "Consolidation": "There is consolidation.",
    "Edema": "There is pulmonary edema.",
    "Pleural Effusion": "There is a pleural effusion.",
    "Pneumonia": "Findings consistent with pneumonia.",
    "Pneumothorax": "There is a pneumothorax.",
    "Fracture": "There is a rib fracture.",
}


def run_demo(out: str | Path, size: str = "default", seed: int = 0, progress: bool = True) -> dict:
    out = Path(out)
    spec = SIZES[size]
    timings: dict[str, float] = {}
    t0 = time.time()
    manifest = generate(out / "data", n=spec.n_images, seed=seed, progress=progress)
    timings["generate_s"] = time.time() - t0

    cfg = load_config("demo", [f"data.train={manifest}", f"trainer.out_dir={out / 'run'}",
                               f"trainer.max_steps={spec.max_steps}", f"data.batch_size={spec.batch_size}",
                               f"trainer.seed={seed}", f"trainer.progress_bar={str(progress).lower()}"])
    from convirt.training.run import pretrain

    t0 = time.time()
    summary = pretrain(cfg)
    timings["pretrain_s"] = time.time() - t0

    import convirt

    model = convirt.load(out / "run" / "model")
    df = read_manifest(manifest)
    labels = [f for f in FINDINGS if f != "No Finding"]
    paths = [resolve_image_paths(p, manifest.parent)[0] for p in df["image"]]
    transform = eval_transform(size=cfg.image.size, mean=cfg.image.mean, std=cfg.image.std)
    splits = {s: np.flatnonzero(df["split"].to_numpy() == s) for s in ("train", "valid", "test")}
    y = {s: df.loc[idx, labels].to_numpy(dtype=int) for s, idx in splits.items()}
    t0 = time.time()

    def features(encode, desc):
        return {s: embed_images(encode, [paths[i] for i in idx], transform, progress=progress, desc=f"{desc} {s}")
                for s, idx in splits.items()}

    encoders = {"ConVIRT": lambda b: model.image_encoder(b)}
    random_encoder = ImageEncoder(cfg.image.model, pretrained=False, grayscale=cfg.image.grayscale)
    torch.manual_seed(seed)
    random_encoder = ImageEncoder(cfg.image.model, pretrained=False, grayscale=cfg.image.grayscale)
    recalibrate_batchnorm(random_encoder, [paths[i] for i in splits["train"]], transform, progress=progress)
    random_encoder.eval()
    encoders["Random init (BN recalibrated)"] = lambda b: random_encoder(b)
    train_df = df.iloc[splits["train"]].reset_index(drop=True)
    subsets = label_fraction_subsets(train_df, spec.fractions, spec.seeds, labels)
    probe = {}
    for name, encode in encoders.items():
        feats = features(encode, name)
        probe[name] = linear_probe_over_fractions(feats, y, subsets, labels)
    timings["evaluate_s"] = time.time() - t0

    test_idx = splits["test"]
    image_emb = model.encode_images(torch.stack([transform(_tensor(paths[i])) for i in test_idx]))
    text_emb = model.encode_text([QUERIES[c] for c in labels])
    retrieval = text_to_image_precision(text_emb.numpy(), np.eye(len(labels), dtype=int), image_emb.numpy(), y["test"], ks=(5, 10, 50))
    base_rate = {c: float(y["test"][:, j].mean()) for j, c in enumerate(labels)}
    results = {"size": asdict(spec), "seed": seed, "pretrain": summary, "linear_probe": probe,
               "text_to_image": retrieval, "base_rate": base_rate, "timings": timings}
    atomic_write_text(out / "results.json", json.dumps(results, indent=2, default=float))
    plot_label_fraction_curves({n: r["summary"] for n, r in probe.items()}, out / "label_fractions.png")
    atomic_write_text(out / "report.md", render_report(results))
    return results


def _tensor(path):
    from convirt.data.images import load_image, to_tensor

    return to_tensor(load_image(path))


def render_report(results: dict) -> str:
    return json.dumps(results, indent=2, default=float)
