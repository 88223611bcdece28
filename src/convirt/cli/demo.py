"""``convirt demo``: the whole story in one command, offline, on a CPU."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="generate synthetic radiographs, pretrain ConVIRT, evaluate it against random init",
        description="Generates a seeded synthetic chest X-ray set with reports, pretrains ConVIRT on it, and "
        "compares it with a randomly initialised encoder (batch-norm recalibrated) by linear probes at several "
        "label fractions and by text-to-image retrieval. Writes report.md, results.json, plots and model/.",
    )
    p.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    p.add_argument("--size", choices=["default", "small", "test"], default="default",
                   help="default: ~7 min on 2 CPU cores; test: the reduced run the test suite checks (~3 min); "
                   "small: a ~1 min smoke run")
    p.add_argument("--seed", type=int, default=0, help="seed for data, training and evaluation")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from convirt.demo import run_demo

    results = run_demo(args.out, size=args.size, seed=args.seed, progress=not args.no_progress)
    print(f"\nreport: {args.out}/report.md   results: {args.out}/results.json   model: {args.out}/run/model")
    print(results["headline"])
    return 0
