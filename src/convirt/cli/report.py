"""``convirt report draft``: write a chest X-ray report for an image by retrieving corpus sentences.

CXR-RePaiR (Endo et al., ML4H 2021) with a redundancy-aware, adaptive-length selector: see
docs/report_generation.md. Also defines ``convirt evaluate report-gen`` (registered by
:mod:`convirt.cli.evaluate`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser("report", help="draft reports for images by retrieval (CXR-RePaiR)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="report_command", metavar="VERB")
    p = sub.add_parser("draft", help="draft a report for one or more images",
                       description="Embed each image and select corpus sentences: adaptive (default: findings once "
                       "each, no contradictions, length by similarity, a short normal report for normal images), "
                       "topk (CXR-RePaiR's k most similar) or report (the most similar entry).")
    p.add_argument("--model", required=True, help="convirt model folder or pretraining run folder")
    p.add_argument("--corpus", required=True, type=Path, help="corpus folder from `convirt corpus build`")
    p.add_argument("--image", required=True, nargs="+", type=Path, help="image file(s): PNG, JPEG or DICOM")
    p.add_argument("--method", choices=["adaptive", "topk", "report"], default="adaptive")
    p.add_argument("--k", type=int, help="topk: sentences (default: the calibrated k, else 3); adaptive: at most this many")
    p.add_argument("--lambda", dest="lam", type=float, help="adaptive: MMR weight of relevance (default 0.7)")
    p.add_argument("--drop", type=float, help="adaptive: optional sentences stop this far below the best score")
    p.add_argument("--window", type=int, help="adaptive: findings come from this many best sentences")
    p.add_argument("--normal-threshold", type=float, help="adaptive: normal path below this evidence margin")
    p.add_argument("--raw", action="store_true", help="rank by plain cosine even on a calibrated corpus")
    p.add_argument("--json", type=Path, help="also write the drafts as JSON here")
    p.set_defaults(func=_draft)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def register_report_gen(sub) -> None:
    """The ``report-gen`` verb of ``convirt evaluate``."""
    p = sub.add_parser("report-gen", help="draft reports for test images and score them (BLEU, ROUGE-L, label F1)",
                       description="Compare CXR-RePaiR's whole-report and top-k sentence retrieval with the "
                       "redundancy-aware adaptive selector: label F1 (rule-based labeller), BLEU-1..4, ROUGE-L, "
                       "repeated findings, report length for normal and abnormal images.")
    p.add_argument("--model", required=True, help="convirt model folder or pretraining run folder")
    p.add_argument("--corpus", required=True, type=Path, help="sentence corpus (`convirt corpus build`)")
    p.add_argument("--report-corpus", type=Path, help="report-level corpus for the whole-report baseline")
    p.add_argument("--data", required=True, type=Path, help="manifest with image and text (and split) columns")
    p.add_argument("--split", default="test", help="rows to draft for (default test; all rows without a split column)")
    p.add_argument("--out", required=True, type=Path, help="output folder (results.json, results.md, drafts.jsonl)")
    p.add_argument("--k", type=int, help="k of top-k (default: the calibrated k, else 3)")
    p.add_argument("--selectors", nargs="+", choices=["report", "topk", "topk-centred", "adaptive"])
    p.add_argument("--observations", default="auto", choices=["auto", "chexpert", "synthetic"])
    p.add_argument("--limit", type=int, help="only the first N rows")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--allow-absolute-paths", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_report_gen)


def _draft(args) -> int:
    from convirt.cli.corpus import load_text_model
    from convirt.errors import DataError
    from convirt.reportgen.corpus import load_corpus
    from convirt.reportgen.draft import SelectionParams, draft_reports

    for path in args.image:
        if not path.is_file():
            raise DataError(f"--image {path}: no such file")
    model = load_text_model(args.model)
    corpus = load_corpus(args.corpus, model)
    params = SelectionParams.from_calibration(corpus.calibration, lam=args.lam, drop=args.drop, window=args.window,
                                              normal_threshold=args.normal_threshold,
                                              max_sentences=args.k if args.method == "adaptive" else None)
    emb = model.encode_images([str(p) for p in args.image]).numpy()
    k = None if args.method == "adaptive" else args.k
    drafts = draft_reports(corpus, emb, args.method, k=k, params=params, centred=not args.raw)
    scored = "centred score" if corpus.image_mean is not None and not args.raw else "cosine"
    for path, d in zip(args.image, drafts):
        print(f"{path}  ({args.method}{', normal path' if d.normal else ''})")
        for sentence, score, sim in zip(d.sentences, d.scores, d.similarities):
            print(f"  [cosine {sim:+.3f}" + (f", {scored} {score:+.3f}]" if scored != "cosine" else "]") + f" {sentence}")
        print(f"  REPORT: {d.text}")
    if args.json:
        args.json.write_text(json.dumps([{"image": str(p), **d.to_dict()} for p, d in zip(args.image, drafts)], indent=1))
        print(f"wrote {args.json}")
    return 0


def _report_gen(args) -> int:
    from convirt.cli.corpus import load_text_model
    from convirt.reportgen.corpus import load_corpus
    from convirt.reportgen.evaluate import run_report_gen

    model = load_text_model(args.model)
    corpus = load_corpus(args.corpus, model)
    report_corpus = load_corpus(args.report_corpus, model) if args.report_corpus else None
    run_report_gen(model, args.data, args.out, corpus, report_corpus, args.split, args.observations, args.k,
                   args.selectors, args.limit, args.batch_size, not args.no_progress,
                   allow_absolute=args.allow_absolute_paths)
    print((args.out / "results.md").read_text())
    print(f"wrote {args.out / 'results.json'}, results.md and drafts.jsonl")
    return 0
