"""Embedding throughput and search latency: 1,000 queries against 10k, 100k and 1M candidates.

    python benchmarks/retrieval.py                 # embedding + search at 10k, 100k, 1M (~8 min on 2 cores)
    python benchmarks/retrieval.py --quick         # small towers, 10k and 100k only
    python benchmarks/retrieval.py --embeddings cand.npy --queries q.npy    # your own embeddings

1. **Embedding**: images/s and sentences/s of ``DualEncoder.encode_images`` / ``encode_text`` for the
   paper's towers (ResNet-50 at 224 px, a BERT-base-sized text tower; random weights: speed does not
   depend on them), fp32 as the API runs them, and under bf16 autocast (+ channels-last images).
2. **Search**: top-10 of 1,000 queries among N unit vectors (d = 512), timed as one batch call:
   exact search by a torch matmul + top-k and by FAISS ``IndexFlatIP``; the library's exact
   evaluation search (``convirt.evaluation.retrieval.ranked_topk``, float64 re-scoring); the report
   corpus' approximate indexes as the library builds and tunes them (``convirt.reportgen.corpus``,
   ``--index ivf`` and ``--index ivf-pq``: IVF + 4-bit PQ fast-scan + exact re-ranking, the index chosen
   for the 1M target); and, for reference, FAISS indexes with the smallest search parameter that
   reaches recall@10 >= ``--target-recall`` against the exact top-10 (IVF-Flat over nprobe, HNSW over
   efSearch, HNSW only up to ``--hnsw-max`` candidates: slow to build). Build time and index memory
   are reported too.

Candidates are synthetic unless given: a clustered, anisotropic cloud as contrastive embeddings are
(``--clusters`` centres in a ``--intrinsic-dim``-dimensional subspace, spread within clusters, plus
isotropic noise), normalised; each query is one candidate's latent point moved by noise (a text
paired with its image). Recall of approximate indexes depends on this structure: check it on real
embeddings with ``--embeddings``/``--queries`` (``.npy``, float32, one row per vector).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _machine import machine  # noqa: E402


# ---------------------------------------------------------------------------------------------- data
def synthetic_embeddings(n: int, n_queries: int, dim: int = 512, clusters: int = 1000, intrinsic: int = 64,
                         spread: float = 1.0, noise: float = 0.7, query_noise: float = 1.0,
                         seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(candidates (n, dim), queries (n_queries, dim)), float32, unit norm; generated in chunks."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((dim, intrinsic)))[0].T.astype(np.float32)  # (intrinsic, dim), orthonormal rows
    centres = rng.standard_normal((clusters, intrinsic), dtype=np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    latents_of_queries = rng.choice(n, size=n_queries, replace=False)
    q_latent = np.empty((n_queries, intrinsic), dtype=np.float32)
    chunk = 100_000
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        latent = centres[rng.integers(0, clusters, m)] + spread * rng.standard_normal((m, intrinsic), dtype=np.float32)
        sel = (latents_of_queries >= s) & (latents_of_queries < s + m)
        q_latent[sel] = latent[latents_of_queries[sel] - s]
        x = latent @ basis
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        x += noise / np.sqrt(dim) * rng.standard_normal((m, dim), dtype=np.float32)
        out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    q_latent += query_noise * rng.standard_normal(q_latent.shape, dtype=np.float32)
    q = q_latent @ basis
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q += noise / np.sqrt(dim) * rng.standard_normal(q.shape, dtype=np.float32)
    return out, q / np.linalg.norm(q, axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------- embedding
def embedding_throughput(size: str, n_images: int, n_texts: int, repeats: int) -> list[dict]:
    from convirt.config import load_config
    from convirt.models.dual_encoder import DualEncoder

    towers = {"paper": ("resnet50", 224, 12, 768), "small": ("resnet18", 128, 2, 128)}[size]
    model_name, px, layers, hidden = towers
    sentences = ["There is a small left pleural effusion.", "The heart size is normal.", "No pneumothorax is seen.",
                 "Mild cardiomegaly with bibasilar atelectasis.", "Lungs are clear without focal consolidation.",
                 "Endotracheal tube terminates 4 cm above the carina."]
    cfg = load_config(overrides=[f"image.model={model_name}", "image.pretrained=false", f"image.size={px}",
                                 "text.model=scratch", f"text.scratch.layers={layers}", f"text.scratch.hidden={hidden}",
                                 f"text.scratch.heads={max(2, hidden // 64)}", "text.freeze_layers=0",
                                 "text.scratch.vocab_size=500"])
    torch.manual_seed(0)
    model = DualEncoder.build(cfg.image, cfg.text, cfg.projection, corpus=sentences * 20).eval()
    images = torch.randn(n_images, 1, px, px)
    texts = [sentences[i % len(sentences)] for i in range(n_texts)]
    rows = []
    for mode in ("fp32", "bf16 + channels_last"):
        fast = mode != "fp32"
        if fast:
            model.image_encoder.to(memory_format=torch.channels_last)
        x = images.contiguous(memory_format=torch.channels_last) if fast else images
        for kind, fn, n in (("images", lambda: model.encode_images(x, batch_size=32), n_images),
                            ("sentences", lambda: model.encode_text(texts, batch_size=256), n_texts)):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast):
                fn()  # warm-up
                best = min(_timed(fn) for _ in range(repeats))
            rows.append({"towers": f"{model_name} {px}px / BERT {layers}x{hidden}", "mode": mode, "kind": kind,
                         "per_s": n / best})
            print(f"  embed {size} {mode:22s} {kind:9s} {n / best:8.1f}/s", flush=True)
    return rows


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------- search
def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t)) / k for f, t in zip(found, truth)]))


def torch_topk(cand: torch.Tensor, q: np.ndarray, k: int) -> np.ndarray:
    qt = torch.from_numpy(q)
    step = max(1, (1 << 27) // len(cand))  # at most 128M similarities (512 MB) at once
    return torch.cat([torch.topk(qt[s:s + step] @ cand.T, k, dim=1).indices for s in range(0, len(qt), step)]).numpy()


def index_bytes(index) -> int:
    import faiss

    return int(faiss.serialize_index(index).nbytes)


def search_table(cand: np.ndarray, q: np.ndarray, k: int, target: float, repeats: int, quick: bool, hnsw_max: int) -> list[dict]:
    import faiss

    from convirt.evaluation.retrieval import ranked_topk
    from convirt.reportgen import corpus as corpus_mod

    n, d = cand.shape
    rows: list[dict] = []

    def timed_search(fn, reps: int = repeats):
        out, best = None, float("inf")
        for _ in range(reps):
            start = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - start)
        return out, best

    def add(method: str, seconds: float, found, build_s: float | None = None, mem: int | None = None, params: str = "",
            library: bool = False):
        rows.append({"n": n, "method": method, "params": params, "seconds": seconds, "recall@10": recall_at(found, truth),
                     "build_s": build_s, "index_mb": None if mem is None else mem / 2**20, "library": library})
        r = rows[-1]
        print(f"  n={n:>9,} {method:34s} {params:22s} {seconds * 1000:9.1f} ms  recall {r['recall@10']:.3f}"
              + (f"  build {build_s:.1f}s" if build_s is not None else ""), flush=True)

    # exact
    t0 = time.perf_counter()
    flat = faiss.IndexFlatIP(d)
    flat.add(cand)
    flat_build = time.perf_counter() - t0
    (_, truth), t = timed_search(lambda: flat.search(q, k))
    add("FAISS IndexFlatIP (exact)", t, truth, flat_build, index_bytes(flat) if n <= 100_000 else n * d * 4)
    flat = None  # free it (2 GB at 1M)
    cand_t = torch.from_numpy(cand)
    found, t = timed_search(lambda: torch_topk(cand_t, q, k))
    add("torch matmul + topk (exact)", t, found)
    if not quick or n <= 100_000:  # the evaluation code wants float64 unit vectors (its own re-scoring precision)
        q64, cand64 = q.astype(np.float64), cand.astype(np.float64)
        found, t = timed_search(lambda: ranked_topk(q64, cand64, k), reps=1)
        add("convirt ranked_topk (exact, float64 re-rank)", t, found, library=True)
        del q64, cand64

    # the report corpus' approximate indexes, as convirt builds and loads them
    with tempfile.TemporaryDirectory() as tmp:
        for kind in [k for k in corpus_mod.INDEX_KINDS if k not in ("auto", "flat")]:
            t0 = time.perf_counter()
            corpus_mod._write_index(Path(tmp), cand, kind)
            build = time.perf_counter() - t0
            index = faiss.read_index(str(Path(tmp) / corpus_mod.INDEX))
            tune = getattr(corpus_mod, "_tune_index", None)
            if tune is not None:
                tune(index, kind)
            else:  # before ivf-pq existed
                faiss.extract_index_ivf(index).nprobe = corpus_mod.IVF_NPROBE
            ivf = faiss.extract_index_ivf(index)
            (_, found), t = timed_search(lambda: index.search(q, k))
            params = f"nlist {ivf.nlist}, nprobe {ivf.nprobe}"
            if kind == "ivf-pq":
                params += f", re-rank {corpus_mod.IVF_PQ_K_FACTOR}k"
            add(f"convirt corpus index: {kind}", t, found, build, os.path.getsize(Path(tmp) / corpus_mod.INDEX), params,
                library=True)
            index = None

    # approximate FAISS indexes: the fastest setting that reaches the target recall
    def sweep(name: str, index, set_param, values, build: float, params_of, mem: int):
        best = None
        for v in values:
            set_param(v)
            (_, found), t = timed_search(lambda: index.search(q, k), reps=1)
            r = recall_at(found, truth)
            if r >= target:
                (_, found), t = timed_search(lambda: index.search(q, k))
                best = (t, found, params_of(v))
                break
            best = (t, found, params_of(v) + " (target not reached)")
        add(name, best[0], best[1], build, mem, best[2])

    nlist = int(4 * np.sqrt(n))
    train = cand[np.random.default_rng(0).permutation(n)[: min(n, 32 * nlist)]]
    t0 = time.perf_counter()
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.niter = 10
    ivf.train(train)
    ivf.add(cand)
    build = time.perf_counter() - t0
    sweep("FAISS IVF-Flat", ivf, lambda v: setattr(ivf, "nprobe", v), [8, 16, 24, 32, 48, 64, 96, 128, 192, 256], build,
          lambda v: f"nlist {nlist}, nprobe {v}", n * d * 4 + nlist * d * 4)
    ivf = None

    if n <= hnsw_max:
        t0 = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 40
        hnsw.add(cand)
        build = time.perf_counter() - t0
        sweep("FAISS HNSW32", hnsw, lambda v: setattr(hnsw.hnsw, "efSearch", v), [16, 32, 64, 128, 256], build,
              lambda v: f"M 32, efSearch {v}", n * d * 4 + n * 32 * 2 * 4)
        hnsw = None
    return rows


# ---------------------------------------------------------------------------------------------- main
def markdown(res: dict) -> str:
    lines = [f"Machine: {res['machine']}; load average {res['load_start']} at start, {res['load_end']} at end.", ""]
    if res["embedding"]:
        lines += ["Embedding throughput (random weights, batch 32 images / 256 sentences):", "",
                  "| towers | mode | images/s | sentences/s |", "|---|---|---|---|"]
        by = {}
        for r in res["embedding"]:
            by.setdefault((r["towers"], r["mode"]), {})[r["kind"]] = r["per_s"]
        for (towers, mode), v in by.items():
            lines.append(f"| {towers} | {mode} | {v.get('images', float('nan')):.1f} | {v.get('sentences', float('nan')):.0f} |")
        lines.append("")
    lines += [f"Search: {res['n_queries']:,} queries, top-{res['k']}, d = {res['dim']} ({res['data']}); one batch call, "
              f"best of {res['repeats']}; recall@10 against the exact top-10:", "",
              "| candidates | method | parameters | latency (1k queries) | recall@10 | build | index MB |",
              "|---|---|---|---|---|---|---|"]
    for r in res["search"]:
        mark = " (library)" if r["library"] else ""
        build = "-" if r["build_s"] is None else f"{r['build_s']:.1f} s"
        mem = "-" if r["index_mb"] is None else f"{r['index_mb']:,.0f}"
        lines.append(f"| {r['n']:,} | {r['method']}{mark} | {r['params']} | {r['seconds'] * 1000:,.0f} ms | "
                     f"{r['recall@10']:.3f} | {build} | {mem} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,100000,1000000", help="candidate counts (default 10k, 100k, 1M)")
    p.add_argument("--queries", dest="n_queries", type=int, default=1000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--target-recall", type=float, default=0.95)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--hnsw-max", type=int, default=100_000, help="largest N to build HNSW for (slow to build)")
    p.add_argument("--embed", default="paper,small", help="towers for the embedding table (paper, small; empty: skip)")
    p.add_argument("--embed-images", type=int, default=64)
    p.add_argument("--embed-texts", type=int, default=512)
    p.add_argument("--embeddings", type=Path, help="candidate embeddings (.npy) instead of synthetic ones")
    p.add_argument("--query-embeddings", type=Path, help="query embeddings (.npy), with --embeddings")
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--intrinsic-dim", type=int, default=64)
    p.add_argument("--spread", type=float, default=1.0, help="within-cluster spread (centres have unit variance)")
    p.add_argument("--noise", type=float, default=0.7, help="isotropic noise, relative to the unit signal")
    p.add_argument("--query-noise", type=float, default=1.0, help="how far a query's latent point is from its candidate's")
    p.add_argument("--threads", type=int, default=None, help="torch and FAISS threads (default: all cores)")
    p.add_argument("--quick", action="store_true", help="small towers only, 10k and 100k candidates, 2 repeats")
    p.add_argument("--out", type=Path, default=HERE / "results" / "retrieval")
    args = p.parse_args()
    import faiss

    if args.threads:
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    if args.quick:
        args.sizes, args.embed, args.repeats = "10000,100000", "small", 2
    res = {"machine": machine(), "load_start": [round(x, 2) for x in os.getloadavg()], "command": " ".join(sys.argv),
           "embedding": [], "search": [], "n_queries": args.n_queries, "k": args.k, "dim": args.dim,
           "repeats": args.repeats, "threads": torch.get_num_threads()}
    for size in [s for s in args.embed.split(",") if s]:
        res["embedding"] += embedding_throughput(size, args.embed_images if size == "paper" else 4 * args.embed_images,
                                                 args.embed_texts, max(1, args.repeats - 1))
    if args.embeddings:
        cand_all = np.ascontiguousarray(np.load(args.embeddings), dtype=np.float32)
        cand_all /= np.linalg.norm(cand_all, axis=1, keepdims=True)
        q = np.ascontiguousarray(np.load(args.query_embeddings), dtype=np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        res["data"], args.dim = f"given embeddings {args.embeddings.name}", cand_all.shape[1]
    for n in [int(s) for s in args.sizes.split(",") if s]:
        if args.embeddings:
            cand = cand_all[:n]
        else:
            cand, q = synthetic_embeddings(n, args.n_queries, args.dim, args.clusters, args.intrinsic_dim, args.spread,
                                           args.noise, args.query_noise)
            res["data"] = (f"synthetic: {args.clusters} clusters in a {args.intrinsic_dim}-d subspace, spread {args.spread}, "
                           f"isotropic noise {args.noise}; queries = candidates' latent points + noise {args.query_noise}")
        res["search"] += search_table(cand, q, args.k, args.target_recall, args.repeats, args.quick, args.hnsw_max)
        del cand
    res["load_end"] = [round(x, 2) for x in os.getloadavg()]
    text = markdown(res)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(text + "\n")
    (args.out / "results.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
