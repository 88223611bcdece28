"""The paper's classification protocols over label fractions, for several encoders on the same subsets.

Each protocol function takes loaded encoders and a :class:`LabelledData`, writes into ``out``:

* ``subsets.json`` — the label-fraction training subsets (drawn once, or read from ``--subsets``),
  with checksums, so any other method can be scored on exactly the same images;
* ``results.json`` — every number of every seed, the settings, the models' weight fingerprints and
  the manifest's sha256; ``results.md`` — the human table; and the pictures.

and returns the ``results.json`` document.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from convirt.errors import ConfigError
from convirt.evaluation.cache import EmbeddingCache, default_cache_dir
from convirt.evaluation.embed import recalibrate_batchnorm
from convirt.evaluation.encoders import Encoder
from convirt.evaluation.finetune import FinetuneConfig, train_classifier
from convirt.evaluation.labelled import LabelledData
from convirt.evaluation.probe import DEFAULT_CS, linear_probe_over_fractions, summarize_runs
from convirt.evaluation.report import render_classification, write_results
from convirt.evaluation.splits import label_fraction_subsets, load_subsets, save_subsets, subsets_checksum


@dataclass
class Settings:
    """What every protocol shares: label fractions, seeds, batching, caching, bootstrap and progress."""

    fractions: Sequence[float] = (0.01, 0.1, 1.0)
    seeds: Sequence[int] = (0, 1, 2)
    batch_size: int = 64
    num_workers: int = 0
    n_boot: int = 500
    cache_dir: str | Path | None = field(default_factory=default_cache_dir)
    subsets_file: str | Path | None = None
    tsne: bool = True
    saliency: int = 8  # Grad-CAM pictures of the trained classifiers (0: none)
    progress: bool = True

    def validate(self) -> "Settings":
        if not self.fractions or any(not 0 < float(f) <= 1 for f in self.fractions):
            raise ConfigError(f"label fractions must be in (0, 1], got {list(self.fractions)}")
        if not self.seeds:
            raise ConfigError("give at least one seed")
        if self.batch_size < 1 or self.n_boot < 0 or self.num_workers < 0:
            raise ConfigError("batch size must be >= 1, n_boot and num_workers >= 0")
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(fractions=[float(f) for f in self.fractions], seeds=[int(s) for s in self.seeds],
                 cache_dir=None if self.cache_dir is None else str(self.cache_dir),
                 subsets_file=None if self.subsets_file is None else str(self.subsets_file))
        return d


def pinned_subsets(data: LabelledData, settings: Settings, out: Path) -> tuple[dict, dict]:
    """Draw (or load) the training subsets and save them to ``out/subsets.json``."""
    train = data.train_frame()
    if settings.subsets_file:
        subsets = load_subsets(settings.subsets_file, row_ids=list(train["image"]))
        wanted = {(float(f), int(s)) for f in settings.fractions for s in settings.seeds}
        missing = sorted(wanted - set(subsets))
        if missing:
            raise ConfigError(f"{settings.subsets_file} has no subset for (fraction, seed) {missing}; "
                              "use the fractions and seeds it was drawn with")
        subsets = {k: subsets[k] for k in sorted(wanted)}
    else:
        group = "patient_id" if "patient_id" in train.columns else None
        subsets = label_fraction_subsets(train, settings.fractions, settings.seeds, data.label_names, group_column=group)
    save_subsets(subsets, out / "subsets.json", row_ids=list(train["image"]))
    return subsets, {"file": "subsets.json", "sha256": subsets_checksum(subsets),
                     "drawn_from": str(settings.subsets_file) if settings.subsets_file else "this run",
                     "grouped_by": "patient_id" if "patient_id" in train.columns else "row"}


def prepare(encoder: Encoder, data: LabelledData, settings: Settings) -> None:
    """Re-estimate a random encoder's batch-norm statistics on the training images (see encoders.py)."""
    if encoder.needs_bn_recalibration and not encoder.info.get("bn_recalibrated"):
        recalibrate_batchnorm(encoder.module, data.split_paths("train"), encoder.transform(), settings.batch_size,
                              settings.num_workers, settings.progress)
        encoder.module.eval()
        encoder.forget_fingerprint()
        encoder.info["bn_recalibrated"] = f"on the {len(data.splits['train'])} training images"


def features(encoder: Encoder, data: LabelledData, settings: Settings, cache: EmbeddingCache) -> dict[str, np.ndarray]:
    return {split: cache.get(encoder, data.split_paths(split), data.manifest_sha256, settings.batch_size,
                             settings.num_workers, settings.progress, f"{encoder.name}: {split}")
            for split in data.splits}


def model_record(encoder: Encoder) -> dict:
    return {"name": encoder.name, "spec": encoder.spec, "fingerprint": encoder.fingerprint(), "image_size": encoder.size,
            "num_features": encoder.num_features, **{k: v for k, v in encoder.info.items() if k != "meta"}}


def _category_per_row(y: np.ndarray) -> tuple[np.ndarray, list[str] | None]:
    """A colour per point for t-SNE: the single positive label, or -1 (none / several)."""
    if y.shape[1] == 1:
        return y[:, 0].astype(np.int64), None
    return np.where(y.sum(axis=1) == 1, y.argmax(axis=1), -1), None


def run_linear(encoders: Sequence[Encoder], data: LabelledData, out: str | Path, settings: Settings,
               Cs: Sequence[float] = DEFAULT_CS) -> dict:
    """Protocol 1a: logistic regression on cached frozen features, ``C`` chosen on validation."""
    out, settings = Path(out), settings.validate()
    subsets, subsets_info = pinned_subsets(data, settings, out)
    cache = EmbeddingCache(settings.cache_dir)
    y = {split: data.split_y(split) for split in data.splits}
    models, test_features = {}, {}
    for enc in encoders:
        prepare(enc, data, settings)
        f = features(enc, data, settings, cache)
        test_features[enc.name] = f["test"]
        result = linear_probe_over_fractions(f, y, subsets, data.label_names, Cs, n_boot=settings.n_boot,
                                             multiclass=data.task == "multiclass")
        models[enc.name] = {"model": model_record(enc), **result}
    doc = {"protocol": "linear", "variant": "logistic regression on frozen features (scikit-learn)",
           "data": data.describe(), "settings": settings.to_dict(), "subsets": subsets_info, "models": models,
           "cache": {"hits": cache.hits, "misses": cache.misses}}
    pictures = _classification_pictures(doc, out, data, test_features if settings.tsne else {})
    return write_results(out, doc, render_classification(doc, pictures))


def run_finetune(encoders: Sequence[Encoder], data: LabelledData, out: str | Path, settings: Settings,
                 cfg: FinetuneConfig, freeze: bool) -> dict:
    """Protocols 1b (``freeze=True``: a linear layer trained with augmentations) and 2 (fine-tuning)."""
    out, settings = Path(out), settings.validate()
    subsets, subsets_info = pinned_subsets(data, settings, out)
    models, pictures = {}, []
    explain = (max(float(f) for f in settings.fractions), int(settings.seeds[0]))  # the run whose model is pictured
    for m, enc in enumerate(encoders):
        prepare(enc, data, settings)
        runs, done = [], {}
        for (fraction, seed), idx in sorted(subsets.items()):
            key = (tuple(int(i) for i in idx), seed)
            if key not in done:  # identical subset and seed (e.g. 100%): same run
                train_paths = [data.split_paths("train")[i] for i in idx]
                r = train_classifier(enc, train_paths, data.split_y("train")[idx], data.split_paths("valid"),
                                     data.split_y("valid"), data.split_paths("test"), data.split_y("test"),
                                     data.label_names, data.task == "multiclass", freeze, cfg, seed, settings.progress,
                                     workdir=out, keep_model=(float(fraction), int(seed)) == explain)
                scores = r.pop("scores")
                if "model" in r and settings.saliency:
                    file = f"saliency_{m}.png"
                    if saliency_figure(r.pop("model"), enc, data, scores, out / file, settings.saliency):
                        pictures.append(file)
                r.pop("model", None)
                if settings.n_boot:
                    from convirt.evaluation.metrics import bootstrap_ci, macro_auroc

                    r["test"]["macro_auroc_ci"] = bootstrap_ci(data.split_y("test"), scores, macro_auroc,
                                                               n_boot=settings.n_boot, seed=int(seed))
                done[key] = r
            runs.append({"fraction": float(fraction), "seed": int(seed), **done[key]})
        models[enc.name] = {"model": model_record(enc), "label_names": data.label_names, "runs": runs,
                            "summary": summarize_runs(runs, data.label_names)}
    name = "linear-trained" if freeze else "finetune"
    variant = ("a linear layer trained with Adam and the training augmentations on the frozen encoder" if freeze
               else "the whole encoder and a linear layer trained end to end")
    doc = {"protocol": name, "variant": variant, "data": data.describe(), "settings": settings.to_dict(),
           "finetune": asdict(cfg), "subsets": subsets_info, "models": models}
    pictures = _classification_pictures(doc, out, data, {}) + pictures
    return write_results(out, doc, render_classification(doc, pictures))


def saliency_figure(model, encoder: Encoder, data: LabelledData, scores: np.ndarray, path: Path, n: int) -> bool:
    """Grad-CAM of the first label for the ``n`` test images the model scores highest on it."""
    import torch

    from convirt.data.images import load_image, to_tensor
    from convirt.evaluation.plots import plot_saliency
    from convirt.evaluation.saliency import grad_cam

    if encoder.module.backbone.__class__.__name__.lower().startswith(("vit", "vision")):
        return False  # Grad-CAM needs a spatial feature map
    top = np.argsort(-scores[:, 0], kind="stable")[:n]
    paths = data.split_paths("test")
    transform = encoder.transform()
    images = torch.stack([transform(to_tensor(load_image(paths[i]))) for i in top])
    maps = grad_cam(model, images, target_class=0)
    truth = data.split_y("test")[top, 0]
    titles = [f"{data.label_names[0]}: p={scores[i, 0]:.2f}, truth {t}" for i, t in zip(top, truth)]
    plot_saliency(images[:, 0].numpy(), maps, path, titles=titles)
    return True


def _classification_pictures(doc: dict, out: Path, data: LabelledData, test_features: dict) -> list[str]:
    from convirt.evaluation.plots import plot_label_fraction_curves, plot_tsne, plot_umap

    pictures = []
    summaries = {name: m["summary"] for name, m in doc["models"].items()}
    if len(doc["settings"]["fractions"]) > 1:
        plot_label_fraction_curves(summaries, out / "label_fractions.png",
                                   title=f"{doc['protocol']}: test macro AUROC, mean ± std over seeds")
        pictures.append("label_fractions.png")
    y = data.split_y("test")
    colours, _ = _category_per_row(y)
    names = ["negative", "positive"] if y.shape[1] == 1 else data.label_names
    for i, (model, x) in enumerate(test_features.items()):
        if len(x) >= 10:
            file = f"tsne_{i}.png"
            plot_tsne(x, colours, names, out / file, title=f"t-SNE of test features: {model}")
            pictures.append(file)
            if plot_umap(x, colours, names, out / f"umap_{i}.png", title=f"UMAP of test features: {model}"):
                pictures.append(f"umap_{i}.png")  # only when umap-learn is installed
    return pictures
