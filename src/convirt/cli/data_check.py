"""``convirt data check``: list every bad row of a manifest before a run is started on it."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "check", help="validate a manifest: columns, image files, reports",
        description="Check a manifest (CSV, JSONL or Parquet with columns image and text) and list every\n"
        "problem by row and column: unreadable manifest, missing columns, missing or undecodable images,\n"
        "paths leaving the manifest's folder, empty or non-text reports, duplicate rows (a warning).\n"
        "Row N is the N-th data row after the header. Report text is never printed.\n"
        "Exit status: 0 no problems, 1 problems found, 2 usage error.",
        epilog="examples:\n  convirt data check data/manifest.csv\n"
        "  convirt data check data/manifest.jsonl --no-decode --json check.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("manifest", metavar="MANIFEST", help="the manifest file (.csv, .jsonl or .parquet)")
    p.add_argument("--no-decode", action="store_true", help="only check that image files exist; do not decode them (faster)")
    p.add_argument("--json", metavar="OUT", help="also write the full result as JSON to this file")
    p.add_argument("--allow-absolute-paths", action="store_true",
                   help="accept absolute image paths (by default paths must be relative to the manifest's folder)")
    p.add_argument("--workers", type=int, default=None, help="threads decoding images (default: number of CPUs)")
    p.add_argument("--no-text", action="store_true",
                   help="a labelled set without reports (e.g. from `convirt data prepare kermany`): no text column needed")
    p.set_defaults(func=run)


def run(args) -> int:
    from convirt.atomic import atomic_write_text
    from convirt.data.check import check_manifest

    report = check_manifest(args.manifest, decode_images=not args.no_decode, allow_absolute=args.allow_absolute_paths,
                            progress=sys.stderr.isatty(), workers=args.workers, require_text=not args.no_text)
    n_ok = len(report.ok_rows)
    print(f"{report.path}: {report.n_rows} rows, {n_ok} ok, {report.n_bad_rows} with problems"
          + ("" if report.ok else f" ({len(report.bad)} problem(s))"))
    for bad in report.bad:
        print(f"  {bad}")
    for warning in report.warnings:
        print(f"  warning: {warning}")
    if args.json:
        atomic_write_text(args.json, json.dumps(report.to_dict(), indent=2) + "\n")
    return 0 if report.ok else 1
