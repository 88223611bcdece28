"""Protocols in the joint image-text space: retrieval (Sec. 4.3), zero-shot classification, report retrieval.

They need no training, only embeddings:

* **retrieval** — image→image and text→image Precision@K on a CheXpert 8×200-style benchmark:
  either the official layout (a candidate CSV of ``Path`` + label columns, a query CSV
  ``Variable,Text`` or ``Variable,Path``) or one drawn here from any labelled manifest
  (N categories × M candidates, fixed seed, candidates positive for exactly one category).
  Image→image uses the encoder features (works for every encoder, the paper's "ImageNet vs
  ConVIRT" comparison); text→image uses the projected space (convirt models only).
* **zero-shot** — class embeddings from prompt sets (:mod:`convirt.evaluation.zeroshot`),
  image-to-class cosine, accuracy / macro F1 / AUROC.
* **report retrieval** — rank candidate reports for each image (CXR-RePaiR's setting):
  Recall@K of the image's own report and Precision@K by label agreement.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from convirt.data.reports import extract_sections
from convirt.errors import ConfigError, DataError
from convirt.evaluation import local_similarity
from convirt.evaluation.cache import EmbeddingCache
from convirt.evaluation.encoders import Encoder
from convirt.evaluation.labelled import LabelledData
from convirt.evaluation.protocols import Settings, model_record
from convirt.evaluation.report import write_results
from convirt.evaluation.retrieval import (build_retrieval_benchmark, image_to_image_precision, ranked_topk,
                                          text_to_image_precision)


def _needs_text(encoder: Encoder, what: str) -> None:
    if encoder.dual is None:
        raise ConfigError(f"{what} needs a text encoder: {encoder.name} ({encoder.spec}) is image-only. "
                          "Use a convirt model folder, or leave this model out")


def _embed(encoder: Encoder, paths: list[Path], data: LabelledData, settings: Settings, cache: EmbeddingCache,
           projected: bool, desc: str) -> np.ndarray:
    return cache.get(encoder, paths, data.manifest_sha256, settings.batch_size, settings.num_workers,
                     settings.progress, desc, projected=projected)


def read_text_queries(path: str | Path, categories: Sequence[str]) -> tuple[list[str], np.ndarray, list[str]]:
    """A CheXpert 8×200 query CSV ``Variable,Text`` (optionally ``Negated``): (sentences, category
    index per sentence, negated sentences or ``""``).

    With a ``Negated`` statement a query ranks images by similarity to the sentence minus
    similarity to its negation: report-trained text towers see "No effusion." in most reports, so
    a bare positive query also matches images without the finding (docs/demo.md measures it).
    """
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    if not {"Variable", "Text"} <= set(df.columns):
        raise DataError(f"{path}: a text query file needs columns Variable,Text (found {list(df.columns)})")
    unknown = sorted(set(df["Variable"]) - set(categories))
    if unknown:
        raise DataError(f"{path}: query categories {unknown} are not among the labels {list(categories)}")
    negated = df["Negated"].tolist() if "Negated" in df.columns else [""] * len(df)
    return df["Text"].tolist(), np.array([list(categories).index(v) for v in df["Variable"]], dtype=np.int64), negated


def query_embeddings(dual, texts: Sequence[str], negated: Sequence[str]) -> np.ndarray:
    """Unit text embeddings, minus the negated statement's where one is given (ranking by the difference)."""
    emb = dual.encode_text(list(texts)).numpy()
    rows = [i for i, n in enumerate(negated) if n.strip()]
    if rows:
        emb[rows] -= dual.encode_text([negated[i] for i in rows]).numpy()
    return emb


def read_image_queries(path: str | Path, categories: Sequence[str], image_root: str | Path | None = None,
                       allow_absolute: bool = False, uncertain: str = "error") -> tuple[list[Path], np.ndarray]:
    """Query images with their category: a CSV ``Variable,Path`` (8×200 style) or a labelled table whose
    rows are positive for exactly one of ``categories`` (the same label columns as the candidates)."""
    from convirt.data.manifest import resolve_image_paths
    from convirt.evaluation.labelled import load_labelled

    path = Path(path)
    head = pd.read_csv(path, nrows=0).columns
    if "Variable" in head:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        column = "Path" if "Path" in df.columns else "image"
        unknown = sorted(set(df["Variable"]) - set(categories))
        if column not in df.columns or unknown:
            raise DataError(f"{path}: image queries need Variable,Path columns with Variable among {list(categories)}"
                            + (f" (unknown: {unknown})" if unknown else ""))
        root = Path(image_root) if image_root else path.parent
        paths = [resolve_image_paths(p, root, allow_absolute)[0] for p in df[column]]
        return paths, np.array([list(categories).index(v) for v in df["Variable"]], dtype=np.int64)
    queries = load_labelled(path, None, "auto", uncertain, allow_absolute, (), image_root)
    names = category_names(queries)
    if sorted(names) != sorted(categories):
        raise DataError(f"image queries in {path} have labels {names}, the candidates {list(categories)}")
    y = queries.split_y("test")[:, [names.index(c) for c in categories]]
    if (y.sum(axis=1) != 1).any():
        raise DataError(f"{path}: every image query must be positive for exactly one category")
    return queries.split_paths("test"), y.argmax(axis=1)


def category_names(data: LabelledData) -> list[str]:
    """Label names as categories (``COLUMN=VALUE`` keeps the value, so prompts and queries can use it)."""
    return [n.split("=", 1)[1] if "=" in n else n for n in data.label_names]


def run_retrieval(encoders: Sequence[Encoder], data: LabelledData, out: str | Path, settings: Settings,
                  ks: Sequence[int] = (5, 10, 50), per_category: int | None = None, queries_per_category: int = 0,
                  image_queries: tuple[list[Path], np.ndarray] | None = None, text_queries: str | Path | None = None,
                  gallery: int = 4) -> dict:
    """Image→image and text→image P@K; candidates are the ``test`` rows (all rows without a split column)."""
    from convirt.evaluation.plots import plot_bar_precision, plot_retrieval_gallery

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    categories = category_names(data)
    rows = data.splits["test"]
    frame = pd.DataFrame(data.y[rows], columns=categories)
    if per_category:  # draw an N x M benchmark from the labelled rows
        bench = build_retrieval_benchmark(frame, categories, per_category, settings.seeds[0], queries_per_category)
        cand_rows, cand_y = rows[bench.candidates], bench.candidate_labels()
        query_rows, query_cat = rows[bench.queries], bench.query_category
        benchmark = {"drawn": True, "seed": int(settings.seeds[0]), "per_category": per_category,
                     "queries_per_category": queries_per_category, **bench.to_dict()}
    else:  # the table is the benchmark (e.g. the official 8x200 candidates)
        cand_rows, cand_y = rows, data.y[rows]
        query_rows, query_cat = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        benchmark = {"drawn": False}
    cand_paths = [data.paths[i] for i in cand_rows]
    if image_queries is not None:  # from read_image_queries
        query_paths, query_cat = image_queries
    else:
        query_paths = [data.paths[i] for i in query_rows]
    texts, text_cat, negated = read_text_queries(text_queries, categories) if text_queries else ([], np.zeros(0, np.int64), [])

    cache, models, pictures, bars = EmbeddingCache(settings.cache_dir), {}, [], {}
    for m, enc in enumerate(encoders):
        result: dict = {"model": model_record(enc)}
        cand = _embed(enc, cand_paths, data, settings, cache, False, f"{enc.name}: candidates")
        if len(query_paths):
            query = _embed(enc, query_paths, data, settings, cache, False, f"{enc.name}: queries")
            result["image_to_image"] = image_to_image_precision(query, query_cat, cand, cand_y, ks, categories)
            bars[f"{enc.name} image→image"] = result["image_to_image"]
            if gallery:
                top = ranked_topk(query, cand, min(5, len(cand)))
                pick = _one_per_category(query_cat, gallery)
                file = f"gallery_image_{m}.png"
                plot_retrieval_gallery([query_paths[i] for i in pick], [[cand_paths[j] for j in top[i]] for i in pick],
                                       cand_y[top[pick], query_cat[pick][:, None]], out / file,
                                       query_titles=[categories[query_cat[i]] for i in pick])
                pictures.append(file)
        if texts and enc.dual is not None:
            image_emb = _embed(enc, cand_paths, data, settings, cache, True, f"{enc.name}: candidates (projected)")
            text_emb = query_embeddings(enc.dual, texts, negated)
            result["text_to_image"] = text_to_image_precision(text_emb, text_cat, image_emb, cand_y, ks, categories)
            bars[f"{enc.name} text→image"] = result["text_to_image"]
        elif texts:
            result["text_to_image"] = None
            result["notes"] = ["image-only encoder: no text→image retrieval"]
        models[enc.name] = result
    if not bars:
        raise ConfigError("nothing to retrieve: give image queries (--image-queries, or --queries-per-category with "
                          "--per-category) and/or text queries (--text-queries)")
    plot_bar_precision(bars, out / "precision.png")
    pictures.insert(0, "precision.png")
    doc = {"protocol": "retrieval", "data": data.describe(), "settings": settings.to_dict(), "ks": list(ks),
           "categories": categories, "n_candidates": len(cand_paths), "n_image_queries": len(query_paths),
           "text_queries": {"file": str(text_queries), "n": len(texts), "n_with_negation": sum(bool(n.strip()) for n in negated)}
           if texts else None,
           "benchmark": benchmark, "models": models}
    return write_results(out, doc, _render_retrieval(doc, pictures))


def _one_per_category(cat: np.ndarray, n: int) -> np.ndarray:
    first = [int(np.flatnonzero(cat == c)[0]) for c in sorted(set(cat.tolist()))]
    return np.array(first[:n], dtype=np.int64)


def _render_retrieval(doc: dict, pictures: list[str]) -> str:
    ks = doc["ks"]
    lines = [f"# Retrieval: Precision@K", "",
             f"{doc['n_candidates']} candidate images in {len(doc['categories'])} categories; "
             f"{doc['n_image_queries']} image queries; "
             f"{doc['text_queries']['n'] if doc['text_queries'] else 0} text queries. A candidate is relevant when "
             "positive for the query's category; cosine similarity, ties to the lower index; "
             "mean over categories of the per-category mean.", "",
             "| model | direction | " + " | ".join(f"P@{k}" for k in ks) + " |", "|---|---|" + "---|" * len(ks)]
    for name, m in doc["models"].items():
        for key, label in (("image_to_image", "image→image"), ("text_to_image", "text→image")):
            if m.get(key):
                lines.append(f"| {name} | {label} | " + " | ".join(f"{m[key]['mean'][f'P@{k}']:.3f}" for k in ks) + " |")
    lines += ["", "## Per category (P@%d)" % ks[0], "", "| category | " + " | ".join(
        f"{n} {d}" for n, m in doc["models"].items() for d in ("i→i", "t→i") if m.get({"i→i": "image_to_image", "t→i": "text_to_image"}[d])) + " |"]
    cols = [(m, key) for m in doc["models"].values() for key in ("image_to_image", "text_to_image") if m.get(key)]
    lines.append("|---|" + "---|" * len(cols))
    for c in doc["categories"]:
        lines.append(f"| {c} | " + " | ".join(
            f"{m[key]['per_category'][c][f'P@{ks[0]}']:.3f}" if c in m[key]["per_category"] else "–" for m, key in cols) + " |")
    lines += ["", "## Pictures", ""] + [f"![{p}]({p})" for p in pictures]
    return "\n".join(lines) + "\n"


def run_zeroshot(encoders: Sequence[Encoder], data: LabelledData, out: str | Path, settings: Settings,
                 prompts: dict[str, list[str]], ensemble: str = "mean", prompts_source: str = "",
                 similarity: str = "auto") -> dict:
    """Zero-shot classification of the ``test`` images from class prompts.

    ``similarity`` (:mod:`convirt.evaluation.local_similarity`): ``auto`` scores GLoRIA models by their
    global + local similarity (prompt scores then ensembled by mean or max), others by the cosine."""
    from convirt.evaluation.zeroshot import class_scores, zero_shot_metrics

    out = Path(out)
    categories = category_names(data)
    missing = [c for c in categories if c not in prompts]
    if missing:
        raise DataError(f"no prompts for class(es) {missing}; the prompt file has {sorted(prompts)}")
    task = "multiclass" if data.task == "multiclass" else ("binary" if len(categories) == 1 else "multilabel")
    cache, models = EmbeddingCache(settings.cache_dir), {}
    paths, y = data.split_paths("test"), data.split_y("test")
    for enc in encoders:
        _needs_text(enc, "zero-shot classification")
        image_emb = _embed(enc, paths, data, settings, cache, True, f"{enc.name}: test (projected)")
        used = local_similarity.resolve(similarity, enc.dual)
        if used == "global":
            prompt_emb = {c: enc.dual.encode_text(prompts[c]).numpy() for c in categories}
            names, scores = class_scores(image_emb, prompt_emb, ensemble)
        else:
            names, scores = categories, _local_class_scores(enc, paths, image_emb, prompts, categories, ensemble, used,
                                                            settings)
        metrics = zero_shot_metrics(scores, y if task != "multiclass" else y.argmax(axis=1), names, task,
                                    n_boot=settings.n_boot, seed=int(settings.seeds[0]))
        models[enc.name] = {"model": model_record(enc), "similarity": used, **metrics}
    doc = {"protocol": "zeroshot", "data": data.describe(), "settings": settings.to_dict(), "task": task,
           "ensemble": ensemble, "prompts": {"source": prompts_source, "per_class": {c: prompts[c] for c in categories}},
           "models": models}
    return write_results(out, doc, _render_zeroshot(doc))


def _local_class_scores(enc: Encoder, paths: list[Path], image_emb: np.ndarray, prompts: dict[str, list[str]],
                        categories: list[str], ensemble: str, similarity: str, settings: Settings) -> np.ndarray:
    """GLoRIA-style class scores: every prompt scored by the (global +) local similarity, then the mean
    or the max over each class's prompts."""
    texts = [p for c in categories for p in prompts[c]]
    regions = local_similarity.image_regions(enc.dual, paths, settings.batch_size, settings.progress)
    s = local_similarity.scores(enc.dual, image_emb, regions, texts, similarity)
    columns, start = [], 0
    for c in categories:
        part = s[:, start : start + len(prompts[c])]
        columns.append(part.mean(axis=1) if ensemble == "mean" else part.max(axis=1))
        start += len(prompts[c])
    return np.stack(columns, axis=1)


def _render_zeroshot(doc: dict) -> str:
    headline = "accuracy" if doc["task"] == "multiclass" else "macro_auroc"
    lines = ["# Zero-shot classification", "",
             f"Task {doc['task']}, prompt ensembling by {doc['ensemble']}, "
             f"{sum(len(v) for v in doc['prompts']['per_class'].values())} prompts over "
             f"{len(doc['prompts']['per_class'])} classes ({doc['prompts']['source'] or 'given'}); "
             f"{doc['data']['n_images'].get('test', 0)} test images.", "",
             "| model | " + ("accuracy | macro F1 | macro AUROC | 95% CI (" + headline + ") |" if doc["task"] == "multiclass"
                             else "macro AUROC | macro AUPRC | 95% CI |"),
             "|---|---|---|---|" + ("---|" if doc["task"] == "multiclass" else "")]
    for name, m in doc["models"].items():
        ci = (m.get("ci") or {}).get(headline) or {}
        interval = f"{ci['low']:.3f} – {ci['high']:.3f}" if ci.get("low") is not None else "–"
        f = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
        if doc["task"] == "multiclass":
            lines.append(f"| {name} | {f(m['accuracy'])} | {f(m['macro_f1'])} | {f(m['macro_auroc'])} | {interval} |")
        else:
            lines.append(f"| {name} | {f(m.get('macro_auroc'))} | {f(m.get('macro_auprc'))} | {interval} |")
    return "\n".join(lines) + "\n"


def run_report_retrieval(encoders: Sequence[Encoder], data: LabelledData, out: str | Path, settings: Settings,
                         ks: Sequence[int] = (1, 5, 10), corpus: LabelledData | None = None, agreement: str = "exact",
                         sections: Sequence[str] | None = ("FINDINGS", "IMPRESSION"), similarity: str = "auto") -> dict:
    """Rank reports for each ``test`` image: its own report (Recall@K) and label agreement (Precision@K).

    Reports are the test rows' own ``text`` (paired) or, with ``corpus``, another table's reports
    (Precision@K only). The same sections as in pretraining are used (FINDINGS + IMPRESSION).
    """
    from convirt.evaluation.report_retrieval import image_to_report_retrieval

    out = Path(out)
    source = corpus or data
    if "text" not in source.frame.columns:
        raise DataError(f"{source.manifest} has no 'text' column of reports")
    rows = source.splits["test"] if corpus is None else np.arange(len(source.frame))
    reports = [extract_sections(str(t), sections) for t in source.frame["text"].iloc[rows]]
    if any(not r.strip() for r in reports):
        raise DataError(f"{sum(not r.strip() for r in reports)} empty report(s) among the candidates in {source.manifest}")
    paired = np.arange(len(rows)) if corpus is None else None
    image_labels = data.split_y("test")
    report_labels = source.y[rows] if corpus is None or category_names(corpus) == category_names(data) else None
    cache, models = EmbeddingCache(settings.cache_dir), {}
    for enc in encoders:
        _needs_text(enc, "image→report retrieval")
        image_emb = _embed(enc, data.split_paths("test"), data, settings, cache, True, f"{enc.name}: test (projected)")
        report_emb = enc.dual.encode_text(reports).numpy()
        used = local_similarity.resolve(similarity, enc.dual)
        pair_scores = None
        if used != "global":  # GLoRIA: global + local similarity ranks the reports
            paths = data.split_paths("test")
            regions = local_similarity.image_regions(enc.dual, paths, settings.batch_size, settings.progress)
            pair_scores = local_similarity.scores(enc.dual, image_emb, regions, reports, used)
        r = image_to_report_retrieval(image_emb, report_emb, ks, paired=paired, image_labels=image_labels,
                                      report_labels=report_labels, agreement=agreement, scores=pair_scores)
        models[enc.name] = {"model": model_record(enc), "similarity": used, **r}
    doc = {"protocol": "report-retrieval", "data": data.describe(), "settings": settings.to_dict(), "ks": list(ks),
           "agreement": agreement, "n_reports": len(reports), "corpus": str(source.manifest), "models": models}
    return write_results(out, doc, _render_report_retrieval(doc))


def _render_report_retrieval(doc: dict) -> str:
    ks = doc["ks"]
    first = next(iter(doc["models"].values()))
    keys = [f"{m}@{k}" for m in ("R", "P") for k in ks if first.get(f"{m}@{k}") is not None]
    lines = ["# Image→report retrieval", "",
             f"{doc['data']['n_images'].get('test', 0)} test images, {doc['n_reports']} candidate reports from "
             f"`{Path(doc['corpus']).name}`. R@K: the image's own report in the top K; P@K: retrieved reports whose "
             f"labels agree with the image's ({doc['agreement']} agreement).", "",
             "| model | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, m in doc["models"].items():
        lines.append(f"| {name} | " + " | ".join(f"{m[k]:.3f}" for k in keys) + " |")
    return "\n".join(lines) + "\n"
