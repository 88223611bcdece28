"""results.json + results.md for every evaluation command: numbers for machines, tables for people."""

from __future__ import annotations

import json
import math
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from convirt.atomic import atomic_write_text


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "tolist"):  # numpy scalars and arrays
        return _jsonable(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x


def write_results(out: str | Path, doc: dict, markdown: str) -> dict:
    """Write ``results.json`` (with the convirt version and time) and ``results.md``, atomically."""
    from convirt import __version__

    out = Path(out)
    doc = _jsonable({**doc, "convirt_version": __version__, "python": platform.python_version(),
                     "written": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    atomic_write_text(out / "results.json", json.dumps(doc, indent=1))
    atomic_write_text(out / "results.md", markdown)
    return doc


def pm(stat: dict | None, digits: int = 3) -> str:
    """``mean ± std`` (or the mean alone for one seed; ``–`` when undefined)."""
    if not stat or stat.get("mean") is None:
        return "–"
    if stat.get("std") is None:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _pct(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def render_classification(doc: dict, pictures: list[str]) -> str:
    """Tables of a linear / fine-tuning result: macro AUROC per model and fraction, then per label."""
    data, settings = doc["data"], doc["settings"]
    fractions = settings["fractions"]
    lines = [f"# {doc['protocol']} evaluation", "",
             f"{doc['variant']}. Test split of `{Path(data['manifest']).name}` (sha256 {data['manifest_sha256'][:12]}…): "
             f"{data['n_images'].get('train', 0)} train / {data['n_images'].get('valid', 0)} valid / "
             f"{data['n_images'].get('test', 0)} test images, task {data['task']}, labels: {', '.join(data['labels'])}. "
             f"Mean ± sample std over seeds {settings['seeds']}; subsets sha256 {doc['subsets']['sha256'][:12]}….", "",
             "## Test macro AUROC", "",
             "| model | " + " | ".join(_pct(f) for f in fractions) + " |",
             "|---|" + "---|" * len(fractions)]
    for name, m in doc["models"].items():
        cells = [pm(m["summary"].get(repr(float(f)), {}).get("macro_auroc")) for f in fractions]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    multiclass = data["task"] == "multiclass"
    other = [("macro_auprc", "macro AUPRC")] + ([("multiclass_accuracy", "accuracy (argmax)"),
                                                   ("multiclass_macro_f1", "macro F1 (argmax)")] if multiclass else
                                                  [("macro_f1", "macro F1 (threshold 0.5)")])
    for key, title in other:
        lines += ["", f"## Test {title}", "", "| model | " + " | ".join(_pct(f) for f in fractions) + " |",
                  "|---|" + "---|" * len(fractions)]
        for name, m in doc["models"].items():
            lines.append(f"| {name} | " + " | ".join(pm(m["summary"].get(repr(float(f)), {}).get(key)) for f in fractions) + " |")
    lines += _ci_table(doc)
    last = repr(float(max(fractions)))
    lines += ["", f"## Per-label test AUROC at {_pct(float(last))}", "",
              "| label | " + " | ".join(doc["models"]) + " |", "|---|" + "---|" * len(doc["models"])]
    for label in data["labels"]:
        lines.append(f"| {label} | " + " | ".join(pm(m["summary"].get(last, {}).get("per_label_auroc", {}).get(label))
                                                  for m in doc["models"].values()) + " |")
    lines += ["", "## Models", ""]
    for name, m in doc["models"].items():
        rec = m["model"]
        lines.append(f"- **{name}**: `{rec['spec']}` (weights sha256 {rec['fingerprint'][:12]}…, {rec['image_size']} px"
                     + (f", batch norm recalibrated {rec['bn_recalibrated']}" if rec.get("bn_recalibrated") else "") + ")")
    if pictures:
        lines += ["", "## Pictures", ""] + [f"![{p}]({p})" for p in pictures]
    return "\n".join(lines) + "\n"


def _ci_table(doc: dict) -> list[str]:
    rows = []
    for name, m in doc["models"].items():
        for r in m["runs"]:
            ci = r["test"].get("macro_auroc_ci")
            if ci and ci.get("low") is not None:
                rows.append(f"| {name} | {_pct(r['fraction'])} | {r['seed']} | {r['test']['macro']['auroc']:.3f} | "
                            f"{ci['low']:.3f} – {ci['high']:.3f} |")
    if not rows:
        return []
    return ["", "## Bootstrap 95% intervals of each run's test macro AUROC", "",
            "| model | fraction | seed | AUROC | 95% CI |", "|---|---|---|---|---|"] + rows
