"""``convirt benchmark``: pretrain several methods with one budget and evaluate them all the same way."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "benchmark", help="pretrain several methods on the same data and budget, evaluate all, one table",
        description="Pretrains each method (same preset, steps and batch size), evaluates every encoder with\n"
        "the same linear probes on the same pinned label-fraction subsets and, for joint-space methods,\n"
        "text->image retrieval, zero-shot classification, image->report retrieval and (synthetic data)\n"
        "the localisation check, and (synthetic data, default size) fine-tuned segmentation and detection;\n"
        "writes benchmark.md/.csv/.json and checks the paper's claims on the numbers.\n"
        "Started again on the same --out, finished runs are reused and unfinished ones resumed.",
        epilog="example:\n  convirt benchmark --methods random,simclr,mocov2,binary,caption-transformer,convirt,gloria --data synth",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", required=True, help="comma-separated: random, imagenet and any pretraining method")
    p.add_argument("--data", default="synth", help="'synth' (generated) or a manifest with image, text, split, labels")
    p.add_argument("--labels", nargs="+", help="label columns for the probes (default for synth: the 8 findings)")
    p.add_argument("--size", choices=["default", "small"], default="default",
                   help="default: 3,000 images, 600 steps per method, segmentation and detection at 10%% of the "
                        "labels; small: 800 images, 80 steps, no localized tasks")
    p.add_argument("--image-model", default="resnet18", help="timm image tower for every method (default resnet18)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override applied to every method's pretraining")
    p.add_argument("--jobs", default="auto",
                   help="pretraining and segmentation/detection runs side by side, each in its own process with an "
                        "equal share of the CPU threads (auto: one per CPU core without a GPU, one with a GPU; "
                        "1: one after another in this process). Small models use many threads badly: two "
                        "1-thread runs on 2 cores finish 1.4x sooner than the same runs in turn")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmark-out")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from convirt.benchmark import parse_methods, run_benchmark

    run_benchmark(parse_methods(args.methods), args.out, args.data, args.size, args.seed, args.labels,
                  args.image_model, not args.no_progress, args.overrides, args.jobs)
    print((Path(args.out) / "benchmark.md").read_text())
    return 0
