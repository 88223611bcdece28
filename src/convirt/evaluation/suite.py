"""``convirt evaluate suite``: one YAML file -> every protocol for every model -> one comparison table.

This is how the paper's Table 2/3 style comparison ("ConVIRT vs ImageNet vs random at 1/10/100%")
is reproduced: all models on the same pinned subsets, candidates and prompts. Example::

    data: kermany/manifest.csv          # default table for the protocols (paths: relative to this file)
    labels: [label=pneumonia]
    size: 128
    models: [runs/convirt, imagenet:resnet18, random:resnet18]
    settings: {fractions: [0.01, 0.1, 1.0], seeds: [0, 1, 2]}
    protocols:
      linear: {}
      finetune: {epochs: 5, fractions: [1.0], seeds: [0]}
      retrieval: {per_category: 50, queries_per_category: 5}
      zeroshot: {data: synth/manifest.csv, labels: [...], prompts: prompts.json}

Writes ``OUT/<protocol>/results.{json,md}`` and ``OUT/comparison.{md,csv,json}`` (one row per
model, one column per headline number).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from convirt.atomic import atomic_write_text
from convirt.config import from_dict
from convirt.errors import ConfigError
from convirt.evaluation.localized import LOCALIZED


@dataclass
class SuiteSettings:
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    batch_size: int = 64
    num_workers: int = 0
    n_boot: int = 500
    cache_dir: str | None = None


@dataclass
class ProtocolConfig:
    """Every protocol's options; each protocol reads the ones that concern it (others are refused)."""

    data: str | None = None
    labels: list[str] | None = None
    task: str = "auto"
    uncertain: str = "error"
    fractions: list[float] | None = None
    seeds: list[int] | None = None
    subsets: str | None = None
    Cs: list[float] | None = None
    lr: float | None = None
    epochs: int | None = None
    patience: int | None = None
    augment: str | None = None
    precision: str | None = None
    positive_fraction: float | None = None  # segment / detect: share of training draws showing a finding
    per_category: int | None = None
    queries_per_category: int = 0
    image_root: str | None = None
    image_queries: str | None = None
    text_queries: str | None = None
    ks: list[int] | None = None
    prompts: str | None = None
    n_prompts: int | None = None
    ensemble: str = "mean"
    corpus: str | None = None
    agreement: str = "exact"
    target_column: str | None = None  # segment / detect: the mask / boxes column
    batch_size: int | None = None  # segment / detect (default 16)


USES = {  # which ProtocolConfig keys each protocol accepts (beyond data/labels/task/uncertain)
    "linear": {"fractions", "seeds", "subsets", "Cs"},
    "linear-trained": {"fractions", "seeds", "subsets", "lr", "epochs", "patience", "augment", "precision"},
    "finetune": {"fractions", "seeds", "subsets", "lr", "epochs", "patience", "augment", "precision"},
    "retrieval": {"per_category", "queries_per_category", "image_root", "image_queries", "text_queries", "ks", "seeds"},
    "zeroshot": {"prompts", "n_prompts", "ensemble", "seeds"},
    "report-retrieval": {"corpus", "agreement", "ks"},
    **{name: {"fractions", "seeds", "subsets", "lr", "epochs", "patience", "augment", "precision", "target_column",
              "batch_size"} for name in LOCALIZED},  # convirt.evaluation.localized
}
COMMON = {"data", "labels", "task", "uncertain"}


@dataclass
class SuiteConfig:
    data: str | None = None
    labels: list[str] | None = None
    size: int | None = None
    models: list[str] = field(default_factory=list)
    names: list[str] | None = None
    allow_absolute_paths: bool = False
    settings: SuiteSettings = field(default_factory=SuiteSettings)
    protocols: dict = field(default_factory=dict)


def load_suite(path: str | Path) -> tuple[SuiteConfig, dict[str, ProtocolConfig]]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"suite config not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    cfg = from_dict(SuiteConfig, raw)
    if not isinstance(cfg.protocols, dict) or not cfg.protocols:
        raise ConfigError(f"{path}: 'protocols' must map protocol names ({', '.join(USES)}) to their options")
    protocols = {}
    for name, options in cfg.protocols.items():
        if name not in USES:
            raise ConfigError(f"{path}: unknown protocol {name!r}; choose from {', '.join(USES)}")
        options = options or {}
        refused = sorted(set(options) - USES[name] - COMMON)
        if refused:
            raise ConfigError(f"{path}: protocol {name} does not take {refused}; it takes "
                              f"{sorted(USES[name] | COMMON)}")
        protocols[name] = from_dict(ProtocolConfig, options, prefix=f"protocols.{name}.")
    return cfg, protocols


def _resolve(base: Path, value: str | None) -> Path | None:
    if value is None:
        return None
    p = Path(value)
    return p if p.is_absolute() else base / p


def run_suite(config: str | Path, out: str | Path, models: list[str] | None = None, names: list[str] | None = None,
              progress: bool = True) -> dict:
    """Run every protocol of ``config`` for every model; write one folder per protocol and the comparison."""
    from convirt.evaluation.cache import default_cache_dir
    from convirt.evaluation.encoders import load_encoders
    from convirt.evaluation.finetune import default_config
    from convirt.evaluation.labelled import load_labelled
    from convirt.evaluation.probe import DEFAULT_CS
    from convirt.evaluation.protocols import Settings, run_finetune, run_linear
    from convirt.evaluation.shared_space import (category_names, read_image_queries, run_report_retrieval, run_retrieval,
                                                 run_zeroshot)
    from convirt.evaluation.zeroshot import load_prompts

    config, out = Path(config), Path(out)
    cfg, protocols = load_suite(config)
    base = config.parent
    specs = models or [str(base / m) if (base / m).exists() else m for m in cfg.models]  # folders: relative to the file
    if not specs:
        raise ConfigError("no models: list them under 'models:' in the suite file or pass --models")
    encoders = load_encoders(specs, names or cfg.names, cfg.size)
    s = cfg.settings
    cache = _resolve(base, s.cache_dir) if s.cache_dir else default_cache_dir()
    docs = {}
    for name, p in protocols.items():
        data_path = _resolve(base, p.data or cfg.data)
        if data_path is None:
            raise ConfigError(f"protocol {name}: no data (set 'data:' at the top or in the protocol)")
        if name in LOCALIZED:  # segmentation / detection: their own manifest columns (masks, boxes)
            from convirt.evaluation.localized import run_suite_protocol

            docs[name] = run_suite_protocol(name, p, cfg, s, encoders, data_path, out / name, cache, base, progress)
            continue
        classification = name in ("linear", "linear-trained", "finetune")
        image_root = _resolve(base, p.image_root)
        data = load_labelled(data_path, p.labels or cfg.labels, p.task, p.uncertain, cfg.allow_absolute_paths,
                             ("train", "valid", "test") if classification else (), image_root)
        settings = Settings(fractions=p.fractions or s.fractions, seeds=p.seeds or s.seeds, batch_size=s.batch_size,
                            num_workers=s.num_workers, n_boot=s.n_boot, cache_dir=cache,
                            subsets_file=_resolve(base, p.subsets), progress=progress).validate()
        target = out / name
        if name == "linear":
            docs[name] = run_linear(encoders, data, target, settings, p.Cs or DEFAULT_CS)
        elif name in ("linear-trained", "finetune"):
            freeze = name == "linear-trained"
            ft = default_config(freeze, lr=p.lr, max_epochs=p.epochs, patience=p.patience, augment=p.augment,
                                precision=p.precision, batch_size=s.batch_size, num_workers=s.num_workers)
            docs[name] = run_finetune(encoders, data, target, settings, ft, freeze)
        elif name == "retrieval":
            queries = None
            if p.image_queries:
                queries = read_image_queries(_resolve(base, p.image_queries), category_names(data), image_root,
                                             cfg.allow_absolute_paths, p.uncertain)
            docs[name] = run_retrieval(encoders, data, target, settings, p.ks or (5, 10, 50), p.per_category,
                                       p.queries_per_category, queries, _resolve(base, p.text_queries))
        elif name == "zeroshot":
            if not p.prompts:
                raise ConfigError("protocol zeroshot needs 'prompts:' (a JSON prompt file)")
            prompts = load_prompts(_resolve(base, p.prompts), p.n_prompts, settings.seeds[0])
            docs[name] = run_zeroshot([e for e in encoders if e.dual is not None], data, target, settings, prompts,
                                      p.ensemble, p.prompts)
        else:
            corpus = None
            if p.corpus:
                corpus = load_labelled(_resolve(base, p.corpus), p.labels or cfg.labels or data.label_names, "auto",
                                       p.uncertain, cfg.allow_absolute_paths, ())
            docs[name] = run_report_retrieval([e for e in encoders if e.dual is not None], data, target, settings,
                                              p.ks or (1, 5, 10), corpus, p.agreement)
    table = comparison_table(docs, [e.name for e in encoders])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "comparison.csv", table.to_csv(index_label="model"))
    atomic_write_text(out / "comparison.json", json.dumps(
        {"config": dataclasses.asdict(cfg), "models": specs, "table": json.loads(table.to_json(orient="index"))}, indent=1))
    atomic_write_text(out / "comparison.md", render_comparison(table, docs))
    return docs


def _pct(f: float) -> str:
    return f"{100 * float(f):g}%"


def comparison_table(docs: dict, models: list[str]) -> pd.DataFrame:
    """One row per model; columns ``protocol: metric`` (mean over seeds where there are seeds)."""
    rows: dict[str, dict[str, float | None]] = {m: {} for m in models}
    for name, doc in docs.items():
        for model, r in doc["models"].items():
            row = rows.setdefault(model, {})
            if name in LOCALIZED:
                from convirt.evaluation.localized import comparison_columns

                row.update(comparison_columns(name, r))
            elif "summary" in r:
                for key, v in r["summary"].items():
                    row[f"{name} AUROC @{_pct(float(key))}"] = v["macro_auroc"]["mean"]
                    row[f"{name} AUROC @{_pct(float(key))} std"] = v["macro_auroc"]["std"]
            elif name == "retrieval":
                for direction, label in (("image_to_image", "image→image"), ("text_to_image", "text→image")):
                    for k, v in ((r.get(direction) or {}).get("mean") or {}).items():
                        row[f"{label} {k}"] = v
            elif name == "zeroshot":
                headline = "accuracy" if r.get("task") == "multiclass" else "macro_auroc"
                row[f"zero-shot {headline.replace('_', ' ')}"] = r.get(headline)
            else:
                for key in sorted(k for k in r if k[:2] in ("R@", "P@") and r[k] is not None):
                    row[f"report {key}"] = r[key]
    return pd.DataFrame.from_dict(rows, orient="index")


def render_comparison(table: pd.DataFrame, docs: dict) -> str:
    cols = [c for c in table.columns if not c.endswith(" std")]
    lines = ["# Evaluation suite", "", "Mean ± std over seeds for the classification protocols (test macro AUROC); "
             "retrieval and zero-shot numbers on the test rows. Details: one folder per protocol.", "",
             "| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for model, row in table.iterrows():
        cells = []
        for c in cols:
            v, sd = row.get(c), row.get(f"{c} std")
            cells.append("–" if v is None or pd.isna(v) else f"{v:.3f}" + ("" if sd is None or pd.isna(sd) else f" ± {sd:.3f}"))
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines += ["", "## Protocols", ""] + [f"- [{n}]({n}/results.md)" for n in docs]
    return "\n".join(lines) + "\n"
