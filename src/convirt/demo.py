"""The embedded demo: synthetic radiographs -> ConVIRT pretraining -> evaluation against a fair
random baseline -> ``report.md`` + ``results.json`` + plots + the model.

Everything runs offline on a 2-core CPU. Compute is matched the way the paper's comparison needs:
both encoders are evaluated on the same frozen-feature protocol, the random encoder with its
batch-norm statistics recalibrated on the training images.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from convirt.atomic import atomic_write_text
from convirt.config import load_config
from convirt.data.manifest import read_manifest, resolve_image_paths
from convirt.data.synthetic import FINDINGS, resolve_strengths, generate
from convirt.data.transforms import eval_transform
from convirt.evaluation.embed import embed_images, recalibrate_batchnorm
from convirt.evaluation.plots import plot_bar_precision, plot_label_fraction_curves
from convirt.evaluation.probe import linear_probe_over_fractions
from convirt.evaluation.retrieval import text_to_image_precision
from convirt.evaluation.splits import label_fraction_subsets
from convirt.models.image import ImageEncoder


@dataclass(frozen=True)
class DemoSize:
    n_images: int
    max_steps: int
    batch_size: int
    strength: float = 1.0  # synthetic finding visibility (convirt.data.synthetic.generate)
    fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    seeds: tuple[int, ...] = (0, 1, 2)


SIZES = {
    # strength 2: at 64 px the calibrated default (1) leaves rib fractures below the resolution
    # (supervised AUROC 0.53, docs/synthetic.md); the demo doubles every finding's visibility.
    "default": DemoSize(n_images=3000, max_steps=600, batch_size=64, strength=2.0),
    # the reduced run the test suite checks the demo's claim on (~3 min on 2 cores)
    "test": DemoSize(n_images=1500, max_steps=300, batch_size=64, strength=2.0, fractions=(1.0,), seeds=(0,)),
    "small": DemoSize(n_images=800, max_steps=60, batch_size=32, strength=2.0, fractions=(0.1, 1.0), seeds=(0, 1)),
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


# The negated statement of each query. Report-trained text towers see "No pleural effusion." in
# most reports, so a bare positive query also matches images *without* the finding; ranking by
# similarity to the positive minus similarity to the negated statement (as zero-shot classifiers
# with positive/negative prompts do) removes that shared part.
NEGATED = {
    "Atelectasis": "No atelectasis.",
    "Cardiomegaly": "The heart size is normal.",
    "Consolidation": "No focal consolidation.",
    "Edema": "No pulmonary edema.",
    "Pleural Effusion": "No pleural effusion.",
    "Pneumonia": "No pneumonia.",
    "Pneumothorax": "No pneumothorax.",
    "Fracture": "No rib fracture.",
}


def run_demo(out: str | Path, size: str = "default", seed: int = 0, progress: bool = True,
             overrides: list[str] | None = None, strength: float | None = None, max_steps: int | None = None) -> dict:
    """Generate, pretrain, evaluate; write ``report.md``, ``results.json``, plots and ``run/model``."""
    out = Path(out)
    spec = SIZES[size]
    if strength is not None or max_steps is not None:
        spec = replace(spec, strength=spec.strength if strength is None else strength,
                       max_steps=spec.max_steps if max_steps is None else max_steps)
    timings: dict[str, float] = {}
    t0 = time.time()
    manifest = generate_once(out / "data", spec, seed, progress)
    timings["generate_s"] = round(time.time() - t0, 1)

    cfg = load_config("demo", [f"data.train={manifest}", f"trainer.out_dir={out / 'run'}",
                               f"trainer.max_steps={spec.max_steps}", f"data.batch_size={spec.batch_size}",
                               f"trainer.seed={seed}", f"trainer.progress_bar={str(progress).lower()}", *(overrides or [])])
    from convirt.training.run import pretrain

    t0 = time.time()
    summary = pretrain(cfg)
    timings["pretrain_s"] = round(time.time() - t0, 1)

    import convirt

    t0 = time.time()
    model = convirt.load(out / "run" / "model")
    results = evaluate_on_synthetic(model, manifest, cfg, spec, seed, progress)
    timings["evaluate_s"] = round(time.time() - t0, 1)
    results.update({"size": size, "spec": asdict(spec), "seed": seed, "pretrain": summary, "timings": timings,
                    "images_seen": summary["global_step"] * spec.batch_size})
    results["verdict"] = verdict(results["linear_probe"])
    results["headline"] = headline(results)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2, default=float))
    plot_label_fraction_curves({n: r["summary"] for n, r in results["linear_probe"].items()}, out / "label_fractions.png",
                               title="Linear probe on frozen features (synthetic radiographs)")
    plot_bar_precision({"ConVIRT, positive query": results["text_to_image"]["positive"],
                        "ConVIRT, positive minus negated": results["text_to_image"]["positive_minus_negated"]},
                       out / "text_to_image.png", title="Text-to-image Precision@K")
    atomic_write_text(out / "report.md", render_report(results))
    return results


def generate_once(folder: Path, spec: DemoSize, seed: int, progress: bool) -> Path:
    """The synthetic set, re-used when ``folder`` already holds the same one (re-running a demo)."""
    meta_path = folder / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if (meta["n"], meta["seed"], meta["strength"]) == (spec.n_images, seed, resolve_strengths(spec.strength)):
            return folder / "manifest.csv"
    return generate(folder, n=spec.n_images, seed=seed, strength=spec.strength, progress=progress)


def evaluate_on_synthetic(model, manifest: Path, cfg, spec: DemoSize, seed: int, progress: bool) -> dict:
    """Linear probes (ConVIRT vs fair random init) at each label fraction, and text-to-image P@K."""
    df = read_manifest(manifest)
    labels = [f for f in FINDINGS if f != "No Finding"]
    paths = [resolve_image_paths(p, manifest.parent)[0] for p in df["image"]]
    transform = eval_transform(size=cfg.image.size, mean=cfg.image.mean, std=cfg.image.std)
    splits = {s: np.flatnonzero(df["split"].to_numpy() == s) for s in ("train", "valid", "test")}
    y = {s: df.loc[idx, labels].to_numpy(dtype=int) for s, idx in splits.items()}
    train_paths = [paths[i] for i in splits["train"]]

    torch.manual_seed(seed)
    random_encoder = ImageEncoder(cfg.image.model, pretrained=False, grayscale=cfg.image.grayscale)
    recalibrate_batchnorm(random_encoder, train_paths, transform, progress=progress)
    encoders = {"ConVIRT": model.image_encoder.eval(), "Random init (BN recalibrated)": random_encoder.eval()}
    subsets = label_fraction_subsets(df.iloc[splits["train"]].reset_index(drop=True), spec.fractions, spec.seeds, labels)
    features, probe = {}, {}
    for name, encoder in encoders.items():
        features[name] = {s: embed_images(encoder, [paths[i] for i in idx], transform, progress=progress, desc=f"{name}: {s}")
                          for s, idx in splits.items()}
        probe[name] = linear_probe_over_fractions(features[name], y, subsets, labels)

    # text-to-image retrieval in the shared space: one query sentence per finding, test images as candidates
    image_emb = model.image_head(torch.from_numpy(features["ConVIRT"]["test"])).detach()
    image_emb = torch.nn.functional.normalize(image_emb, dim=-1).numpy()
    positive = model.encode_text([QUERIES[c] for c in labels])
    negated = model.encode_text([NEGATED[c] for c in labels])
    # for unit-norm images, cosine ranking by (positive - negated) = ranking by sim(pos) - sim(neg)
    retrieval = {name: text_to_image_precision(q.numpy(), np.arange(len(labels)), image_emb, y["test"], ks=(5, 10, 50),
                                               category_names=labels)
                 for name, q in (("positive", positive), ("positive_minus_negated", positive - negated))}
    return {"labels": labels, "n_images": {s: int(len(i)) for s, i in splits.items()}, "linear_probe": probe,
            "text_to_image": retrieval, "queries": QUERIES, "negated_queries": NEGATED,
            "base_rate": {c: float(y["test"][:, j].mean()) for j, c in enumerate(labels)}}


CONVIRT, RANDOM = "ConVIRT", "Random init (BN recalibrated)"


def verdict(probe: dict) -> dict:
    """Per label fraction: is ConVIRT ahead by more than the spread (std) over seeds of either method?"""
    out = {}
    for key, ours in probe[CONVIRT]["summary"].items():
        base = probe[RANDOM]["summary"][key]
        a, b = ours["macro_auroc"], base["macro_auroc"]
        spread = max(a["std"] or 0.0, b["std"] or 0.0)
        out[key] = {"convirt": a["mean"], "random": b["mean"], "gain": a["mean"] - b["mean"], "spread": spread,
                    "ahead": bool(a["mean"] - b["mean"] > spread)}
    return out


def headline(results: dict) -> str:
    parts = [f"{float(k):.0%} labels: ConVIRT {v['convirt']:.3f} vs random {v['random']:.3f} "
             f"({'ahead' if v['ahead'] else 'NOT ahead'}, gain {v['gain']:+.3f}, spread {v['spread']:.3f})"
             for k, v in results["verdict"].items()]
    return "Linear-probe macro AUROC -- " + "; ".join(parts)


def _pm(stat: dict) -> str:
    if stat["mean"] is None:
        return "n/a"
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}" if stat["std"] is not None else f"{stat['mean']:.3f}"


def _loss_line(results: dict) -> str:
    chance, final = np.log(results["spec"]["batch_size"]), results["pretrain"]["metrics"].get("val/loss", float("nan"))
    line = f"Contrastive loss: chance level ln({results['spec']['batch_size']}) = {chance:.3f}, final validation loss {final:.3f}."
    if not final < chance - 0.05:
        line += " That is still chance level: the image and text spaces are barely aligned, whatever the probe shows."
    return line


def render_report(results: dict) -> str:
    """The human-readable report: what was run, the tables, the verdict, the pictures."""
    probe, labels = results["linear_probe"], results["labels"]
    fractions = list(probe[CONVIRT]["summary"])
    t, p = results["timings"], results["pretrain"]
    lines = [
        "# convirt demo report", "",
        f"Synthetic chest radiographs (seed {results['seed']}, {sum(results['n_images'].values())} images: "
        f"{results['n_images']['train']} train / {results['n_images']['valid']} valid / {results['n_images']['test']} test). "
        f"ConVIRT pretrained for {p['global_step']} steps ({results['images_seen']} image-report pairs seen, "
        f"final validation loss {p['metrics'].get('val/loss', float('nan')):.3f}). "
        f"Time: generate {t['generate_s']} s, pretrain {t['pretrain_s']} s, evaluate {t['evaluate_s']} s.", "",
        f"**{results['headline']}**", "",
        _loss_line(results), "",
        "## Linear probe on frozen features: macro AUROC on the test split (mean ± std over seeds)", "",
        "| encoder | " + " | ".join(f"{float(f):.0%} labels" for f in fractions) + " |",
        "|---|" + "---|" * len(fractions),
    ]
    for name, res in probe.items():
        lines.append(f"| {name} | " + " | ".join(_pm(res["summary"][f]["macro_auroc"]) for f in fractions) + " |")
    full = fractions[-1]
    lines += ["", f"Per finding at {float(full):.0%} labels (AUROC):", "",
              "| finding | ConVIRT | random init |", "|---|---|---|"]
    for c in labels:
        lines.append(f"| {c} | {_pm(probe[CONVIRT]['summary'][full]['per_label_auroc'][c])} | "
                     f"{_pm(probe[RANDOM]['summary'][full]['per_label_auroc'][c])} |")
    r = results["text_to_image"]["positive_minus_negated"]
    plain = results["text_to_image"]["positive"]
    ks = r["ks"]
    lines += ["", "## Text-to-image retrieval (ConVIRT), Precision@K on test images", "",
              "Ranked by similarity to the query minus similarity to its negation (e.g. 'No pleural effusion.').", "",
              "| query | " + " | ".join(f"P@{k}" for k in ks) + " | base rate |", "|---|" + "---|" * (len(ks) + 1)]
    for c in labels:
        pc = r["per_category"][c]
        lines.append(f"| {results['queries'][c]} | " + " | ".join(f"{pc[f'P@{k}']:.2f}" for k in ks)
                     + f" | {results['base_rate'][c]:.2f} |")
    mean_base = float(np.mean(list(results["base_rate"].values())))
    lines += ["| **mean** | " + " | ".join(f"**{r['mean'][f'P@{k}']:.2f}**" for k in ks) + f" | {mean_base:.2f} |",
              "| mean, positive query alone | " + " | ".join(f"{plain['mean'][f'P@{k}']:.2f}" for k in ks) + f" | {mean_base:.2f} |",
              "",
              "![label fractions](label_fractions.png)", "", "![retrieval](text_to_image.png)", "",
              "## How to read this", "",
              "- Both encoders are frozen; a logistic regression per finding (L2 strength chosen on the validation "
              "split) is trained on 1%, 10% or 100% of the training labels, drawn per seed, grouped by patient.",
              "- The random encoder's batch-norm statistics are re-estimated on the training images, so it is not "
              "handicapped by statistics that do not match radiographs.",
              "- 'Ahead' means the mean gain exceeds the larger standard deviation over seeds of the two encoders.",
              "- Base rate = the P@K a random ranking would get (the finding's prevalence in the test images).", ""]
    return "\n".join(lines)
