"""``convirt evaluate PROTOCOL``: the paper's evaluations on any encoder, on pinned splits.

Each protocol lives in :mod:`convirt.evaluation`; this module only turns arguments into calls.
Every verb writes ``OUT/results.json`` and ``OUT/results.md`` (plus pictures).
"""

from __future__ import annotations

import argparse
from pathlib import Path

MODEL_HELP = ("encoders to evaluate: a convirt model or run folder, imagenet:TIMM_NAME[@weights.safetensors], "
              "random:TIMM_NAME, or file:encoder.safetensors (from `convirt export`)")


def _common(p: argparse.ArgumentParser, labels: bool = True, fractions: bool = True) -> None:
    p.add_argument("--model", "--models", dest="models", nargs="+", required=True, metavar="SPEC", help=MODEL_HELP)
    p.add_argument("--name", "--names", dest="names", nargs="+", metavar="NAME", help="table labels, one per --model")
    p.add_argument("--data", required=True, type=Path, help="manifest with image, split (train/valid/test) and label columns")
    p.add_argument("--out", required=True, type=Path, help="output folder (results.json, results.md, pictures)")
    if labels:
        p.add_argument("--labels", nargs="+", metavar="LABEL",
                       help="label columns: COLUMN (0/1), COLUMN=VALUE, or one text COLUMN (multi-class); "
                            "default: every 0/1 column")
        p.add_argument("--task", default="auto", choices=["auto", "binary", "multilabel", "multiclass"])
        p.add_argument("--uncertain", default="error", choices=["error", "zeros", "ones"],
                       help="how to read -1 (uncertain) labels: refuse, U-Zeros or U-Ones")
    if fractions:
        p.add_argument("--fractions", nargs="+", type=float, default=[0.01, 0.1, 1.0], help="label fractions (default 0.01 0.1 1)")
        p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="one subset draw per seed (default 0 1 2)")
        p.add_argument("--subsets", type=Path, help="re-use the subsets.json of an earlier run (same images)")
        p.add_argument("--n-boot", type=int, default=500, help="bootstrap resamples for test CIs (0: none)")
    p.add_argument("--size", type=int, help="input resolution (default: the model's own, 224 for timm names)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    p.add_argument("--cache", type=Path, help="embedding cache folder (default $CONVIRT_CACHE or ~/.cache/convirt)")
    p.add_argument("--no-cache", action="store_true", help="always recompute embeddings")
    p.add_argument("--allow-absolute-paths", action="store_true")
    p.add_argument("--seed", type=int, default=0, help="seed of random:NAME initialisation")
    p.add_argument("--no-progress", action="store_true")


def register(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="evaluate image encoders (linear, fine-tune, retrieval, zero-shot)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="protocol", metavar="PROTOCOL")

    p = sub.add_parser("linear", help="linear classification on the frozen encoder at label fractions")
    _common(p)
    p.add_argument("--variant", default="sklearn", choices=["sklearn", "trained"],
                   help="sklearn: logistic regression on cached features, C chosen on validation (fast); "
                        "trained: the paper's linear layer trained with Adam and augmentations")
    p.add_argument("--C", dest="Cs", nargs="+", type=float, help="inverse L2 strengths to choose from (sklearn variant)")
    _finetune_args(p)
    p.set_defaults(func=_linear)

    p = sub.add_parser("finetune", help="fine-tune the whole encoder with a linear layer at label fractions")
    _common(p)
    _finetune_args(p)
    p.set_defaults(func=_finetune)
    p = sub.add_parser("retrieval", help="zero-shot image->image and text->image Precision@K (CheXpert 8x200 style)")
    _common(p, fractions=False)
    p.add_argument("--image-root", type=Path, help="folder the candidate paths are relative to (default: the CSV's)")
    p.add_argument("--per-category", type=int, help="draw this many candidates per category from the test rows "
                   "(positive for exactly that category); default: every row of --data is a candidate")
    p.add_argument("--queries-per-category", type=int, default=0, help="image queries drawn per category (disjoint)")
    p.add_argument("--image-queries", type=Path, help="CSV of query images: Variable,Path (8x200 style) or image/Path + the same label columns")
    p.add_argument("--text-queries", type=Path, help="CSV Variable,Text of query sentences (convirt models only)")
    p.add_argument("--ks", nargs="+", type=int, default=[5, 10, 50])
    p.add_argument("--bench-seed", type=int, default=0, help="seed of the drawn benchmark")
    p.set_defaults(func=_retrieval)

    p = sub.add_parser("zeroshot", help="zero-shot classification from class prompts (convirt models)")
    _common(p, fractions=False)
    p.add_argument("--prompts", type=Path, required=True,
                   help="JSON: {class: [prompts]} or GLoRIA-style {class: {severity: [], subtype: [], location: []}}")
    p.add_argument("--n-prompts", type=int, help="prompts drawn per class (seeded) when the file yields more")
    p.add_argument("--ensemble", choices=["mean", "max"], default="mean", help="prompt ensembling")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--bench-seed", type=int, default=0, help="seed of the prompt draw and the bootstrap")
    p.add_argument("--similarity", choices=["auto", "global", "local", "both"], default="auto",
                   help="image-text score: auto = GLoRIA's global + local for GLoRIA models, else the global cosine")
    p.set_defaults(func=_zeroshot)

    p = sub.add_parser("report-retrieval", help="rank reports for each image: Recall@K and Precision@K (convirt models)")
    _common(p, fractions=False)
    p.add_argument("--corpus", type=Path, help="manifest of candidate reports (default: the test images' own reports)")
    p.add_argument("--agreement", choices=["exact", "any"], default="exact",
                   help="a report is relevant when its labels equal the image's (exact) or share a positive (any)")
    p.add_argument("--ks", nargs="+", type=int, default=[1, 5, 10])
    p.add_argument("--similarity", choices=["auto", "global", "local", "both"], default="auto",
                   help="image-text score: auto = GLoRIA's global + local for GLoRIA models, else the global cosine")
    p.set_defaults(func=_report_retrieval)

    from convirt.cli.report import register_report_gen  # report drafting by retrieval (convirt.reportgen)

    register_report_gen(sub)

    p = sub.add_parser("suite", help="a paper-style table: several protocols x several models from one YAML file")
    p.add_argument("--config", type=Path, required=True, help="suite YAML (see docs/evaluation.md)")
    p.add_argument("--model", "--models", dest="models", nargs="+", metavar="SPEC", help=MODEL_HELP + " (overrides the file)")
    p.add_argument("--name", "--names", dest="names", nargs="+", metavar="NAME")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_suite)
    _register_localized(sub)  # segment / detect (convirt.evaluation.segmentation / detection)
    p = sub.add_parser("localisation", help="do finding words point at the finding? (synthetic masks; GLoRIA attention "
                       "or similarity Grad-CAM)")
    p.add_argument("--model", "--models", dest="models", nargs="+", required=True, metavar="RUN",
                   help="convirt model or run folders (with a text encoder)")
    p.add_argument("--name", "--names", dest="names", nargs="+", metavar="NAME", help="table labels, one per --model")
    p.add_argument("--data", required=True, type=Path, help="a `convirt data synth` folder (manifest.csv and masks/)")
    p.add_argument("--out", required=True, type=Path, help="output folder (results.json, results.md, pictures)")
    p.add_argument("--split", default="test")
    p.add_argument("--max-cases", type=int, default=200, help="(image, finding) cases at most (default 200)")
    p.add_argument("--untrained", action="store_true",
                   help="add an untrained copy of the first model (same architecture, random weights) as the random reference")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_localisation)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def _finetune_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training (finetune, and linear --variant trained)")
    g.add_argument("--lr", type=float, help="Adam learning rate (default 1e-3 linear layer, 1e-4 fine-tuning)")
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--epochs", dest="max_epochs", type=int, help="maximum epochs (default 30)")
    g.add_argument("--patience", type=int, help="early stopping: epochs without validation AUROC gain (default 5)")
    g.add_argument("--min-epoch-steps", type=int, help="batches per epoch at least (default 20; small subsets repeat)")
    g.add_argument("--augment", choices=["paper", "mild", "none"], help="training augmentations (default paper)")
    g.add_argument("--precision", help="Lightning precision, e.g. 32-true, bf16-mixed (default 32-true)")


def _settings(args):
    from convirt.evaluation.cache import default_cache_dir
    from convirt.evaluation.protocols import Settings

    cache = None if args.no_cache else (args.cache or default_cache_dir())
    extra = {k: getattr(args, a) for k, a in (("fractions", "fractions"), ("subsets_file", "subsets"), ("n_boot", "n_boot"))
             if getattr(args, a, None) is not None}
    seeds = getattr(args, "seeds", None) or [getattr(args, "bench_seed", 0)]
    return Settings(seeds=seeds, batch_size=args.batch_size, num_workers=args.workers, cache_dir=cache,
                    progress=not args.no_progress, **extra).validate()


def _load(args, required_splits=("train", "valid", "test"), image_root=None):
    from convirt.evaluation.encoders import load_encoders
    from convirt.evaluation.labelled import load_labelled

    data = load_labelled(args.data, args.labels, args.task, args.uncertain, args.allow_absolute_paths, required_splits,
                         image_root)
    return load_encoders(args.models, args.names, args.size, args.seed), data


def _finetune_cfg(args, freeze: bool):
    from convirt.evaluation.finetune import default_config

    return default_config(freeze, lr=args.lr, weight_decay=args.weight_decay, batch_size=args.batch_size,
                          max_epochs=args.max_epochs, patience=args.patience, min_epoch_steps=args.min_epoch_steps,
                          augment=args.augment, precision=args.precision, num_workers=args.workers,
                         positive_fraction=args.positive_fraction)


def _done(doc: dict, out: Path) -> int:
    print((out / "results.md").read_text())
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0


def _linear(args) -> int:
    from convirt.evaluation.probe import DEFAULT_CS
    from convirt.evaluation.protocols import run_finetune, run_linear

    settings = _settings(args)
    encoders, data = _load(args)
    if args.variant == "trained":
        doc = run_finetune(encoders, data, args.out, settings, _finetune_cfg(args, True), freeze=True)
    else:
        doc = run_linear(encoders, data, args.out, settings, args.Cs or DEFAULT_CS)
    return _done(doc, args.out)


def _finetune(args) -> int:
    from convirt.evaluation.protocols import run_finetune

    settings = _settings(args)
    encoders, data = _load(args)
    return _done(run_finetune(encoders, data, args.out, settings, _finetune_cfg(args, False), freeze=False), args.out)


def _retrieval(args) -> int:
    from convirt.evaluation.shared_space import category_names, read_image_queries, run_retrieval

    settings = _settings(args)
    encoders, data = _load(args, required_splits=(), image_root=args.image_root)
    queries = None
    if args.image_queries:
        queries = read_image_queries(args.image_queries, category_names(data), args.image_root,
                                     args.allow_absolute_paths, args.uncertain)
    doc = run_retrieval(encoders, data, args.out, settings, args.ks, args.per_category, args.queries_per_category,
                        queries, args.text_queries)
    return _done(doc, args.out)


def _zeroshot(args) -> int:
    from convirt.evaluation.shared_space import run_zeroshot
    from convirt.evaluation.zeroshot import load_prompts

    settings = _settings(args)
    encoders, data = _load(args, required_splits=())
    prompts = load_prompts(args.prompts, args.n_prompts, args.bench_seed)
    return _done(run_zeroshot(encoders, data, args.out, settings, prompts, args.ensemble, str(args.prompts),
                              args.similarity), args.out)


def _report_retrieval(args) -> int:
    from convirt.evaluation.labelled import load_labelled
    from convirt.evaluation.shared_space import run_report_retrieval

    settings = _settings(args)
    encoders, data = _load(args, required_splits=())
    corpus = None
    if args.corpus:
        corpus = load_labelled(args.corpus, args.labels or data.label_names, "auto", args.uncertain,
                               args.allow_absolute_paths, ())
    return _done(run_report_retrieval(encoders, data, args.out, settings, args.ks, corpus, args.agreement,
                                      similarity=args.similarity), args.out)


def _suite(args) -> int:
    from convirt.evaluation.suite import run_suite

    run_suite(args.config, args.out, args.models, args.names, progress=not args.no_progress)
    print((args.out / "comparison.md").read_text())
    print(f"wrote {args.out / 'comparison.md'}, comparison.csv, comparison.json and one folder per protocol")
    return 0


# ------------------------------------------------------------------------- localized tasks: segment, detect


def _register_localized(sub) -> None:
    """``segment`` (U-Net, Dice/IoU) and ``detect`` (Faster R-CNN, mAP) on the pretrained encoder."""
    verbs = (("segment", "mask", "a U-Net with the encoder as its encoder: Dice and IoU at label fractions",
              "mask column: PNG path (non-zero = foreground), SIIM run-length string, or blank (default: mask)"),
             ("detect", "boxes", "Faster R-CNN with the encoder as its backbone: mAP@0.5 and mAP@[.5:.95] at label fractions",
              "boxes column: JSON [[x, y, width, height(, class)], ...] in image pixels, RSNA layout (default: boxes)"))
    for verb, kind, what, column_help in verbs:
        p = sub.add_parser(verb, help=what)
        _common(p)
        p.add_argument("--target-column", default=kind, help=column_help)
        p.add_argument("--freeze", action="store_true",
                       help="keep the encoder frozen (eval mode, no gradient); default: fine-tune it with the rest")
        p.add_argument("--overlays", type=int, default=8, help="test images drawn with ground truth and prediction (0: none)")
        g = p.add_argument_group("training")
        g.add_argument("--lr", type=float, help="Adam learning rate (default 1e-3 frozen, 3e-4 fine-tuning)")
        g.add_argument("--weight-decay", type=float)
        g.add_argument("--epochs", dest="max_epochs", type=int, help="maximum epochs (default 30)")
        g.add_argument("--patience", type=int, help="early stopping: epochs without validation gain (default 5)")
        g.add_argument("--min-epoch-steps", type=int, help="batches per epoch at least (default 20; small subsets repeat)")
        g.add_argument("--augment", choices=["mild", "none"], help="training augmentations (default mild)")
        g.add_argument("--precision", help="Lightning precision, e.g. 32-true, bf16-mixed (default 32-true)")
        g.add_argument("--positive-fraction", type=float,
                       help="share of training draws showing a finding (oversampling rare findings; default: uniform)")
        p.set_defaults(func=_localized, localized=verb, batch_size=16)


def _localized(args) -> int:
    from convirt.evaluation.encoders import load_encoders
    from convirt.evaluation.localized import KINDS, default_config, load_localized

    settings = _settings(args)
    data = load_localized(args.data, KINDS[args.localized], args.target_column, args.labels, args.uncertain,
                          args.allow_absolute_paths)
    encoders = load_encoders(args.models, args.names, args.size, args.seed)
    cfg = default_config(args.freeze, lr=args.lr, weight_decay=args.weight_decay, batch_size=args.batch_size,
                         max_epochs=args.max_epochs, patience=args.patience, min_epoch_steps=args.min_epoch_steps,
                         augment=args.augment, precision=args.precision, num_workers=args.workers,
                         positive_fraction=args.positive_fraction)
    if args.localized == "segment":
        from convirt.evaluation.segmentation import run_segmentation as run
    else:
        from convirt.evaluation.detection import run_detection as run
    return _done(run(encoders, data, args.out, settings, cfg, args.freeze, args.overlays), args.out)


def _localisation(args) -> int:
    from convirt.cli.corpus import load_text_model
    from convirt.errors import ConfigError
    from convirt.evaluation.localisation import run_localisation, untrained_copy

    if args.names and len(args.names) != len(args.models):
        raise ConfigError(f"{len(args.names)} --names for {len(args.models)} --models")
    models = {}
    for i, spec in enumerate(args.models):
        model = load_text_model(spec)  # a run or model folder, with a text tower
        models[args.names[i] if args.names else model.meta.get("method", Path(spec).name)] = model
    if args.untrained:
        first = next(iter(models.values()))
        models[f"untrained {first.meta.get('method', 'model')}"] = untrained_copy(first)
    return _done(run_localisation(models, args.data, args.out, args.split, args.max_cases, progress=not args.no_progress),
                 args.out)
