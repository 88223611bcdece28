"""``convirt data prepare``: a downloaded data set -> a checked manifest with pinned splits.

Every adapter's :class:`~convirt.data.adapters.base.Table` is written the same way:

1. rows whose image files are missing are dropped (and counted), views that are missing removed;
2. image paths are made relative to the output folder. Data sets are large and stay where they
   were downloaded, so ``OUT/data`` is a symbolic link to the image folder and the manifest says
   ``data/files/p10/...``: a manifest that never needs ``data.allow_absolute_paths``, an output
   folder that can be moved, and a data set that can be re-pointed (``ln -sfn NEW OUT/data``).
   When the image folder is inside ``OUT`` no link is made;
3. splits are assigned by patient (:mod:`convirt.data.split`) and pinned in ``splits.json``;
4. ``manifest.csv`` is written atomically and checked with :func:`convirt.data.check.check_manifest`;
5. ``summary.json`` records counts only (studies, images, patients, labels, dropped rows), never text.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from convirt.atomic import atomic_path, atomic_write_text
from convirt.data.adapters import get_adapter
from convirt.data.adapters.base import Options, Table, progress
from convirt.data.adapters.labels import label_counts
from convirt.data.manifest import VIEW_SEPARATOR
from convirt.data.split import DEFAULT_FRACTIONS, SPLITS, assign_splits, parse_fractions, write_splits
from convirt.errors import DataError

LINK_NAME = "data"
FIRST_COLUMNS = ("id", "image", "text", "patient_id", "split")


def prepare(name: str, root: str | Path, out: str | Path, options: Options | None = None,
            fractions=DEFAULT_FRACTIONS, redraw_splits: bool = False, decode_images: bool = False) -> dict:
    """Prepare data set ``name`` from ``root`` into ``out``; returns the summary (also in summary.json).

    ``summary["check"]["ok"]`` is False when the written manifest fails the check; the files are
    still written so that ``check.json`` can be read.
    """
    adapter = get_adapter(name)
    options = options or Options()
    fractions = parse_fractions(fractions)
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise DataError(f"--root {root} is not a folder: point it at the downloaded {adapter.name} data "
                        f"(`convirt data prepare --list` shows the expected layout)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "check.json").unlink(missing_ok=True)  # from an earlier run
    table = adapter.load(root, options, out)
    df = _with_reserved_columns(table)
    dropped = dict(table.dropped)
    no_patient = df["patient_id"].str.strip() == ""
    if no_patient.any():  # a row without a patient is its own patient: it cannot leak into another split
        df.loc[no_patient, "patient_id"] = df.loc[no_patient, "id"]
        table.notes["rows without a patient id (own patient)"] = int(no_patient.sum())
    if not table.reports_only:
        df, missing = _drop_missing_images(df, table.image_root, options)
        if missing:
            dropped["image file missing"] = missing
    if df.empty:
        raise DataError(f"no usable rows in {root} for {adapter.name} (left out: {dropped or 'nothing'})")
    duplicated = df["id"][df["id"].duplicated()]
    if len(duplicated):
        raise DataError(f"{adapter.name}: {len(duplicated)} duplicate row id(s), e.g. {duplicated.iloc[0]!r}")

    link = None
    if not table.reports_only:
        prefix, link = _link_images(table.image_root, out)
        df["image"] = [_prefixed(cell, prefix) for cell in df["image"]]

    official = df["split"] if not redraw_splits else None
    n_official = 0 if redraw_splits else int((df["split"] != "").sum())
    strata = df[table.stratify].astype(str) if table.stratify else None
    df["split"] = assign_splits(df["patient_id"], official, fractions, options.seed, strata)
    df = _ordered(df, table)

    target = out / ("reports.csv" if table.reports_only else "manifest.csv")
    _write_csv(df, target, table.label_columns)
    for file_name, extra in table.extra_tables.items():
        extra = extra.copy()
        if "image" in extra.columns and not table.reports_only:
            extra["image"] = [_prefixed(cell, prefix) for cell in extra["image"]]
        _write_csv(extra, out / file_name, [c for c in table.label_columns if c in extra.columns])
    split_doc = write_splits(out / "splits.json", df, options.seed, fractions, table.stratify, n_official, redraw_splits)

    check = _check(target, out, table, options, decode_images)
    summary = {
        "dataset": adapter.name, "kind": adapter.kind, "root": str(root.resolve()),
        "image_link": link, "manifest": target.name,
        "studies": int(len(df)),
        "images": 0 if table.reports_only else int(sum(len(c.split(VIEW_SEPARATOR)) for c in df["image"])),
        "patients": int(df["patient_id"].nunique()),
        "splits": split_doc["counts"], "splits_sha256": split_doc["sha256"], "seed": options.seed,
        "fractions": split_doc["fractions"], "official_split_rows": n_official,
        "labels": label_counts(df, table.label_columns),
        "empty_reports": int(dropped.get("empty report", 0)) if table.has_text else None,
        "dropped": dropped, "notes": table.notes,
        "extra_files": sorted(table.extra_tables), "check": check,
    }
    summary = json.loads(json.dumps(summary, default=_plain))  # numpy numbers -> JSON numbers
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _with_reserved_columns(table: Table) -> pd.DataFrame:
    df = table.rows.reset_index(drop=True).copy()
    needed = ["id", "patient_id"] + ([] if table.reports_only else ["image"]) + (["text"] if table.has_text else [])
    missing = [c for c in needed if c not in df.columns]
    if missing:  # an adapter bug, not a data problem
        raise RuntimeError(f"adapter table lacks columns {missing}")
    if "split" not in df.columns:
        df["split"] = ""
    for column in ("id", "patient_id", "split") + (() if table.reports_only else ("image",)):
        df[column] = df[column].fillna("").astype(str)
    return df


def _drop_missing_images(df: pd.DataFrame, image_root: Path, options: Options) -> tuple[pd.DataFrame, int]:
    """Remove views whose file is missing; rows with no view left go. Returns the frame and the rows dropped."""
    kept, keep_row = [], np.ones(len(df), dtype=bool)
    for i, cell in enumerate(progress(df["image"], "checking image files", options, total=len(df), unit="row")):
        views = [v for v in cell.split(VIEW_SEPARATOR) if v and (image_root / v).is_file()]
        keep_row[i] = bool(views)
        kept.append(VIEW_SEPARATOR.join(views))
    df = df.assign(image=kept)[keep_row].reset_index(drop=True)
    return df, int((~keep_row).sum())


def _link_images(image_root: Path, out: Path) -> tuple[str, str | None]:
    """The prefix that makes image paths relative to ``out``, creating ``out/data`` -> image root if needed."""
    target = image_root.resolve()
    try:
        inside = target.relative_to(out.resolve())
        return ("" if inside == Path(".") else inside.as_posix()), None
    except ValueError:
        pass
    link = out / LINK_NAME
    try:
        if link.is_symlink():
            if link.resolve() != target:
                tmp = out / f".{LINK_NAME}.link.tmp"
                tmp.unlink(missing_ok=True)
                tmp.symlink_to(target, target_is_directory=True)
                os.replace(tmp, link)
        elif link.exists():
            raise DataError(f"{link} exists and is not a link: choose an empty --out folder "
                            f"(prepare links {link} to the images at {target})")
        else:
            link.symlink_to(target, target_is_directory=True)
    except OSError as err:
        raise DataError(f"cannot create the link {link} -> {target} ({err.strerror}): use an --out folder that "
                        f"contains the data (e.g. --out {target.parent}) so that image paths can be relative") from None
    return LINK_NAME, f"{LINK_NAME} -> {target}"


def _prefixed(cell: str, prefix: str) -> str:
    if not prefix or not cell:
        return cell
    return VIEW_SEPARATOR.join(f"{prefix}/{view}" for view in cell.split(VIEW_SEPARATOR))


def _ordered(df: pd.DataFrame, table: Table) -> pd.DataFrame:
    first = [c for c in FIRST_COLUMNS if c in df.columns]
    labels = [c for c in table.label_columns if c not in first]
    rest = [c for c in df.columns if c not in first and c not in labels]
    return df[first + labels + rest]


def _write_csv(df: pd.DataFrame, path: Path, label_columns) -> None:
    df = df.copy()
    for column in label_columns:  # 1 / 0 / -1 / blank, not 1.0
        df[column] = pd.to_numeric(df[column], errors="coerce").astype("Int64")
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def _check(target: Path, out: Path, table: Table, options: Options, decode: bool) -> dict:
    from convirt.data.check import check_manifest

    if table.reports_only:
        return {"ok": True, "n_bad_rows": 0, "decoded": False, "note": "reports only: no images to check"}
    results = {}
    for path in [target] + [out / name for name, t in table.extra_tables.items() if "image" in t.columns]:
        report = check_manifest(path, decode_images=decode, require_text=table.has_text and path == target,
                                progress=options.progress)
        results[path.name] = report
    ok = all(r.ok for r in results.values())
    if not ok:
        atomic_write_text(out / "check.json", json.dumps({k: r.to_dict() for k, r in results.items()}, indent=1) + "\n")
    first = [f"{name}: {bad}" for name, r in results.items() for bad in r.bad][:10]
    return {"ok": ok, "n_bad_rows": sum(r.n_bad_rows for r in results.values()), "decoded": decode,
            "warnings": sum(len(r.warnings) for r in results.values()), "first_problems": first}


def format_summary(summary: dict, out: str | Path) -> str:
    """The summary as a few lines for the terminal (counts only)."""
    lines = [f"{summary['dataset']}: {summary['studies']} studies, {summary['images']} images, "
             f"{summary['patients']} patients"]
    parts = [f"{s} {c['rows']} rows / {c['patients']} patients" for s, c in summary["splits"].items() if s in SPLITS]
    lines.append("  splits: " + " | ".join(parts) + f"  (seed {summary['seed']}, sha256 {summary['splits_sha256'][:12]})")
    for label, c in summary["labels"].items():
        counts = ", ".join(f"{v} {k}" for k, v in c.items() if v)
        lines.append(f"  {label}: {counts}")
    if summary["empty_reports"] is not None:
        lines.append(f"  empty reports: {summary['empty_reports']}")
    if summary["dropped"]:
        lines.append("  left out: " + ", ".join(f"{v} ({k})" for k, v in summary["dropped"].items()))
    for key, value in summary["notes"].items():
        lines.append(f"  {key}: {value}")
    check = summary["check"]
    state = "ok" if check["ok"] else f"{check['n_bad_rows']} bad rows (see check.json)"
    decoded = check.get("note") or ("images decoded" if check["decoded"] else "image files found, not decoded")
    files = ", ".join([summary["manifest"], "splits.json", "summary.json", *summary["extra_files"]])
    lines.append(f"  wrote {out}/: {files}" + (f"; {summary['image_link']}" if summary["image_link"] else ""))
    lines.append(f"  check: {state} ({decoded})")
    for problem in check.get("first_problems", []):
        lines.append(f"    {problem}")
    return "\n".join(lines)
