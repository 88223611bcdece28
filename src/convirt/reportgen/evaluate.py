"""``convirt evaluate report-gen``: draft a report for every test image with each selector and score it.

Selectors compared (Endo et al. 2021 is CXR-RePaiR):

* ``report``: CXR-RePaiR's whole-report retrieval (the most similar report, plain cosine);
* ``topk``: CXR-RePaiR's k most similar sentences (plain cosine);
* ``topk-centred``: the same on the calibrated (hub-centred) score, separating the effect of
  centring from that of the selection;
* ``adaptive``: the redundancy-aware, adaptive-length selector of :mod:`convirt.reportgen.draft`.

Scores (:mod:`convirt.reportgen.metrics`): label F1 (micro, macro) of the labeller's labels of the
draft against those of the reference report, BLEU-1..4, ROUGE-L, repeated and contradicted
findings per report, report length for images whose reference is normal / abnormal.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from convirt.atomic import atomic_write_text
from convirt.errors import ConfigError, DataError
from convirt.reportgen.labeller import CHEXPERT, NO_FINDING, binarize, label_report

SELECTORS = ("report", "topk", "topk-centred", "adaptive")
DESCRIPTIONS = {
    "report": "whole report, cosine (CXR-RePaiR)",
    "topk": "top-k sentences, cosine (CXR-RePaiR)",
    "topk-centred": "top-k sentences, centred score",
    "adaptive": "redundancy-aware adaptive (ours)",
}


def observation_set(name: str, columns: Sequence[str] = ()) -> list[str]:
    """``chexpert`` (14 observations), ``synthetic`` (the generator's FINDINGS) or ``auto`` (synthetic
    when the manifest has all its label columns)."""
    from convirt.data.synthetic import FINDINGS

    if name == "auto":
        name = "synthetic" if set(FINDINGS) <= set(columns) else "chexpert"
    if name == "synthetic":
        return list(FINDINGS)
    if name == "chexpert":
        return list(CHEXPERT)
    raise ConfigError(f"observations must be auto, chexpert or synthetic, got {name!r}")


def embed_manifest_images(model, paths: Sequence[Path], batch_size: int = 64, progress: bool = True,
                          desc: str = "embedding images") -> np.ndarray:
    """Projected, L2-normalised image embeddings (n, d) of files, with the model's eval transform."""
    import torch

    from convirt.evaluation.embed import embed_images

    model.eval()

    def encode(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.nn.functional.normalize(model.image_head(model.image_encoder(batch.to(model.device))).float(), dim=-1)

    return embed_images(encode, list(paths), model.preprocess, batch_size=batch_size, progress=progress, desc=desc)


def read_split(manifest: str | Path, split: str | None, limit: int | None = None, allow_absolute: bool = False):
    """Rows of ``split`` (all rows when the manifest has no split column or ``split`` is None):
    ``(data frame, first image path of each row)``."""
    from convirt.data.manifest import read_manifest, resolve_image_paths

    manifest = Path(manifest)
    df = read_manifest(manifest)
    for col in ("image", "text"):
        if col not in df.columns:
            raise DataError(f"{manifest} has no {col!r} column: report generation needs images and their reports")
    if split and "split" in df.columns:
        df = df[df["split"] == split]
        if df.empty:
            raise DataError(f"{manifest} has no rows with split == {split!r}")
    df = df.reset_index(drop=True)
    if limit:
        df = df.iloc[:limit]
    paths = [resolve_image_paths(p, manifest.parent, allow_absolute)[0] for p in df["image"]]
    return df, paths


def score_drafts(drafts, references: Sequence[str], observations: Sequence[str]) -> dict:
    """Every number of one selector's drafts against their reference reports."""
    from convirt.reportgen.metrics import bleu, label_f1, reference_text, repetition, rouge_l

    refs = [reference_text(r) for r in references]
    hyps = [d.text for d in drafts]
    y_true = [binarize(label_report(r), observations) for r in references]
    y_pred = [binarize(label_report(h), observations) for h in hyps]
    reps = [repetition(d.sentences) for d in drafts]
    lengths = np.array([len(d.sentences) for d in drafts])
    out = {"y_true": y_true, "y_pred": y_pred, "label": label_f1(y_true, y_pred, observations), **bleu(hyps, refs), "ROUGE-L": rouge_l(hyps, refs),
           "repeated_findings": float(np.mean([r["repeated"] for r in reps])),
           "contradicted_findings": float(np.mean([r["contradicted"] for r in reps])),
           "sentences": float(lengths.mean()), "normal_path": float(np.mean([d.normal for d in drafts]))}
    if NO_FINDING in observations:
        j = list(observations).index(NO_FINDING)
        normal = np.array([y[j] == 1 for y in y_true])
        out["sentences_normal"] = float(lengths[normal].mean()) if normal.any() else None
        out["sentences_abnormal"] = float(lengths[~normal].mean()) if (~normal).any() else None
        out["n_normal"], out["n_abnormal"] = int(normal.sum()), int((~normal).sum())
    return out


def run_report_gen(model, manifest: str | Path, out: str | Path, corpus, report_corpus=None, split: str | None = "test",
                   observations: str = "auto", k: int | None = None, selectors: Sequence[str] | None = None,
                   limit: int | None = None, batch_size: int = 64, progress: bool = True, image_emb: np.ndarray | None = None,
                   allow_absolute: bool = False) -> dict:
    """Draft and score; write ``results.json``, ``results.md`` and ``drafts.jsonl`` to ``out``."""
    from convirt.evaluation.report import write_results
    from convirt.reportgen.draft import draft_reports

    df, paths = read_split(manifest, split, limit, allow_absolute)
    obs = observation_set(observations, df.columns)
    selectors = list(selectors or SELECTORS)
    unknown = set(selectors) - set(SELECTORS)
    if unknown:
        raise ConfigError(f"unknown selector(s) {sorted(unknown)}; choose from {SELECTORS}")
    if report_corpus is None:
        selectors = [s for s in selectors if s != "report"]
    if corpus.image_mean is None:
        selectors = [s for s in selectors if s != "topk-centred"]
    if image_emb is None:
        image_emb = embed_manifest_images(model, paths, batch_size, progress)
    references = df["text"].tolist()
    k = k or int((corpus.calibration or {}).get("topk_k", 3))
    results, all_drafts = {}, {}
    for name in selectors:
        if name == "report":
            drafts = draft_reports(report_corpus, image_emb, "report", k=1, centred=False)
        elif name == "topk":
            drafts = draft_reports(corpus, image_emb, "topk", k=k, centred=False)
        elif name == "topk-centred":
            drafts = draft_reports(corpus, image_emb, "topk", k=k, centred=True)
        else:
            drafts = draft_reports(corpus, image_emb, "adaptive")
        results[name] = score_drafts(drafts, references, obs)
        all_drafts[name] = drafts
    from convirt.reportgen.metrics import paired_bootstrap_micro_f1

    versus = {}
    if "adaptive" in results:  # is the adaptive selector's micro F1 gain more than resampling noise?
        for name in results:
            if name != "adaptive":
                versus[name] = paired_bootstrap_micro_f1(results["adaptive"]["y_true"], results["adaptive"]["y_pred"],
                                                         results[name]["y_pred"])
    for r in results.values():
        r.pop("y_true"), r.pop("y_pred")
    labeller_check = None
    if set(obs) <= set(df.columns):  # ground-truth labels: how well does the labeller read the references?
        from convirt.reportgen.metrics import label_f1

        truth = df[obs].fillna(0).to_numpy().astype(int).clip(0, 1)
        labeller_check = label_f1(truth, [binarize(label_report(r), obs) for r in references], obs)["micro_f1"]
    doc = {"protocol": "report-gen", "manifest": str(manifest), "split": split, "n_images": len(df),
           "observations": obs, "k": k, "selectors": {s: DESCRIPTIONS[s] for s in selectors}, "results": results,
           "adaptive_minus_baseline_micro_f1": versus,
           "corpus": {"path": str(corpus.path), **{key: corpus.meta[key] for key in ("level", "n_entries", "n_reports", "source")},
                      "calibration": corpus.calibration},
           "report_corpus": None if report_corpus is None else {"path": str(report_corpus.path), "n_entries": len(report_corpus)},
           "labeller_vs_ground_truth_micro_f1": labeller_check,
           "model_fingerprint": corpus.meta["model_fingerprint"]}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(len(df)):
        lines.append(json.dumps({"image": df["image"][i], **{s: all_drafts[s][i].to_dict() for s in selectors}}))
    atomic_write_text(out / "drafts.jsonl", "\n".join(lines) + "\n")
    return write_results(out, doc, render(doc))


def render(doc: dict) -> str:
    """The comparison table people read."""
    res = doc["results"]
    lines = [f"# Report generation by retrieval ({doc['n_images']} images, split {doc['split']})", "",
             f"Labels: {len(doc['observations'])} observations ({', '.join(doc['observations'])}), read from drafts and "
             f"references by the rule-based labeller (uncertain = positive); top-k uses k = {doc['k']}.", "",
             "| selector | label F1 micro | label F1 macro | BLEU-1 | BLEU-4 | ROUGE-L | repeated findings / report | "
             "contradictions / report | sentences (normal / abnormal images) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in res.items():
        length = (f"{r['sentences_normal']:.2f} / {r['sentences_abnormal']:.2f}" if r.get("sentences_normal") is not None
                  and r.get("sentences_abnormal") is not None else f"{r['sentences']:.2f}")
        lines.append(f"| {DESCRIPTIONS[name]} | {r['label']['micro_f1']:.3f} | {r['label']['macro_f1']:.3f} | "
                     f"{r['BLEU-1']:.3f} | {r['BLEU-4']:.3f} | {r['ROUGE-L']:.3f} | {r['repeated_findings']:.2f} | "
                     f"{r['contradicted_findings']:.2f} | {length} |")
    if doc.get("adaptive_minus_baseline_micro_f1"):
        lines += ["", "Micro label F1 of the adaptive selector minus each baseline's, with a paired bootstrap 95% interval "
                      "over images:", ""]
        for name, v in doc["adaptive_minus_baseline_micro_f1"].items():
            lines.append(f"- {DESCRIPTIONS[name]}: {v['diff']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}]")
    lines += ["", "## Per-observation F1", "", "| observation | support | " + " | ".join(res) + " |",
              "|---|---|" + "---|" * len(res)]
    for o in doc["observations"]:
        first = next(iter(res.values()))["label"]["per_label"][o]
        lines.append(f"| {o} | {first['support']} | " + " | ".join(f"{r['label']['per_label'][o]['f1']:.3f}" for r in res.values()) + " |")
    if doc.get("labeller_vs_ground_truth_micro_f1") is not None:
        lines += ["", f"The labeller's micro F1 on the reference reports against the manifest's ground-truth labels: "
                      f"{doc['labeller_vs_ground_truth_micro_f1']:.3f}."]
    return "\n".join(lines) + "\n"
