"""Samples/s of the training input pipeline alone: from files, from the preprocessing cache, from shards.

    python benchmarks/data_throughput.py                       # generated radiographs (made once, reused)
    python benchmarks/data_throughput.py --manifest data/kermany/manifest.csv --train-size 224
    python benchmarks/data_throughput.py --quick               # fewer batches, workers 0 and 2

Two tables (both printed as markdown and written with the raw numbers to ``--out``):

1. **Loader** (what training sees): the ``DataLoader`` that ``convirt pretrain`` builds
   (``PairDataModule``: ``PairDataset`` -> decode, ConVIRT's augmentations, sentence sampling;
   ``PairCollator`` -> tokenisation in the workers), batches of ``--batch-size``, with 0, 1 and 2
   loader processes, for each source: the image files (``data.train``), the preprocessing cache
   (``data.image_cache``, ``convirt data cache``) and WebDataset shards (``data.shards``,
   ``convirt data shard``). The first ``--warmup`` batches (worker start-up) are not timed. With
   open_clip installed, its own CSV loader (``open_clip_train.data.CsvDataset``: PIL decode, ConVIRT's
   transform as torchvision ships it, its tokeniser padding to ``text.max_length``) is timed too, for
   reference.
2. **Stages** (one thread, no loader): decode only, cache/shard read only, and each followed by the
   training transform, over the same images after a warm-up pass, so the page cache is warm and
   the table shows what decoding costs, not the disk.

(This replaces ``benchmarks/data_loading.py``, whose table is the second one here.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402


def _time(fn, items, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - start)
    return len(items) / best


def loader_rate(loader, warmup: int, batches: int) -> float:
    """Samples/s of ``batches`` batches after ``warmup`` untimed ones (workers started) and after the
    batches the workers had read ahead meanwhile (``workers x prefetch_factor``, taken untimed too:
    otherwise a deeper read-ahead queue would count as speed)."""
    it = iter(loader)
    ahead = loader.num_workers * (loader.prefetch_factor or 0)
    for _ in range(warmup):
        next(it)
    time.sleep(0.5)  # let the read-ahead queue fill, then empty it
    for _ in range(ahead):
        next(it)
    start, n = time.perf_counter(), 0
    for batch in islice(it, batches):
        n += len(batch["images"] if isinstance(batch, dict) else batch[0])
    rate = n / (time.perf_counter() - start)
    del it
    return rate


def convirt_loader(cfg, tokenizer, workers: int):
    """The training DataLoader of ``convirt pretrain`` for ``cfg`` (its PairDataModule, outside a Trainer)."""
    from convirt.training.datamodule import PairDataModule, load_split_pairs

    cfg.data.num_workers = workers
    train, val, _ = load_split_pairs(cfg)
    dm = PairDataModule(cfg, train, val, tokenizer)
    dm.trainer = SimpleNamespace(global_step=0, accumulate_grad_batches=1, global_rank=0, world_size=1, accelerator=None)
    return dm.train_dataloader()


def openclip_loader(cfg, tok_dir: Path, manifest: Path, workers: int, batches: int, work: Path):
    """open_clip's CSV loader over the same training images and report texts, or None without open_clip."""
    try:
        import open_clip
        import open_clip_train.data as ocd
    except ImportError:
        return None
    import pandas as pd

    from train_throughput import PILToConvirt, report_texts, torchvision_train_transform

    images, texts = report_texts(manifest)
    n = batches * cfg.data.batch_size
    csv = work / f"openclip-{n}.tsv"
    pd.DataFrame({"filepath": [str(images[i % len(images)]) for i in range(n)],
                  "title": [texts[i % len(texts)] for i in range(n)]}).to_csv(csv, sep="\t", index=False)
    tokenizer = open_clip.tokenizer.HFTokenizer(str(tok_dir), context_length=cfg.text.max_length)
    args = SimpleNamespace(train_data=str(csv), csv_img_key="filepath", csv_caption_key="title", csv_separator="\t",
                           batch_size=cfg.data.batch_size, workers=workers, distributed=False)
    return ocd.get_csv_dataset(args, PILToConvirt(torchvision_train_transform(cfg)), is_train=True,
                               tokenizer=tokenizer).dataloader


def stage_table(manifest: Path, cache_dir: Path, shard_dir: Path, limit: int, cache_size: int, train_size: int,
                repeats: int) -> dict:
    """Per-stage images/s in one thread (the table of the former benchmarks/data_loading.py)."""
    from convirt.data.cache import ImageCache, manifest_image_paths
    from convirt.data.images import load_image, to_tensor
    from convirt.data.shards import ShardSet, _decode
    from convirt.data.transforms import train_transform

    paths = manifest_image_paths(manifest)[:limit]
    files = [manifest.parent / p for p in paths]
    cache = ImageCache(cache_dir)
    shard_set = ShardSet(shard_dir)
    n_stream = min(len(paths), len(shard_set))
    transform = train_transform(train_size)
    fused = train_transform(train_size, fused=True)  # the same views, crop + flip + affine as one resampling
    from torchvision.transforms import v2

    from convirt.data.transforms import SeparableGaussianBlur

    stock = v2.Compose([v2.GaussianBlur(list(t.kernel_size), list(t.sigma)) if isinstance(t, SeparableGaussianBlur) else t
                        for t in transform.transforms])  # T with torchvision's own (2-D) Gaussian blur
    torch.manual_seed(0)

    def stream(fn):  # one pass over the first n_stream samples of the shards, as one loader stream reads them
        def run(_):
            for _, _, raw in islice(shard_set.stream(0, 0, 1, buffer=1), n_stream):
                key = next(k for k in sorted(raw) if k.startswith("img"))
                fn(_decode(raw[key], key, cache_size).astype("float32") / 255.0)
        return run

    def full_decode(f):  # what training does: the whole image (no reduced-scale decoding)
        return load_image(f)

    for fn, items in ((lambda f: transform(to_tensor(load_image(f))), files), (cache.load, paths)):  # warm the page cache
        _time(fn, items[:50], 1)
    _time(stream(lambda x: x), [None], 1)
    rows = {
        "decode only (files)": _time(full_decode, files, repeats),
        "decode only, reduced scale (files, max_side=train size)": _time(lambda f: load_image(f, max_side=train_size),
                                                                         files, repeats),
        "read only (cache)": _time(cache.load, paths, repeats),
        "read only (shards)": _time(stream(lambda x: x), [None], repeats) * n_stream,
        "decode + train transform (files)": _time(lambda f: transform(to_tensor(full_decode(f))), files, repeats),
        "decode + train transform with torchvision's GaussianBlur (files)":
            _time(lambda f: stock(to_tensor(full_decode(f))), files, repeats),
        "cache + train transform": _time(lambda k: transform(to_tensor(cache.load(k))), paths, repeats),
        "decode + fused train transform (files, augment.fused)": _time(lambda f: fused(to_tensor(full_decode(f))), files,
                                                                       repeats),
        "cache + fused train transform (augment.fused)": _time(lambda k: fused(to_tensor(cache.load(k))), paths, repeats),
        "shards + train transform": _time(stream(lambda x: transform(to_tensor(x))), [None], repeats) * n_stream,
    }
    return {"images_per_s": rows, "n": len(paths), "suffixes": sorted({Path(p).suffix for p in paths}),
            "first_image": list(load_image(files[0]).shape)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", type=Path, help="a manifest (image + text columns, split column); default: synthetic")
    p.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "convirt-bench-synth",
                   help="where the synthetic set is generated (once, reused; shared with train_throughput.py)")
    p.add_argument("--synthetic", type=int, default=640, help="studies to generate when no --manifest (default 640)")
    p.add_argument("--synthetic-side", type=int, default=512, help="side of the generated images (default 512)")
    p.add_argument("--train-size", type=int, default=224, help="training crop, image.size (default 224)")
    p.add_argument("--cache-size", type=int, default=256, help="side stored by the cache and the shards (default 256)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=16, help="timed batches per loader (default 16)")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches per loader (default 3)")
    p.add_argument("--workers", default="0,1,2", help="loader processes to try (default 0,1,2)")
    p.add_argument("--text-sampling", default="sentence", choices=("sentence", "report"),
                   help="text.sampling (default: the paper's one sentence)")
    p.add_argument("--limit", type=int, default=300, help="images in the stage table (default 300)")
    p.add_argument("--repeats", type=int, default=2, help="passes per stage; the best is kept (default 2)")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the main process (default torch's)")
    p.add_argument("--quick", action="store_true", help="8 batches, workers 0 and 2, a 150-image stage table")
    p.add_argument("--fused", action="store_true", help="loaders with augment.fused (one resampling for crop, flip, affine)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "data_throughput")
    args = p.parse_args()
    if args.quick:
        args.batches, args.workers, args.limit, args.repeats = 8, "0,2", 150, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging

    logging.getLogger().setLevel(logging.ERROR)

    from convirt.config import load_config
    from convirt.data.cache import build_cache
    from convirt.data.reports import SentenceSampler
    from convirt.models.text import train_wordpiece_tokenizer

    try:
        from convirt.data.shards import write_shards
    except ImportError:  # shards arrived after this benchmark was written; older checkouts have none
        write_shards = None
    work = Path(tempfile.mkdtemp(prefix="convirt-data-bench-"))
    manifest = args.manifest
    if manifest is None:
        from train_throughput import synthetic_data

        manifest = synthetic_data(args.data, args.synthetic, args.synthetic_side)
    manifest = manifest.resolve()
    print("building the cache and the shards ...", flush=True)
    build_cache(manifest, work / "cache", size=args.cache_size, progress=False)
    if write_shards is not None:
        write_shards(manifest, work / "shards", size=args.cache_size, samples_per_shard=64, split="train", progress=False)
    import pandas as pd

    reports = pd.read_csv(manifest)["text"].astype(str).tolist()
    sampler = SentenceSampler()
    tokenizer = train_wordpiece_tokenizer([s for r in reports for s in sampler.sentences(r)] or reports, 4000)
    tokenizer.save_pretrained(str(work / "tokenizer"))

    def cfg_for(source: str):
        overrides = [f"data.train={manifest}", f"image.size={args.train_size}", f"data.batch_size={args.batch_size}",
                     "data.check_images=false", f"text.sampling={args.text_sampling}", "trainer.progress_bar=false",
                     f"augment.fused={str(args.fused).lower()}"]
        if source == "cache":
            overrides.append(f"data.image_cache={work / 'cache'}")
        if source == "shards":
            overrides.append(f"data.shards={work / 'shards'}")
        return load_config(overrides=overrides)

    workers = [int(w) for w in args.workers.split(",")]
    sources = ["files", "cache"] + (["shards"] if write_shards is not None else [])
    loader_rows: dict[str, dict[int, float]] = {}
    for source in sources + ["open_clip files"]:
        for w in workers:
            if source == "open_clip files":
                loader = openclip_loader(cfg_for("files"), work / "tokenizer", manifest, w,
                                         args.warmup + args.batches + 2 * w + 2, work)
                if loader is None:
                    break
            else:
                loader = convirt_loader(cfg_for(source), tokenizer, w)
            rate = loader_rate(loader, args.warmup, args.batches)
            del loader
            loader_rows.setdefault(source, {})[w] = rate
            print(f"  {source:16s} {w} workers: {rate:6.1f} samples/s (load {os.getloadavg()[0]:.1f})", flush=True)

    stages = stage_table(manifest, work / "cache", work / "shards", args.limit, args.cache_size, args.train_size,
                         args.repeats) if write_shards is not None else {}

    lines = [f"Input pipeline, samples/s ({args.batch_size}-sample batches, {args.train_size} px crops, text.sampling "
             f"{args.text_sampling}; cache/shards at {args.cache_size} px; augment.fused {str(args.fused).lower()}; "
             f"{torch.get_num_threads()} main-process threads; "
             f"load average {os.getloadavg()[0]:.1f}):", "",
             "| source | " + " | ".join(f"{w} workers" for w in workers) + " |", "|---|" + "---|" * len(workers)]
    for source, rates in loader_rows.items():
        label = {"files": "files (decode)", "cache": "preprocessing cache", "shards": "WebDataset shards",
                 "open_clip files": "open_clip CsvDataset, files (reference)"}[source]
        lines.append(f"| {label} | " + " | ".join(f"{rates[w]:.0f}" if w in rates else "-" for w in workers) + " |")
    if write_shards is None:
        lines += ["", "TODO: no shards column (convirt.data.shards is absent in this checkout)."]
    if stages:
        lines += ["", f"Stages, images/s in one thread ({stages['n']} images, {', '.join(stages['suffixes'])}, "
                      f"{stages['first_image'][1]}x{stages['first_image'][0]} px):", "", "| stage | images/s |", "|---|---|"]
        lines += [f"| {k} | {v:.0f} |" for k, v in stages["images_per_s"].items()]
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(text + "\n")
    (args.out / "results.json").write_text(json.dumps(
        {"loader_samples_per_s": loader_rows, "stages": stages, "batch_size": args.batch_size, "train_size": args.train_size,
         "cache_size": args.cache_size, "text_sampling": args.text_sampling, "fused": args.fused, "manifest": str(args.manifest or "synthetic"),
         "threads": torch.get_num_threads(), "load_end": os.getloadavg(), "command": " ".join(sys.argv)}, indent=1))


if __name__ == "__main__":
    main()
