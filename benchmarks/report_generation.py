"""Report drafting by retrieval on synthetic radiographs: CXR-RePaiR (Endo et al., 2021) against the
redundancy-aware adaptive selector, end to end with known ground truth.

Steps: generate the synthetic set (the demo's: 3,000 images, strength 2, seed 0), pretrain a small
ConVIRT model with the demo preset, build a sentence corpus and a report corpus from the training
reports, calibrate (centring on training images, thresholds on the validation split), draft a
report for every test image with each selector and score them (label F1 from the rule-based
labeller, BLEU-1..4, ROUGE-L, repeated findings, length for normal and abnormal images).

Example (about 8 minutes on 2 CPU cores; --reuse skips the steps whose outputs exist):
    python benchmarks/report_generation.py --work /tmp/convirt-reportgen --json reportgen.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/convirt-reportgen"), help="working folder (data, run, corpora, results)")
    p.add_argument("--n", type=int, default=3000, help="synthetic images (default 3000, the demo's)")
    p.add_argument("--strength", type=float, default=2.0, help="finding visibility (default 2, the demo's)")
    p.add_argument("--steps", type=int, default=600, help="pretraining steps (default 600, the demo's)")
    p.add_argument("--batch-size", type=int, default=64, help="pretraining batch (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-reference", type=int, default=2000, help="training images for the centring (default 2000)")
    p.add_argument("--reuse", action="store_true", help="re-use the data, model and corpora already in --work")
    p.add_argument("--json", type=Path, help="also write the summary here")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import numpy as np

    import convirt
    from convirt.config import load_config
    from convirt.data.synthetic import FINDINGS, generate
    from convirt.reportgen.corpus import build_corpus, load_corpus
    from convirt.reportgen.draft import calibrate
    from convirt.reportgen.evaluate import embed_manifest_images, read_split, run_report_gen

    progress, work, timings, reused = not args.no_progress, args.work, {}, []
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    manifest = work / "data" / "manifest.csv"
    if args.reuse and manifest.is_file():
        reused.append("data")
    else:
        manifest = generate(work / "data", n=args.n, seed=args.seed, strength=args.strength, progress=progress)
    timings["generate_s"] = round(time.time() - t0, 1)

    t0 = time.time()
    model_dir = work / "run" / "model"
    if args.reuse and (model_dir / "model.safetensors").is_file():
        reused.append("model")
    else:
        from convirt.training.run import pretrain

        if (work / "run").exists():
            import shutil

            shutil.rmtree(work / "run")
        cfg = load_config("demo", [f"data.train={manifest}", f"trainer.out_dir={work / 'run'}", f"trainer.max_steps={args.steps}",
                                   f"data.batch_size={args.batch_size}", f"trainer.seed={args.seed}",
                                   f"trainer.progress_bar={str(progress).lower()}"])
        pretrain(cfg)
    timings["pretrain_s"] = round(time.time() - t0, 1)
    model = convirt.load(model_dir)

    t0 = time.time()
    train_df, train_paths = read_split(manifest, "train")
    corpus_dir, report_dir = work / "corpus-sentence", work / "corpus-report"
    if args.reuse and (corpus_dir / "corpus.json").is_file() and (report_dir / "corpus.json").is_file():
        corpus, report_corpus = load_corpus(corpus_dir, model), load_corpus(report_dir, model)
        reused.append("corpora")
    else:
        corpus = build_corpus(model, train_df["text"].tolist(), corpus_dir, "sentence", f"{manifest} (train)", progress=progress)
        report_corpus = build_corpus(model, train_df["text"].tolist(), report_dir, "report", f"{manifest} (train)",
                                     progress=progress)
    timings["corpora_s"] = round(time.time() - t0, 1)

    t0 = time.time()
    valid_df, valid_paths = read_split(manifest, "valid")
    _, test_paths = read_split(manifest, "test")
    emb = {}
    for name, paths in (("reference", train_paths[:args.max_reference]), ("valid", valid_paths), ("test", test_paths)):
        cache = work / f"emb-{name}.npy"
        if args.reuse and cache.is_file() and len(np.load(cache)) == len(paths):
            emb[name] = np.load(cache)
        else:
            emb[name] = embed_manifest_images(model, paths, progress=progress, desc=f"embedding {name} images")
            np.save(cache, emb[name])
    timings["embed_images_s"] = round(time.time() - t0, 1)

    t0 = time.time()
    cal = calibrate(corpus, emb["reference"], emb["valid"], valid_df["text"].tolist(), FINDINGS)
    timings["calibrate_s"] = round(time.time() - t0, 1)

    t0 = time.time()
    doc = run_report_gen(model, manifest, work / "results", corpus, report_corpus, "test", "synthetic",
                         image_emb=emb["test"], progress=progress)
    timings["draft_and_score_s"] = round(time.time() - t0, 1)

    res = doc["results"]
    checks = {
        "adaptive beats top-k (cosine) on micro label F1": res["adaptive"]["label"]["micro_f1"] > res["topk"]["label"]["micro_f1"],
        "adaptive beats top-k (centred) on micro label F1": res["adaptive"]["label"]["micro_f1"] > res["topk-centred"]["label"]["micro_f1"],
        "adaptive repeats fewer findings than top-k": res["adaptive"]["repeated_findings"] < min(
            res["topk"]["repeated_findings"], res["topk-centred"]["repeated_findings"]),
        "normal images get shorter reports than abnormal ones": res["adaptive"]["sentences_normal"] < res["adaptive"]["sentences_abnormal"],
    }
    summary = {"timings": timings, "reused": reused, "total_s": round(sum(timings.values()), 1), "calibration": cal, "checks": checks,
               "results_md": str(work / "results" / "results.md"),
               "table": {name: {"micro_f1": r["label"]["micro_f1"], "macro_f1": r["label"]["macro_f1"], "BLEU-1": r["BLEU-1"],
                                "BLEU-4": r["BLEU-4"], "ROUGE-L": r["ROUGE-L"], "repeated": r["repeated_findings"],
                                "contradicted": r["contradicted_findings"], "sentences_normal": r["sentences_normal"],
                                "sentences_abnormal": r["sentences_abnormal"]} for name, r in res.items()},
               "labeller_vs_ground_truth_micro_f1": doc["labeller_vs_ground_truth_micro_f1"],
               "pretrain_val_loss": json.loads((work / "run" / "summary.json").read_text())["metrics"].get("val/loss")
               if (work / "run" / "summary.json").is_file() else None}
    print((work / "results" / "results.md").read_text())
    print(f"calibration: window {cal['params']['window']}, normal threshold {cal['params']['normal_threshold']:.4f}, "
          f"drop {cal['params']['drop']}, top-k k = {cal['topk_k']}")
    for name, ok in checks.items():
        print(f"[{'ok' if ok else 'NO'}] {name}")
    print(f"timings: {timings} (total {summary['total_s']} s)" + (f"; re-used from --work: {', '.join(reused)}" if reused else ""))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1, default=float))
    return summary


if __name__ == "__main__":  # the generator uses forkserver workers
    main()
