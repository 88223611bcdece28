"""``convirt data cache``: decode every image of a manifest once into a memory-mapped uint8 store."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "cache", help="decode, window and resize every image once into a memory-mapped cache",
        description="Decode every image of MANIFEST (PNG/JPEG/DICOM, windowed), resize its shorter side to\n"
        "--size, cut the centre square and store it as uint8 in OUT/images.npy (+ OUT/index.json).\n"
        "Reading the cache instead of the files removes JPEG/DICOM decoding from the input pipeline.\n"
        "Images that fail to decode are listed (and replaced at run time, as without a cache).",
        epilog="example:\n  convirt data cache data/mimic/manifest.csv --size 256 --out data/mimic/cache256",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("manifest", metavar="MANIFEST")
    p.add_argument("--out", required=True, help="cache folder (replaced atomically when it exists)")
    p.add_argument("--size", type=int, default=256, help="side of the stored square in px (default 256; >= training size)")
    p.add_argument("--workers", type=int, default=None, help="decoding threads (default: number of CPUs)")
    p.add_argument("--allow-absolute-paths", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from convirt.data.cache import build_cache

    index = build_cache(args.manifest, args.out, args.size, args.workers, args.allow_absolute_paths,
                        progress=sys.stderr.isatty())
    n, bad = index["n_images"], len(index["failed"])
    size_mb = (Path(args.out) / "images.npy").stat().st_size / 2**20
    print(f"cached {n - bad} of {n} images at {index['size']}x{index['size']} px into {args.out} ({size_mb:.1f} MiB)")
    for path, reason in list(index["failed"].items())[:20]:
        print(f"  not cached: {path}: {reason}")
    if bad > 20:
        print(f"  ... and {bad - 20} more (see {args.out}/index.json)")
    return 0
