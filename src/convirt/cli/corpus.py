"""``convirt corpus build|calibrate``: a retrieval corpus of report sentences (or reports) for drafting.

build: split, normalise and de-duplicate reports (counts kept), label them, embed them with the
model's text encoder and index them with FAISS. calibrate: learn, on images with reports, the
centring of the scores and the drafting's thresholds (see docs/report_generation.md).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def load_text_model(spec: str | Path):
    """A convirt model folder or a run folder holding ``model/``, with a text tower."""
    from convirt.errors import ConfigError
    from convirt.models.dual_encoder import CONFIG, DualEncoder

    folder = Path(spec)
    if (folder / "model" / CONFIG).is_file():
        folder = folder / "model"
    if not folder.exists():
        raise ConfigError(f"--model {spec}: no such folder (give a convirt model folder or a pretraining run folder)")
    model = DualEncoder.load(folder)
    if not model.has_text:
        raise ConfigError(f"--model {spec} has no text encoder ({model.meta.get('method', 'image-only')}): report "
                          "drafting by retrieval needs a model trained with images and reports")
    return model


def register(subparsers) -> None:
    parser = subparsers.add_parser("corpus", help="build a report-sentence corpus for drafting reports by retrieval",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="corpus_command", metavar="VERB")
    p = sub.add_parser("build", help="split, de-duplicate, label, embed and index a report corpus",
                       description="Split reports into sentences (or keep whole reports), normalise and de-duplicate "
                       "them keeping counts, label them, embed them with the model's text encoder and store them "
                       "with a FAISS index. The corpus is bound to the model's weights.")
    p.add_argument("--model", required=True, help="convirt model folder or pretraining run folder")
    p.add_argument("--reports", required=True, type=Path,
                   help="a manifest (CSV/JSONL/Parquet with a text column) or IU X-ray XML (NLMCXR_reports.tgz or its folder)")
    p.add_argument("--level", choices=["sentence", "report"], default="sentence", help="corpus entries (default sentence)")
    p.add_argument("--out", required=True, type=Path, help="corpus folder to write")
    p.add_argument("--split", help="only rows of this split of a manifest (e.g. train); default all rows")
    p.add_argument("--column", default="text", help="report column of a manifest (default text)")
    p.add_argument("--index", choices=["auto", "flat", "ivf", "ivf-pq"], default="auto",
                   help="FAISS index: flat (exact), ivf (approximate, milliseconds per image for millions of entries), "
                        "ivf-pq (approximate, product-quantised scan + exact re-ranking: several times faster than "
                        "ivf at the same recall for millions of entries; benchmarks/RESULTS.md); auto: ivf from "
                        "200,000 entries")
    p.add_argument("--keep-redacted", action="store_true", help="keep entries holding IU X-ray's XXXX redactions")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_build)

    p = sub.add_parser("calibrate", help="learn the score centring and the drafting thresholds on images with reports",
                       description="Embed reference images (centring: each entry's mean similarity to them) and "
                       "held-out images with reports (the adaptive selector's window and normal threshold by label "
                       "F1, its length by ROUGE-L, and the k of top-k by label F1); stored in the corpus folder.")
    p.add_argument("--corpus", required=True, type=Path)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, type=Path, help="manifest with image, text and split columns")
    p.add_argument("--reference-split", default="train", help="split of the centring images (default train)")
    p.add_argument("--fit-split", default="valid", help="split the thresholds are learned on (default valid)")
    p.add_argument("--max-reference", type=int, default=2000, help="at most this many centring images (default 2000)")
    p.add_argument("--max-fit", type=int, default=1000, help="at most this many fitting images (default 1000)")
    p.add_argument("--observations", default="auto", choices=["auto", "chexpert", "synthetic"],
                   help="label set the thresholds maximise F1 over (auto: synthetic when the manifest has its columns)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_calibrate)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def _build(args) -> int:
    from convirt.reportgen.corpus import build_corpus, read_reports

    model = load_text_model(args.model)
    if args.split:
        from convirt.data.manifest import read_manifest
        from convirt.errors import DataError

        df = read_manifest(args.reports)
        if "split" not in df.columns:
            raise DataError(f"--split {args.split}: {args.reports} has no split column")
        reports = [str(t) for t in df.loc[df["split"] == args.split, args.column]]
    else:
        reports = read_reports(args.reports, args.column)
    start = time.time()
    corpus = build_corpus(model, reports, args.out, args.level, str(args.reports), batch_size=args.batch_size,
                          progress=not args.no_progress, index=args.index, keep_redacted=args.keep_redacted)
    m = corpus.meta
    print(f"{m['n_reports']} reports -> {m['n_occurrences']} {args.level}s -> {m['n_entries']} distinct entries "
          f"(dropped: {m['dropped'] or 'none'}); embedded and indexed in {time.time() - start:.1f} s")
    print(f"wrote {args.out}")
    return 0


def _calibrate(args) -> int:
    from convirt.reportgen.corpus import load_corpus
    from convirt.reportgen.draft import calibrate
    from convirt.reportgen.evaluate import embed_manifest_images, observation_set, read_split

    model = load_text_model(args.model)
    corpus = load_corpus(args.corpus, model)
    _, ref_paths = read_split(args.data, args.reference_split, args.max_reference)
    fit_df, fit_paths = read_split(args.data, args.fit_split, args.max_fit)
    progress = not args.no_progress
    ref = embed_manifest_images(model, ref_paths, args.batch_size, progress, "embedding centring images")
    fit = embed_manifest_images(model, fit_paths, args.batch_size, progress, "embedding fitting images")
    cal = calibrate(corpus, ref, fit, fit_df["text"].tolist(), observation_set(args.observations, fit_df.columns))
    p = cal["params"]
    print(f"centred on {len(ref)} {args.reference_split} images; learned on {len(fit)} {args.fit_split} images: "
          f"window {p['window']}, normal threshold {p['normal_threshold']:.4f}, drop {p['drop']}, top-k k = {cal['topk_k']} "
          f"(fit micro label F1 {cal['fit']['adaptive_micro_f1']:.3f})")
    print(f"wrote {args.corpus / 'calibration.json'}")
    return 0
