"""``convirt pretrain``: train an encoder pair from a YAML config plus command-line overrides."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "pretrain", help="pretrain image and text encoders on image-report pairs",
        description="Pretrain with ConVIRT's bidirectional contrastive loss. Defaults are the paper's "
        "(ResNet-50, ClinicalBERT, tau 0.1, lambda 0.75, Adam 1e-4); a YAML config and --set override them.",
        epilog="examples:\n  convirt pretrain --config configs/demo.yaml --train data/manifest.csv --out runs/demo\n"
        "  convirt pretrain --config configs/demo.yaml --resume          # continue from the last checkpoint\n"
        "  convirt pretrain --config c.yaml --set loss.temperature=0.07 --set trainer.precision=bf16-mixed\n"
        "multi-GPU: --set trainer.devices=4 --set trainer.strategy=ddp (or launch under torchrun / SLURM srun)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="YAML file with any of the sections image, text, projection, loss, augment, optim, data, trainer")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set optim.lr=3e-4 (repeatable)")
    p.add_argument("--train", help="training manifest (= --set data.train=...)")
    p.add_argument("--val", help="validation manifest (= --set data.val=...); default: split column of --train")
    p.add_argument("--out", help="run folder (= --set trainer.out_dir=...)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps (= --set trainer.max_steps=...)")
    p.add_argument("--method", help="pretraining method (= --set method=...): convirt (default), clip, binary, "
                   "caption-lstm, caption-transformer, simclr, mocov2, gloria; see docs/guide.md, 'Baseline methods'")
    p.add_argument("--resume", action="store_true", help="continue from the newest good checkpoint in the run folder")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    p.set_defaults(func=run)


def run(args) -> int:
    from convirt.config import load_config

    overrides = list(args.overrides)
    for flag, key in (("train", "data.train"), ("val", "data.val"), ("out", "trainer.out_dir"),
                      ("max_steps", "trainer.max_steps"), ("method", "method")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = load_config(args.config, overrides)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    from convirt.training.run import pretrain

    summary = pretrain(cfg, resume=args.resume)
    print(json.dumps(summary, indent=2))
    print(f"model written to {cfg.trainer.out_dir}/model (load it with convirt.load)")
    return 0
