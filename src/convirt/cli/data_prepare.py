"""``convirt data prepare NAME --root DIR --out DIR``: a downloaded data set -> manifest + pinned splits."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# CLI flag -> Options field; flags left at None were not given
_OPTION_FLAGS = {"frontal_only": "--frontal-only", "uncertainty": "--uncertainty", "labels": "--labels",
                 "labeler": "--labeler", "reports": "--reports", "images": "--images", "files": "--files",
                 "reports_only": "--reports-only", "per_class": "--per-class"}


def _dataset_list() -> str:
    from convirt.data.adapters import registry

    lines = []
    for kind in ("image-text", "labelled", "benchmark"):
        lines.append(f"{kind} sets:")
        for name, adapter in registry().items():
            if adapter.kind == kind:
                lines.append(f"  {name:<18} {adapter.description}")
                lines.append(f"  {'':<18}   layout: {adapter.layout}")
    return "\n".join(lines)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "prepare", help="turn a downloaded data set into a checked manifest with pinned patient-level splits",
        description="Read a data set as its publisher ships it (--root) and write to --out: manifest.csv (image paths\n"
        "relative to --out through the link OUT/data -> image folder), splits.json (patient-grouped train/valid/test,\n"
        "seeded, with a sha256 checksum; official splits kept), summary.json (counts only, never report text).\n"
        "The manifest is checked like `convirt data check` (files exist; --decode also decodes every image).\n\n"
        + _dataset_list(),
        epilog="examples:\n  convirt data prepare --list\n"
        "  convirt data prepare kermany --root ../shared/data/kermany-pneumonia --out data/kermany\n"
        "  convirt data prepare mimic-cxr --root physionet.org/files/mimic-cxr-jpg/2.0.0 --reports mimic-cxr-reports.zip "
        "--frontal-only --out data/mimic\n"
        "  convirt data prepare chexpert --root CheXpert-v1.0-small --uncertainty zeros --out data/chexpert",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="the data set (see the list above)")
    p.add_argument("--list", action="store_true", help="list the data sets and their expected layouts, then exit")
    p.add_argument("--root", type=Path, help="the downloaded data set's folder")
    p.add_argument("--out", type=Path, help="output folder (manifest.csv, splits.json, summary.json, data link)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split draw (and of 5x200 sampling; default 0)")
    p.add_argument("--split-fractions", default="0.8,0.1,0.1", metavar="TRAIN,VALID,TEST",
                   help="fractions of rows per split for rows without an official split (default 0.8,0.1,0.1)")
    p.add_argument("--redraw-splits", action="store_true", help="ignore the data set's official split; draw all rows")
    p.add_argument("--decode", action="store_true", help="decode every image while checking (slow on large sets)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    g = p.add_argument_group("data-set options (each applies to some data sets only)")
    g.add_argument("--frontal-only", action="store_const", const=True, default=None,
                   help="keep frontal views (PA/AP) only: mimic-cxr, chexpert, chexpert-plus, covid-notes")
    g.add_argument("--uncertainty", choices=("ones", "zeros", "ignore", "keep"), default=None,
                   help="CheXpert uncertain labels (-1): U-Ones, U-Zeros, U-Ignore (-> blank) or keep as -1; "
                   "with ones/zeros/ignore a blank (not mentioned) becomes 0. Default: ones for chexpert, keep otherwise")
    g.add_argument("--labels", choices=("competition", "all"), default=None,
                   help="chexpert: the 5 competition labels (default) or all 14")
    g.add_argument("--labeler", choices=("chexpert", "negbio"), default=None,
                   help="mimic-cxr: which label file to join (default chexpert)")
    g.add_argument("--reports", type=Path, default=None,
                   help="reports outside --root: mimic-cxr (folder with files/ or mimic-cxr-reports.zip), "
                   "chexpert-plus (df_chexpert_plus_*.csv), iu-xray (ecgen-radiology/ or NLMCXR_reports.tgz)")
    g.add_argument("--images", type=Path, default=None, help="iu-xray: folder of the PNG images")
    g.add_argument("--reports-only", action="store_const", const=True, default=None,
                   help="iu-xray: no images; write the report corpus (reports.csv)")
    g.add_argument("--files", type=Path, default=None,
                   help="chexpert-8x200: folder with the official image-retrieval/ and text-retrieval/ files")
    g.add_argument("--per-class", type=int, default=None, help="chexpert-5x200: images per class (default 200)")
    p.set_defaults(func=run)


def run(args) -> int:
    from convirt.data.adapters import Options, get_adapter
    from convirt.data.prepare import format_summary, prepare
    from convirt.errors import ConfigError

    if args.list:
        print(_dataset_list())
        return 0
    if not args.name or args.root is None or args.out is None:
        raise ConfigError("give a data set NAME, --root and --out (or --list to see the data sets)")
    adapter = get_adapter(args.name)
    given = {field: getattr(args, field) for field in _OPTION_FLAGS if getattr(args, field) is not None}
    unused = [_OPTION_FLAGS[f] for f in given if f not in adapter.options]
    if unused:
        raise ConfigError(f"{', '.join(unused)} does not apply to {adapter.name} "
                          f"(its options: {', '.join(_OPTION_FLAGS[o] for o in adapter.options) or 'none'})")
    options = Options(**given, seed=args.seed, progress=not args.no_progress and sys.stderr.isatty())
    summary = prepare(args.name, args.root, args.out, options, fractions=args.split_fractions,
                      redraw_splits=args.redraw_splits, decode_images=args.decode)
    print(format_summary(summary, args.out))
    return 0 if summary["check"]["ok"] else 1
