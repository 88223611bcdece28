"""Images/s of the training input pipeline: decoding the original files vs reading the image cache or shards.

    python benchmarks/data_loading.py --manifest data/kermany/manifest.csv --size 256 --train-size 224
    python benchmarks/data_loading.py --synthetic 600          # no data needed: generated radiographs

Each path is timed over the same images (decode or cache read, then the paper's training
transform), single process, after a warm-up pass so both read from the page cache: the table shows
what decoding costs, not the disk. The shard rows stream the same rows from `convirt data shard`
tars (one stream, no shuffle buffer; the first view of each row), the sequential reading that
multi-node training does. Prints a markdown table and writes it with the raw numbers to
``--out`` (JSON + markdown).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch


def _time(fn, items, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - start)
    return len(items) / best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", type=Path, help="a manifest (image column); default: a generated synthetic set")
    p.add_argument("--synthetic", type=int, default=600, help="images to generate when no --manifest (default 600)")
    p.add_argument("--synthetic-side", type=int, default=512, help="side of the generated images (default 512)")
    p.add_argument("--limit", type=int, default=500, help="images timed (default 500)")
    p.add_argument("--size", type=int, default=256, help="cache side (default 256)")
    p.add_argument("--train-size", type=int, default=224, help="training crop (default 224)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/data_loading"))
    args = p.parse_args()
    torch.set_num_threads(1)

    from convirt.data.cache import ImageCache, build_cache, manifest_image_paths
    from convirt.data.images import load_image, to_tensor
    from convirt.data.shards import ShardSet, _decode, write_shards
    from convirt.data.transforms import train_transform

    work = Path(tempfile.mkdtemp(prefix="convirt-bench-"))
    manifest = args.manifest
    if manifest is None:
        from convirt.data.synthetic import generate

        manifest = generate(work / "synth", n=args.synthetic, seed=0, size=args.synthetic_side, progress=True)
    paths = manifest_image_paths(manifest)[: args.limit]
    files = [manifest.parent / p for p in paths]
    build_cache(manifest, work / "cache", size=args.size)
    cache = ImageCache(work / "cache")
    write_shards(manifest, work / "shards", size=args.size, samples_per_shard=100, split="all")
    shard_set = ShardSet(work / "shards")
    n_stream = min(len(paths), len(shard_set))
    transform = train_transform(args.train_size)
    torch.manual_seed(0)

    def from_file(f):
        return transform(to_tensor(load_image(f, max_side=args.train_size)))

    def from_cache(key):
        return transform(to_tensor(cache.load(key)))

    def decode_only(f):
        return load_image(f, max_side=args.train_size)

    def cache_only(key):
        return cache.load(key)

    def stream(fn):  # one pass over the first n_stream rows of the shards, as one loader stream reads them
        def run(_):
            for _, _, raw in islice(shard_set.stream(0, 0, 1, buffer=1), n_stream):
                key = next(k for k in sorted(raw) if k.startswith("img"))
                fn(_decode(raw[key], key, args.size).astype("float32") / 255.0)
        return run

    def shards_only(pixels):
        return pixels

    def from_shards(pixels):
        return transform(to_tensor(pixels))

    for fn, items in ((from_file, files), (from_cache, paths)):  # warm the page cache
        _time(fn, items[:50], 1)
    _time(stream(shards_only), [None], 1)
    rows = {
        "decode only (files)": _time(decode_only, files, args.repeats),
        "read only (cache)": _time(cache_only, paths, args.repeats),
        "decode + train transform (files)": _time(from_file, files, args.repeats),
        "cache + train transform": _time(from_cache, paths, args.repeats),
        "read only (shards)": _time(stream(shards_only), [None], args.repeats) * n_stream,
        "shards + train transform": _time(stream(from_shards), [None], args.repeats) * n_stream,
    }
    suffixes = sorted({Path(p).suffix for p in paths})
    first = load_image(files[0])
    speedup = rows["cache + train transform"] / rows["decode + train transform (files)"]
    table = ["| path | images/s (1 thread) |", "|---|---|"] + [f"| {k} | {v:.0f} |" for k, v in rows.items()]
    table += ["", f"Speed-up of the full input pipeline: **{speedup:.1f}x** "
              f"({len(paths)} images, {', '.join(suffixes)}, e.g. {first.shape[1]}x{first.shape[0]} px; "
              f"cache {args.size} px, training crop {args.train_size} px)."]
    text = "\n".join(table)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(text + "\n")
    (args.out / "results.json").write_text(json.dumps({"images_per_s": rows, "speedup": speedup, "n": len(paths),
                                                       "suffixes": suffixes, "size": args.size,
                                                       "train_size": args.train_size,
                                                       "manifest": str(args.manifest or "synthetic")}, indent=1))


if __name__ == "__main__":
    main()
