"""``convirt data shard``: a manifest's preprocessed images and reports as WebDataset tar shards."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "shard", help="write WebDataset tar shards (preprocessed images + reports) for multi-node training",
        description="Decode every image of the rows of one split of MANIFEST exactly as `convirt data cache` does\n"
        "(windowed, shorter side resized to --size, centre square, uint8) and write them with the reports\n"
        "into OUT/<split>-NNNNNN.tar (WebDataset format), plus OUT/index.json (shard names, sample counts,\n"
        "sha256, preprocessing parameters, the manifest's sha256), written last: a set without an index\n"
        "is incomplete and is refused. Train from it with `--set data.shards=OUT` (data.train stays the\n"
        "manifest: validation rows and bad-row checks come from it).",
        epilog="example:\n  convirt data shard data/mimic/manifest.csv --out data/mimic/shards256 --size 256 --samples-per-shard 1000\n"
        "  convirt pretrain --train data/mimic/manifest.csv --set data.shards=data/mimic/shards256",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("manifest", metavar="MANIFEST")
    p.add_argument("--out", required=True, help="shard folder, one split per folder (its index is replaced last)")
    p.add_argument("--size", type=int, default=256, help="side of the stored square in px (default 256; >= training size)")
    p.add_argument("--samples-per-shard", type=int, default=1000,
                   help="rows per tar (default 1000); want at least ranks x loader workers shards")
    p.add_argument("--split", default="train", choices=["train", "valid", "test", "all"],
                   help="rows of this value of the manifest's split column (default train; no column: every row)")
    p.add_argument("--encoding", default="npy", choices=["npy", "png"],
                   help="image storage, both lossless: npy (fastest to read, default) or png (smaller)")
    p.add_argument("--workers", type=int, default=None, help="decoding threads (default: number of CPUs)")
    p.add_argument("--allow-absolute-paths", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from convirt.data.shards import write_shards

    index = write_shards(args.manifest, args.out, args.size, args.samples_per_shard, args.split, args.encoding,
                         args.workers, args.allow_absolute_paths, progress=sys.stderr.isatty())
    shards = index["shards"]
    size_mb = sum(s["bytes"] for s in shards) / 2**20
    print(f"wrote {index['n_samples']} {args.split} rows in {len(shards)} shard(s) of <= {args.samples_per_shard} "
          f"({size_mb:.1f} MiB) into {args.out}, index {args.out}/index.json")
    failed = list(index["failed"].items())
    for row, views in failed[:20]:
        print(f"  row {row}: image not stored: " + "; ".join(f"view {v}: {r}" for v, r in views.items()))
    if len(failed) > 20:
        print(f"  ... and {len(failed) - 20} more (see {args.out}/index.json)")
    return 0
