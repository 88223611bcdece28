"""A retrieval corpus for report drafting: de-duplicated sentences (or reports), their labels, their
text embeddings and a FAISS index, bound to the model that embedded them.

CXR-RePaiR (Endo et al., ML4H 2021) drafts a report by retrieving, for an image embedding, the most
similar entries of a corpus of report sentences (or whole reports) embedded by the text encoder of
the same contrastive model. This module builds and loads that corpus:

* reports come from a manifest (``text`` column) or IU X-ray XML (``NLMCXR_reports.tgz`` or its
  folder); their FINDINGS and IMPRESSION sections are split into sentences with the same splitter
  as training (:func:`convirt.data.reports.split_sentences`);
* each entry is normalised (whitespace, list numbers "1." removed, a final period), entries that
  say nothing (punctuation only) or hold IU X-ray's redaction token ``XXXX`` are dropped and
  counted, and duplicates are merged case-insensitively **with their counts kept** (the count is how
  often radiologists wrote it: the corpus's redundancy, stored, not thrown away);
* each entry gets the rule-based labels of :mod:`convirt.reportgen.labeller`, which the drafting
  step uses to refuse redundant and contradictory sentences;
* embeddings are L2-normalised and searched by inner product with FAISS ``IndexFlatIP`` (exact);
* ``corpus.json`` records the model's weight fingerprint: a corpus refuses to be used with another
  model, whose text embeddings would live in another space.

``calibrate`` (in :mod:`convirt.reportgen.draft`) may add image statistics and learned thresholds;
the index then holds one extra coordinate so that FAISS ranks by the centred score (see there).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from convirt.atomic import atomic_path, atomic_write_text
from convirt.data.reports import MAX_REPORT_CHARS, extract_sections, normalize_report, split_sentences
from convirt.errors import ConfigError, DataError
from convirt.reportgen.labeller import label_report, label_sentence

FORMAT, FORMAT_VERSION = "convirt-report-corpus", 1
LEVELS = ("sentence", "report")
META, ENTRIES, EMBEDDINGS, INDEX, CALIBRATION = "corpus.json", "entries.jsonl", "embeddings.npy", "index.faiss", "calibration.json"
REDACTED = re.compile(r"\bX{3,}\b")  # IU X-ray's anonymisation token
_LIST_NUMBER = re.compile(r"^\s*(?:\d{1,2}[.)]|[-*\u2022])\s+")
_HAS_WORD = re.compile(r"[A-Za-z]{2,}")


def model_fingerprint(model) -> str:
    """sha256 over every tensor of a model's state dict (names, dtypes, shapes, bytes), in order."""
    import torch

    h = hashlib.sha256()
    for key, value in model.state_dict().items():
        t = value.detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def normalise_entry(text: str) -> str:
    """One entry as shown: whitespace collapsed, a leading list number dropped, first letter capital,
    a final period. ``""`` when nothing is left."""
    text = _LIST_NUMBER.sub("", normalize_report(text)).strip()
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


def dedup_key(text: str) -> str:
    """What makes two entries the same: case and trailing punctuation do not count."""
    return normalize_report(text).lower().rstrip(".!? ")


@dataclass
class CorpusEntries:
    """De-duplicated entries with how often each occurred, and what was dropped and why."""

    texts: list[str]
    counts: list[int]
    n_reports: int
    n_raw: int  # entries before de-duplication (after dropping)
    dropped: dict[str, int] = field(default_factory=dict)


def collect_entries(reports: Iterable[str], level: str = "sentence", sections: Sequence[str] | None = ("FINDINGS", "IMPRESSION"),
                    keep_redacted: bool = False, progress: bool = False) -> CorpusEntries:
    """Split, normalise and de-duplicate ``reports`` into sentence- or report-level entries.

    The first spelling of an entry is kept; ``counts[i]`` is how many times entry ``i`` occurred
    (several times in one report counts several times). Identical reports are split once.
    """
    if level not in LEVELS:
        raise ConfigError(f"level must be one of {LEVELS}, got {level!r}")
    report_counts = Counter(r for r in reports if isinstance(r, str))
    counts: Counter = Counter()
    first: dict[str, str] = {}
    dropped: Counter = Counter()
    n_reports = sum(report_counts.values())
    for report, times in tqdm(report_counts.items(), desc="splitting reports", unit="report", disable=not progress):
        body = extract_sections(report, sections, "full")[:MAX_REPORT_CHARS]
        pieces = split_sentences(body) if level == "sentence" else [body]
        if not body.strip():
            dropped["empty report"] += times
        for piece in pieces:
            text = normalise_entry(piece)
            if not _HAS_WORD.search(text):
                dropped["no words"] += times
                continue
            if not keep_redacted and REDACTED.search(text):
                dropped["redacted (XXXX)"] += times
                continue
            key = dedup_key(text)
            first.setdefault(key, text)
            counts[key] += times
    keys = sorted(counts, key=lambda k: (-counts[k], k))  # most frequent first; deterministic
    return CorpusEntries([first[k] for k in keys], [counts[k] for k in keys], n_reports, sum(counts.values()), dict(dropped))


def read_reports(path: str | Path, column: str = "text") -> list[str]:
    """Report texts of a manifest (CSV / JSONL / Parquet, column ``column``) or of IU X-ray XML
    (``NLMCXR_reports.tgz``, or a folder of ``*.xml`` / with ``ecgen-radiology/``)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"--reports {path}: no such file or folder")
    if path.is_dir() or path.name.endswith((".tgz", ".tar.gz", ".tar")):
        from convirt.data.adapters.iu_xray import _xml_sources, parse_report
        from convirt.data.adapters.report_text import compose

        reports = [parse_report(name, data) for name, data in _xml_sources(path)]
        if not reports:
            raise DataError(f"no XML reports found in {path}")
        return [compose(r["findings"], r["impression"]) for r in reports]
    from convirt.data.manifest import read_manifest

    df = read_manifest(path)
    if column not in df.columns:
        raise DataError(f"{path} has no {column!r} column (columns: {', '.join(map(str, df.columns))})")
    return [str(t) for t in df[column].tolist()]


def embed_texts(model, texts: Sequence[str], batch_size: int = 256, progress: bool = True) -> np.ndarray:
    """L2-normalised projected text embeddings (n, d) float32; batches of similar length (less padding)."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.empty((len(texts), model.projection_cfg.dim), dtype=np.float32)
    for start in tqdm(range(0, len(texts), batch_size), desc="embedding corpus", unit="batch", disable=not progress):
        idx = order[start:start + batch_size]
        out[idx] = model.encode_text([texts[i] for i in idx], batch_size=batch_size).numpy()
    return out


INDEX_KINDS = ("auto", "flat", "ivf", "ivf-pq")
IVF_FROM = 200_000  # "auto": exact search below this many entries, an inverted-file index from here on
IVF_NPROBE = 16
# "ivf-pq": 4 sqrt(n) lists, 4-bit product-quantised codes scanned with SIMD (FAISS fast-scan), the best
# k x IVF_PQ_K_FACTOR candidates re-ranked by exact inner product. benchmarks/retrieval.py: 1,000 queries
# against 1M 512-d entries in 0.3 s at recall@10 0.97 (one core), where "ivf" takes 2.8 s (recall 0.96)
IVF_PQ_NPROBE = 64
IVF_PQ_K_FACTOR = 32
IVF_PQ_MIN = 1000  # entries needed to train its quantisers


def _index_kind(kind: str, n: int) -> str:
    if kind not in INDEX_KINDS:
        raise ConfigError(f"index must be one of {INDEX_KINDS}, got {kind!r}")
    return ("ivf" if n >= IVF_FROM else "flat") if kind == "auto" else kind


def _ivf_pq_index(vectors: np.ndarray, seed: int = 0):
    """The "ivf-pq" index for ``vectors`` (see ``IVF_PQ_NPROBE``), trained, empty. Dimensions are
    zero-padded to a multiple of 8 inside the index (a calibrated corpus has d + 1), which changes no
    inner product; queries keep their own dimension."""
    import faiss

    n, d = vectors.shape
    if n < IVF_PQ_MIN:
        raise ConfigError(f"index ivf-pq needs at least {IVF_PQ_MIN} entries to train on; this corpus has {n}: use flat")
    d_pad = -(-d // 8) * 8
    nlist = int(np.clip(4 * np.sqrt(n), 1, max(1, n // 39)))  # FAISS wants >= 39 training points per list
    inner = faiss.index_factory(d_pad, f"IVF{nlist},PQ{d_pad // 4}x4fs,RFlat", faiss.METRIC_INNER_PRODUCT)
    faiss.extract_index_ivf(inner).cp.niter = 10
    index = inner if d_pad == d else faiss.IndexPreTransform(faiss.RemapDimensionsTransform(d, d_pad, False), inner)
    sample = np.random.default_rng(seed).permutation(n)[:32 * nlist]
    index.train(vectors[np.sort(sample)])
    return index


def _tune_index(index, kind: str):
    """Search-time parameters, which FAISS does not keep in the file: nprobe, re-ranking depth."""
    import faiss

    if kind == "ivf":
        faiss.extract_index_ivf(index).nprobe = IVF_NPROBE
    elif kind == "ivf-pq":
        faiss.extract_index_ivf(index).nprobe = IVF_PQ_NPROBE
        refine = faiss.downcast_index(index.index if isinstance(index, faiss.IndexPreTransform) else index)
        refine.k_factor = IVF_PQ_K_FACTOR
    return index


def _write_index(directory: Path, vectors: np.ndarray, kind: str = "flat", seed: int = 0) -> None:
    """Exact ``IndexFlatIP``, or for large corpora ``IndexIVFFlat`` (inner product, sqrt(n) lists, 16 probed):
    a flat search reads every vector (about 0.1 s per image for a million 128-d entries on 2 cores),
    the inverted file about 16/sqrt(n) of them (milliseconds), at the price of approximate ranks;
    or ``ivf-pq`` (:func:`_ivf_pq_index`), faster again at equal recall for millions of entries."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if kind == "ivf-pq":
        index = _ivf_pq_index(vectors, seed)
    elif kind == "ivf":
        nlist = int(np.clip(np.sqrt(len(vectors)), 1, 65536))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(vectors.shape[1]), vectors.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(seed).permutation(len(vectors))[:64 * nlist]
        index.train(vectors[np.sort(sample)])
        index.nprobe = IVF_NPROBE
    else:
        index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    with atomic_path(directory / INDEX) as tmp:
        faiss.write_index(index, str(tmp))


def _write_array(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)


def build_corpus(model, reports: Sequence[str], out: str | Path, level: str = "sentence", source: str = "",
                 sections: Sequence[str] | None = ("FINDINGS", "IMPRESSION"), keep_redacted: bool = False,
                 batch_size: int = 256, progress: bool = True, index: str = "auto") -> "Corpus":
    """Collect, label, embed and index ``reports``; write the corpus folder ``out`` and return it.

    ``index``: ``flat`` (exact), ``ivf`` (approximate, for millions of entries) or ``auto`` (``ivf``
    from 200,000 entries)."""
    if not model.has_text:
        raise ConfigError("this model has no text encoder: a report corpus needs the text tower of a convirt model")
    entries = collect_entries(reports, level, sections, keep_redacted, progress)
    if not entries.texts:
        raise DataError(f"no usable {level}s in the {entries.n_reports} reports (dropped: {entries.dropped})")
    labels = [label_sentence(t) if level == "sentence" else label_report(t, split=True) for t in entries.texts]
    labels = [{k: v for k, v in lab.items() if v is not None} for lab in labels]
    vectors = embed_texts(model, entries.texts, batch_size, progress)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in (CALIBRATION, "image_mean.npy"):  # a rebuilt corpus invalidates an earlier calibration
        (out / stale).unlink(missing_ok=True)
    with atomic_path(out / ENTRIES) as tmp:
        with open(tmp, "w") as fh:
            for text, count, lab in zip(entries.texts, entries.counts, labels):
                fh.write(json.dumps({"text": text, "count": count, "labels": lab}) + "\n")
    _write_array(out / EMBEDDINGS, vectors)
    kind = _index_kind(index, len(vectors))
    _write_index(out, vectors, kind)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "level": level, "source": str(source),
            "sections": list(sections or []), "n_entries": len(entries.texts), "n_occurrences": entries.n_raw,
            "n_reports": entries.n_reports, "dropped": entries.dropped, "dim": int(vectors.shape[1]),
            "model_fingerprint": model_fingerprint(model), "model_meta": getattr(model, "meta", {}),
            "index": kind, "index_note": "faiss inner product over L2-normalised text embeddings (cosine); "
            + {"flat": "exact (IndexFlatIP)", "ivf": f"approximate (IndexIVFFlat, nprobe {IVF_NPROBE})",
               "ivf-pq": f"approximate (IVF + 4-bit PQ fast-scan, nprobe {IVF_PQ_NPROBE}, exact re-ranking of "
                         f"{IVF_PQ_K_FACTOR} x k candidates)"}[kind]}
    atomic_write_text(out / META, json.dumps(meta, indent=1))
    return load_corpus(out, model)


@dataclass
class Corpus:
    """A loaded corpus: entries, counts, labels, embeddings (n, d), the FAISS index, calibration."""

    path: Path
    meta: dict
    texts: list[str]
    counts: np.ndarray
    labels: list[dict[str, int]]
    embeddings: np.ndarray
    index: object
    calibration: dict | None = None
    image_mean: np.ndarray | None = None  # per entry: mean cosine to reference images (calibrated corpora)

    @property
    def level(self) -> str:
        return self.meta["level"]

    def __len__(self) -> int:
        return len(self.texts)

    def search(self, image_emb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` entries per image by score (centred cosine when calibrated, else cosine):
        ``(scores (n, k), indices (n, k))``, best first."""
        q = np.ascontiguousarray(np.atleast_2d(image_emb), dtype=np.float32)
        if q.shape[1] != self.embeddings.shape[1]:
            raise DataError(f"image embeddings have dimension {q.shape[1]}, the corpus {self.embeddings.shape[1]}: "
                            "was it built with another model?")
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        if self.image_mean is not None:  # index vectors are [e_j, -mean_j]: <[x, 1], .> = cos - mean_j
            q = np.concatenate([q, np.ones((len(q), 1), np.float32)], axis=1)
        scores, idx = self.index.search(q, min(int(k), len(self)))
        return scores, idx

    def cosine(self, image_emb: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Plain cosine of one image with entries ``idx`` (what is shown next to each sentence)."""
        x = np.asarray(image_emb, dtype=np.float32).reshape(-1)
        x = x / max(float(np.linalg.norm(x)), 1e-12)
        return self.embeddings[idx] @ x

    def set_calibration(self, image_mean: np.ndarray | None, calibration: dict) -> None:
        """Store image statistics and learned selection parameters; rebuild the index to rank by them."""
        if image_mean is not None:
            _write_array(self.path / "image_mean.npy", image_mean.astype(np.float32))
            vectors = np.concatenate([self.embeddings, -image_mean.astype(np.float32)[:, None]], axis=1)
        else:
            (self.path / "image_mean.npy").unlink(missing_ok=True)
            vectors = self.embeddings
        _write_index(self.path, vectors, self.meta.get("index", "flat"))
        atomic_write_text(self.path / CALIBRATION, json.dumps(calibration, indent=1))
        fresh = load_corpus(self.path)
        self.index, self.calibration, self.image_mean = fresh.index, fresh.calibration, fresh.image_mean


def load_corpus(directory: str | Path, model=None) -> Corpus:
    """Read a corpus folder; with ``model``, refuse it unless it was embedded by these exact weights."""
    import faiss

    directory = Path(directory)
    for name in (META, ENTRIES, EMBEDDINGS, INDEX):
        if not (directory / name).is_file():
            raise DataError(f"{directory} is not a report corpus: {name} is missing (build one with `convirt corpus build`)")
    try:
        meta = json.loads((directory / META).read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{directory / META} is not valid JSON: {err}") from None
    if meta.get("format") != FORMAT:
        raise DataError(f"{directory / META} is not a {FORMAT} file")
    if model is not None:
        have = model_fingerprint(model)
        if have != meta["model_fingerprint"]:
            raise ConfigError(f"the corpus {directory} was embedded by another model (weights sha256 "
                              f"{meta['model_fingerprint'][:12]}…, this model {have[:12]}…): its text embeddings "
                              "would not match this model's images. Rebuild it: convirt corpus build --model ...")
    texts, counts, labels = [], [], []
    with open(directory / ENTRIES) as fh:
        for line in fh:
            row = json.loads(line)
            texts.append(row["text"]), counts.append(int(row["count"])), labels.append(row.get("labels", {}))
    embeddings = np.load(directory / EMBEDDINGS, allow_pickle=False)
    if len(embeddings) != len(texts):
        raise DataError(f"{directory}: {len(texts)} entries but {len(embeddings)} embeddings (a partial write?)")
    index = _tune_index(faiss.read_index(str(directory / INDEX)), meta.get("index", "flat"))
    calibration = image_mean = None
    if (directory / CALIBRATION).is_file():
        calibration = json.loads((directory / CALIBRATION).read_text())
        if (directory / "image_mean.npy").is_file():
            image_mean = np.load(directory / "image_mean.npy", allow_pickle=False)
    expected_dim = embeddings.shape[1] + (image_mean is not None)
    if index.ntotal != len(texts) or index.d != expected_dim:
        raise DataError(f"{directory / INDEX} does not match the entries ({index.ntotal} x {index.d}, expected "
                        f"{len(texts)} x {expected_dim}): rebuild the corpus")
    return Corpus(directory, meta, texts, np.asarray(counts, dtype=np.int64), labels, embeddings, index, calibration,
                  image_mean)
