"""``convirt data synth``: write the seeded synthetic chest X-ray set (images, masks, reports, manifest)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "synth", help="generate a seeded synthetic chest X-ray data set with reports and masks",
        description="Writes DIR/images/*.png, DIR/masks/*.png (bit k = finding k), DIR/manifest.csv (image, text, "
        "patient_id, split, one 0/1 column per finding), DIR/findings.jsonl and DIR/meta.json. The same seed, n "
        "and size give byte-identical files for any number of workers.",
        epilog="example:\n  convirt data synth --out data/synth --n 3000 --seed 0 --size 128",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, default=3000, help="number of images (default 3000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    p.add_argument("--strength", type=float, default=1.0,
                   help="visibility of the findings; 1 is the calibrated default, larger is easier (default 1.0)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores, at most 8)")
    p.add_argument("--localized", nargs="+", metavar="FINDING", default=[],
                   help="also write DIR/localized_<finding>.csv with mask (PNG) and boxes (JSON) columns for "
                        "`convirt evaluate segment|detect`, e.g. --localized Pneumothorax Pneumonia")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from convirt.data.synthetic import generate

    manifest = generate(args.out, n=args.n, seed=args.seed, size=args.size, strength=args.strength,
                        workers=args.workers, progress=not args.no_progress)
    print(f"wrote {args.n} images and {manifest}")
    if args.localized:
        from convirt.data.synthetic import write_localized_manifest

        for finding in args.localized:
            print(f"wrote {write_localized_manifest(args.out, finding)}")
    return 0
