"""``convirt benchmark``: pretrain several methods with the same budget, evaluate them all the same way.

The paper's argument is a comparison (Table 2–3): ConVIRT against random and ImageNet init, the
captioning and contrastive-binary baselines, and image-only SimCLR / MoCo v2. Here every method

* is pretrained by ``convirt pretrain --method M`` from the same preset (``demo``: ResNet-18, a
  small text tower, the same augmentations), with the same number of optimiser steps and the same
  batch size (pairs, or images for image-only methods) — "same compute" means the same updates on
  the same data stream, not the same FLOPs (SimCLR's two views cost it more per step);
* is scored by the same evaluation code on the same pinned subsets: linear probes at label
  fractions (:func:`convirt.evaluation.protocols.run_linear`) and, for methods whose text tower is
  trained into the joint space, text→image Precision@K with negation-aware queries, zero-shot
  classification from one prompt per finding, image→report retrieval (Precision@10 by exact label
  agreement) and, on the synthetic data, the localisation check (does the finding's word point
  inside the finding's mask? :mod:`convirt.evaluation.localisation`), with an untrained copy of
  each joint model as its random reference. GLoRIA models use their global + local similarity;
* on the synthetic data, also scored on the localized tasks of Müller et al. (ECCV 2022), encoder
  fine-tuned: U-Net segmentation of one finding (Dice) and Faster R-CNN detection of another
  (mAP@0.5), :mod:`convirt.evaluation.localized`, on the same split for every encoder.

Runs are kept in ``OUT/runs/METHOD`` and resumed (``--resume``) when the benchmark is started
again, so an interrupted benchmark loses at most one checkpoint interval. The claims of the issue
are checked against the numbers and written down whether they hold or not.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from convirt.atomic import atomic_write_text
from convirt.config import changed_settings
from convirt.errors import ConfigError
from convirt.parallel import plan, run_jobs

BASELINE_SPECS = {"random": "random:{model}", "imagenet": "imagenet:{model}"}
JOINT_COLUMNS = ("text→image P@10", "zero-shot AUROC", "image→report P@10", "loc. mass inside", "pointing game")
LOCALIZED_TABLE = ("segment Dice", "detect mAP@0.5")
# methods whose text tower is trained into the joint space (text->image retrieval is meaningful)
JOINT_SPACE = ("convirt", "clip", "binary", "gloria")


@dataclass(frozen=True)
class BenchSize:
    n_images: int
    max_steps: int
    batch_size: int
    strength: float
    fractions: tuple[float, ...]
    seeds: tuple[int, ...]
    localized_epochs: int = 0  # segmentation / detection fine-tuning epochs per encoder (0: not run)
    localized_fraction: float = 0.1  # of the training labels: where Müller et al. find initialisation matters most


# the findings of Müller et al. (2022): SIIM-ACR pneumothorax segmentation, RSNA pneumonia detection
LOCALIZED_FINDINGS = {"segment": "Pneumothorax", "detect": "Pneumonia"}
LOCALIZED_COLUMNS = {"segment": ("dice", "segment Dice"), "detect": ("map_50", "detect mAP@0.5")}
LOCALIZED_PRECISION = {"segment": "bf16-mixed", "detect": "32-true"}  # torchvision's RoI ops: float32


SIZES = {
    "default": BenchSize(3000, 600, 64, 2.0, (0.01, 0.1, 1.0), (0, 1, 2), 8),  # the demo's budget per method
    "small": BenchSize(800, 80, 32, 2.0, (0.1, 1.0), (0, 1), 0),
}


def parse_methods(text: str) -> list[str]:
    from convirt.methods import METHODS

    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS and m not in BASELINE_SPECS]
    if unknown or not methods:
        raise ConfigError(f"unknown method(s) {unknown}; choose from {sorted([*METHODS, *BASELINE_SPECS])}")
    return list(dict.fromkeys(methods))


def _queries_csv(path: Path, categories: list[str]) -> Path | None:
    """The demo's query (and negation) per synthetic finding; None when no label has one."""
    from convirt.demo import NEGATED, QUERIES

    rows = [{"Variable": c, "Text": QUERIES[c], "Negated": NEGATED[c]} for c in categories if c in QUERIES]
    if not rows:
        return None
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _pretrain(method: str, manifest: Path, out: Path, spec: BenchSize, seed: int, progress: bool,
              overrides: list[str]) -> dict:
    from convirt.config import load_config
    from convirt.training.run import pretrain

    cfg = load_config("demo", [f"method={method}", f"data.train={manifest}", f"trainer.out_dir={out}",
                               f"trainer.max_steps={spec.max_steps}", f"data.batch_size={spec.batch_size}",
                               f"trainer.seed={seed}", f"trainer.progress_bar={str(progress).lower()}",
                               *_fitted_defaults(method, manifest, spec), *overrides])
    changed = changed_settings(out / "config.yaml", cfg)
    if changed:
        raise ConfigError(f"{out} holds a {method} run with other settings ({', '.join(changed)}); reusing or resuming "
                          f"it would mix them. Remove that folder, or give the benchmark another --out")
    if (out / "summary.json").is_file() and (out / "model").is_dir():
        summary = json.loads((out / "summary.json").read_text())
        if summary.get("global_step") == spec.max_steps:
            return {**summary, "reused": True}
    start = time.time()
    summary = pretrain(cfg, resume=(out / "checkpoints").is_dir())
    return {**summary, "wall_s": round(time.time() - start, 1)}


def moco_queue_size(n_train: int, batch_size: int) -> int:
    """MoCo v2's queue for the benchmark's training set: the largest power of two <= half the set, at most
    MoCo v2's 65,536 keys (5% of ImageNet's 1.28M images) and at least one batch. ``ssl.queue_size``'s
    default, 4,096, exceeds small sets (2,110 training images at the default size), where the queue
    would hold older keys of the very images it contrasts."""
    return max(batch_size, min(65536, 2 ** max(0, int(n_train // 2).bit_length() - 1)))


def _fitted_defaults(method: str, manifest: Path, spec: BenchSize) -> list[str]:
    """Overrides the data set's size calls for (the user's ``--set`` come after and win)."""
    if method != "mocov2":
        return []
    from convirt.data.manifest import read_manifest

    df = read_manifest(manifest)
    n_train = int((df["split"] == "train").sum()) if "split" in df else len(df)
    return [f"ssl.queue_size={moco_queue_size(n_train, spec.batch_size)}"]


def run_benchmark(methods: list[str], out: str | Path, data: str = "synth", size: str | BenchSize = "default", seed: int = 0,
                  labels: list[str] | None = None, image_model: str = "resnet18", progress: bool = True,
                  overrides: list[str] | None = None, jobs: int | str = 1) -> dict:
    """Pretrain each method, evaluate all, write ``benchmark.md`` / ``benchmark.json`` / ``benchmark.csv``.

    ``jobs``: pretraining and localized fine-tuning runs side by side (:mod:`convirt.parallel`;
    ``"auto"``: one per CPU core without a GPU). Side by side, each run reads its data in its own
    process (``data.num_workers=0``: the cores are taken); evaluation runs here, in turn."""
    from convirt.data.synthetic import FINDINGS
    from convirt.demo import generate_once
    from convirt.evaluation.encoders import load_encoder
    from convirt.evaluation.labelled import load_labelled
    from convirt.evaluation.protocols import Settings, run_linear
    from convirt.evaluation.shared_space import run_retrieval
    from convirt.methods import METHODS

    from convirt.config import load_config

    if not isinstance(size, BenchSize) and size not in SIZES:
        raise ConfigError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    out, spec = Path(out), size if isinstance(size, BenchSize) else SIZES[size]
    overrides = [f"image.model={image_model}", *(overrides or [])]
    image_size = load_config("demo", overrides).image.size  # baselines see what the pretrained encoders see
    if data == "synth":
        from convirt.demo import DemoSize

        manifest = generate_once(out / "data", DemoSize(spec.n_images, spec.max_steps, spec.batch_size, spec.strength),
                                 seed, progress)
        labels = labels or [f for f in FINDINGS if f != "No Finding"]
    else:
        manifest = Path(data)
    trained = [m for m in methods if m not in BASELINE_SPECS]
    processes, threads = plan(jobs, len(trained))
    side_by_side = ["data.num_workers=0"] if processes > 1 else []
    summaries = run_jobs([(m, _pretrain, (m, manifest, out / "runs" / m, spec, seed, progress and processes == 1,
                                          [*side_by_side, *overrides])) for m in trained],
                         processes, threads, progress, "pretraining")
    # a reused run reports the training time it took, not the time it took to find it
    timings = {m: s["fit_seconds"] if s.get("reused") else s["wall_s"] for m, s in summaries.items()}
    encoders = [load_encoder(BASELINE_SPECS[m].format(model=image_model), size=image_size, seed=seed, name=m)
                if m in BASELINE_SPECS else load_encoder(str(out / "runs" / m), name=m) for m in methods]

    labelled = load_labelled(manifest, labels)
    settings = Settings(fractions=spec.fractions, seeds=spec.seeds, cache_dir=out / "cache", progress=progress,
                        n_boot=200)
    linear = run_linear(encoders, labelled, out / "linear", settings)
    joint = [e for e in encoders if e.name in JOINT_SPACE and METHODS[e.name].needs_text]
    retrieval = None
    test_only = load_labelled(manifest, labels, required_splits=())
    queries = _queries_csv(out / "text_queries.csv", list(test_only.label_names))
    if joint and queries:
        retrieval = run_retrieval(joint, test_only, out / "retrieval", settings, ks=(5, 10, 50), text_queries=queries,
                                  gallery=0)
    doc = {"methods": methods, "size": size if isinstance(size, str) else "custom", "spec": spec.__dict__, "seed": seed, "data": str(manifest),
           "parallel": {"processes": processes, "threads": threads},
           "pretrain": summaries, "pretrain_seconds": timings, "linear": _linear_table(linear),
           "text_to_image": {n: m["text_to_image"]["mean"] for n, m in (retrieval or {"models": {}})["models"].items()
                             if m.get("text_to_image")}}
    doc.update(_joint_space(joint, test_only, out, settings, manifest if data == "synth" else None, seed, progress))
    if data == "synth" and spec.localized_epochs:
        doc["localized"] = run_localized_tasks(encoders, manifest.parent, out, spec, seed, progress, jobs)
    doc["claims"] = check_claims(doc)
    atomic_write_text(out / "benchmark.json", json.dumps(doc, indent=1, default=float))
    table = _table(doc)
    atomic_write_text(out / "benchmark.csv", table.to_csv(index_label="method"))
    atomic_write_text(out / "benchmark.md", render(doc, table))
    return doc


def _joint_space(joint: list, data, out: Path, settings, synth_manifest: Path | None, seed: int, progress: bool) -> dict:
    """Zero-shot classification, image→report retrieval and (synthetic data) localisation of the joint-space methods."""
    from convirt.demo import QUERIES
    from convirt.evaluation.localisation import run_localisation, untrained_copy
    from convirt.evaluation.shared_space import run_report_retrieval, run_zeroshot

    found = {"zeroshot": {}, "report_retrieval": {}, "localisation": {}}
    if not joint:
        return found
    prompts = {c: [QUERIES[c]] for c in data.label_names if c in QUERIES}
    if len(prompts) == len(data.label_names):
        z = run_zeroshot(joint, data, out / "zeroshot", settings, prompts, "mean", "convirt.demo.QUERIES")
        found["zeroshot"] = {n: {"macro_auroc": m.get("macro_auroc"), "similarity": m["similarity"]}
                             for n, m in z["models"].items()}
    r = run_report_retrieval(joint, data, out / "report_retrieval", settings, ks=(1, 10))
    found["report_retrieval"] = {n: {"R@10": m.get("R@10"), "P@10": m.get("P@10"), "similarity": m["similarity"]}
                                 for n, m in r["models"].items()}
    if synth_manifest is not None:
        models = {e.name: e.dual for e in joint}
        for e in joint:  # the random-encoder reference of each: same architecture, random weights
            models[f"untrained {e.name}"] = untrained_copy(e.dual, seed)
        loc = run_localisation(models, synth_manifest.parent, out / "localisation", progress=progress)
        found["localisation"] = {n: {"mass_inside": m["mass_inside"], "pointing": m["pointing"], "method": m["method"]}
                                 for n, m in loc["models"].items()}
    return found


def run_localized_tasks(encoders: list, synth_root: Path, out: Path, spec: BenchSize, seed: int, progress: bool,
                        jobs: int | str = 1) -> dict:
    """Fine-tuned segmentation and detection of every encoder (``spec.localized_fraction`` of the training
    labels, one seed, every epoch of the budget: no early stopping), one folder per task and encoder;
    ``jobs`` of them side by side (:mod:`convirt.parallel`).

    A finished encoder is reused when its folder holds a result for the same weights and training
    settings, so a restarted benchmark does not train it again. Findings are rare (12% of the
    synthetic images), so half of the training draws show one (``positive_fraction`` 0.5).
    """
    from convirt.data.synthetic import write_localized_manifest
    from convirt.evaluation.localized import default_config
    from convirt.evaluation.protocols import Settings

    processes, threads = plan(jobs, len(LOCALIZED_FINDINGS) * len(encoders))
    # side by side: one progress bar over the runs instead of one per run
    settings = Settings(fractions=(spec.localized_fraction,), seeds=(seed,), cache_dir=out / "cache",
                        progress=progress and processes == 1, n_boot=200)
    runs, found = [], {}
    for task, finding in LOCALIZED_FINDINGS.items():
        manifest = write_localized_manifest(synth_root, finding)
        cfg = default_config(False, max_epochs=spec.localized_epochs, patience=spec.localized_epochs,
                             positive_fraction=0.5, precision=LOCALIZED_PRECISION[task])
        found[task] = {"finding": finding, "models": {}}
        for enc in encoders:
            # the image tower only (a text tower's tokenizer need not travel to another process); a random
            # encoder keeps the batch-norm statistics the linear probes recalibrated, and its fingerprint
            runs.append((f"{task} {enc.name}", _localized_run,
                         (task, manifest, replace(enc, dual=None), out / task / enc.name, settings, cfg)))
    for label, row in run_jobs(runs, processes, threads, progress, "segmentation and detection").items():
        task, name = label.split(" ", 1)
        found[task]["models"][name] = row
    return found


def _localized_run(task: str, manifest: Path, enc, folder: Path, settings, cfg) -> dict:
    """One encoder fine-tuned on one localized task (or its stored result): the benchmark's row for it."""
    from dataclasses import asdict

    from convirt.evaluation.localized import KINDS, load_localized

    if task == "segment":
        from convirt.evaluation.segmentation import run_segmentation as run
    else:
        from convirt.evaluation.detection import run_detection as run
    result = _reusable(folder / "results.json", enc, asdict(cfg))
    if result is None:
        result = run([enc], load_localized(manifest, KINDS[task]), folder, settings, cfg, freeze=False, overlays=8)
    run_ = result["models"][enc.name]["runs"][0]
    key, _ = LOCALIZED_COLUMNS[task]
    return {**{k: run_["test"].get(k) for k in ("dice", "iou", "map_50", "map", "map_75") if k in run_["test"]},
            "epochs": run_["epochs"], "headline": run_["test"].get(key)}


def _reusable(results: Path, encoder, training: dict) -> dict | None:
    """The stored result of ``encoder`` (same weights, same training settings), or None."""
    if not results.is_file():
        return None
    doc = json.loads(results.read_text())
    m = doc.get("models", {}).get(encoder.name)
    if m is None or m["model"].get("fingerprint") != encoder.fingerprint() or doc.get("training") != training:
        return None
    return doc


def _linear_table(linear: dict) -> dict:
    return {name: {key: v["macro_auroc"] for key, v in m["summary"].items()} for name, m in linear["models"].items()}


def _auroc(doc: dict, method: str, fraction: float):
    stat = doc["linear"].get(method, {}).get(repr(float(fraction)))
    return None if not stat or stat["mean"] is None else stat


def check_claims(doc: dict) -> list[dict]:
    """The paper's claims, each with the numbers it was judged on; ``holds`` is None when not testable."""
    fractions = sorted(float(f) for f in doc["spec"]["fractions"])
    low, high = fractions[0], fractions[-1]
    # the paper's data-efficiency claim: convirt with fewer labels (10%, else the smallest fraction) >= random with all
    mid = next((f for f in fractions if low < f < high), low)
    claims = []

    def order(name: str, a: str, b: str, fa: float, fb: float, margin: float = 0.0) -> None:
        x, y = _auroc(doc, a, fa), _auroc(doc, b, fb)
        holds = None if x is None or y is None else x["mean"] >= y["mean"] + margin
        claims.append({"claim": name, "holds": holds, "left": x and x["mean"], "right": y and y["mean"],
                       "left_std": x and x["std"], "right_std": y and y["std"]})

    for ssl in ("simclr", "mocov2"):
        order(f"linear AUROC at {low:g}: convirt > {ssl}", "convirt", ssl, low, low)
        order(f"linear AUROC at {low:g}: {ssl} > random", ssl, "random", low, low)
    if mid < high:
        order(f"convirt at {mid:g} of the labels >= random at {high:g}", "convirt", "random", mid, high)
    t2i = doc["text_to_image"]
    if "convirt" in t2i and "binary" in t2i:
        a, b = t2i["convirt"]["P@10"], t2i["binary"]["P@10"]
        claims.append({"claim": "text->image P@10: convirt far above binary (>= 1.5x)", "holds": a >= 1.5 * b,
                       "left": a, "right": b})
    reports = doc.get("report_retrieval", {})  # the same joint space, one query per test image, not one per finding
    if "convirt" in reports and "binary" in reports and None not in (reports["convirt"]["P@10"], reports["binary"]["P@10"]):
        a, b = reports["convirt"]["P@10"], reports["binary"]["P@10"]
        claims.append({"claim": "image->report P@10: convirt far above binary (>= 1.5x)", "holds": a >= 1.5 * b,
                       "left": a, "right": b})
    for task, (_, title) in LOCALIZED_COLUMNS.items():  # Müller et al.: pretrained init beats random on localized tasks
        part = doc.get("localized", {}).get(task, {}).get("models", {})
        for method in ("convirt", "gloria"):
            if method in part and "random" in part and None not in (part[method]["headline"], part["random"]["headline"]):
                a, b = part[method]["headline"], part["random"]["headline"]
                claims.append({"claim": f"{title} ({doc['localized'][task]['finding']}): {method} > random",
                               "holds": a > b, "left": a, "right": b})
    loc = doc.get("localisation", {})
    if "gloria" in loc and loc.get("untrained gloria", {}).get("mass_inside") is not None:
        a, b = loc["gloria"]["mass_inside"], loc["untrained gloria"]["mass_inside"]
        claims.append({"claim": "localisation: gloria's attention mass inside the finding >= 1.5x an untrained encoder's",
                       "holds": a >= 1.5 * b, "left": a, "right": b})
    for key, metric, label in (("zeroshot", "macro_auroc", "zero-shot macro AUROC"),
                               ("report_retrieval", "P@10", "image->report P@10")):
        part = doc.get(key, {})
        if "gloria" in part and "convirt" in part and None not in (part["gloria"][metric], part["convirt"][metric]):
            a, b = part["gloria"][metric], part["convirt"][metric]
            claims.append({"claim": f"{label}: gloria > convirt", "holds": a > b, "left": a, "right": b})
    return claims


def _table(doc: dict) -> pd.DataFrame:
    rows = {}
    for method in doc["methods"]:
        row = {}
        for f in doc["spec"]["fractions"]:
            stat = _auroc(doc, method, f)
            row[f"AUROC @{100 * f:g}%"] = None if stat is None else stat["mean"]
            row[f"AUROC @{100 * f:g}% std"] = None if stat is None else stat["std"]
        row["text→image P@10"] = doc["text_to_image"].get(method, {}).get("P@10")
        row["zero-shot AUROC"] = doc.get("zeroshot", {}).get(method, {}).get("macro_auroc")
        row["image→report P@10"] = doc.get("report_retrieval", {}).get(method, {}).get("P@10")
        row["loc. mass inside"] = doc.get("localisation", {}).get(method, {}).get("mass_inside")
        row["pointing game"] = doc.get("localisation", {}).get(method, {}).get("pointing")
        for task, (_, title) in LOCALIZED_COLUMNS.items():
            row[title] = doc.get("localized", {}).get(task, {}).get("models", {}).get(method, {}).get("headline")
        row["pretrain s"] = doc["pretrain_seconds"].get(method)
        rows[method] = row
    for name, m in doc.get("localisation", {}).items():  # the references: untrained copy, uniform map
        if name not in rows:
            rows[name] = {"loc. mass inside": m["mass_inside"], "pointing game": m["pointing"]}
    return pd.DataFrame.from_dict(rows, orient="index")


def render(doc: dict, table: pd.DataFrame) -> str:
    fr = [f"AUROC @{100 * f:g}%" for f in doc["spec"]["fractions"]]
    columns = [*JOINT_COLUMNS, *(LOCALIZED_TABLE if doc.get("localized") else ())]
    lines = ["# Benchmark: every initialisation, same budget, same evaluation", "",
             f"Size `{doc['size']}`: {doc['spec']['n_images']} synthetic radiographs, {doc['spec']['max_steps']} steps of "
             f"batch {doc['spec']['batch_size']} per method; linear-probe test macro AUROC (mean ± std over seeds "
             f"{list(doc['spec']['seeds'])}), text→image P@10 with negation-aware queries.", "",
             "| method | " + " | ".join(fr) + " | " + " | ".join(columns) + " | pretrain s |",
             "|---|" + "---|" * (len(fr) + len(columns) + 1)]
    num = lambda v: "–" if v is None or pd.isna(v) else f"{v:.3f}"  # noqa: E731
    for method, row in table.iterrows():
        cells = []
        for c in fr:
            v, sd = row.get(c), row.get(f"{c} std")
            cells.append("–" if v is None or pd.isna(v) else f"{v:.3f}" + ("" if sd is None or pd.isna(sd) else f" ± {sd:.3f}"))
        secs = row.get("pretrain s")
        cells += [num(row.get(c)) for c in columns] + ["–" if secs is None or pd.isna(secs) else f"{secs:.0f}"]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "## The paper's claims on this data", ""]
    for c in doc["claims"]:
        verdict = {True: "holds", False: "does NOT hold", None: "not testable (method missing)"}[c["holds"]]
        nums = "" if c["left"] is None or c["right"] is None else f" ({c['left']:.3f} vs {c['right']:.3f})"
        lines.append(f"- {c['claim']}: **{verdict}**{nums}")
    lines += ["", "Zero-shot: macro AUROC from one prompt per finding; image→report: P@10 by exact label agreement "
              "among the test reports; localisation: the finding word's map (GLoRIA attention, else Grad-CAM of the "
              "image-sentence similarity) inside the finding's mask, with an untrained copy and a uniform map as references."]
    details = ["[linear/results.md](linear/results.md)", "[retrieval/results.md](retrieval/results.md)",
               "[zeroshot/results.md](zeroshot/results.md)", "[report_retrieval/results.md](report_retrieval/results.md)",
               "[localisation/results.md](localisation/results.md)"]
    if doc.get("localized"):
        seg, det = doc["localized"].get("segment", {}), doc["localized"].get("detect", {})
        lines += ["", f"Localized tasks (encoder fine-tuned, {100 * doc['spec']['localized_fraction']:g}% of the "
                  f"training labels, seed {doc['seed']}, {doc['spec']['localized_epochs']} epochs, half the "
                  f"training draws showing the finding): "
                  f"U-Net segmentation of {seg.get('finding', '–')} (test Dice, pixels pooled) and Faster R-CNN "
                  f"detection of {det.get('finding', '–')} (test mAP@0.5)."]
        details += [f"[{t}/{name}/results.md]({t}/{name}/results.md)" for t in doc["localized"]
                    for name in doc["localized"][t]["models"]]
    lines += ["", "Details: " + ", ".join(details) + "."]
    return "\n".join(lines) + "\n"
