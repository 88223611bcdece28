"""Corpus building: de-duplication with counts, the FAISS index, the model binding, and the real IU X-ray reports."""

import time

import numpy as np
import pytest
import torch
from PIL import Image

from convirt.errors import ConfigError, DataError
from convirt.models.dual_encoder import DualEncoder
from convirt.reportgen.corpus import build_corpus, collect_entries, load_corpus, normalise_entry, read_reports
from convirt.reportgen.draft import SelectionParams, calibrate, draft_reports
from tests.helpers import tiny_dual_encoder

REPORTS = [
    "FINDINGS: The lungs are clear. No pleural effusion. IMPRESSION: No acute disease.",
    "FINDINGS: The lungs are clear.  no pleural effusion IMPRESSION: 1. No acute disease.",
    "FINDINGS: Small left pleural effusion. The XXXX are normal. IMPRESSION: .",
    "FINDINGS: The lungs are clear. No pleural effusion. IMPRESSION: No acute disease.",  # an identical report
    "",
]


def test_collect_entries_counts_and_drops():
    e = collect_entries(REPORTS)
    assert dict(zip(e.texts, e.counts)) == {"The lungs are clear.": 3, "No pleural effusion.": 3, "No acute disease.": 3,
                                            "Small left pleural effusion.": 1}
    assert e.texts[:3] == ["No acute disease.", "No pleural effusion.", "The lungs are clear."]  # by count, then text
    assert e.dropped == {"redacted (XXXX)": 1, "no words": 1, "empty report": 1}
    assert e.n_reports == 5 and e.n_raw == 10
    kept = collect_entries(REPORTS, keep_redacted=True)
    assert "The XXXX are normal." in kept.texts
    reports = collect_entries(REPORTS, level="report")
    assert reports.counts[0] == 2 and len(reports.texts) == 2  # whole reports: the identical pair merged, XXXX dropped
    assert normalise_entry("  2. no  pneumothorax ") == "No pneumothorax."
    with pytest.raises(ConfigError):
        collect_entries(REPORTS, level="paragraph")


def test_build_load_search_and_model_binding(tmp_path):
    model = DualEncoder.load(tiny_dual_encoder(tmp_path / "model"))
    corpus = build_corpus(model, REPORTS, tmp_path / "corpus", progress=False)
    assert len(corpus) == 4 and corpus.meta["n_reports"] == 5
    assert corpus.labels[corpus.texts.index("No pleural effusion.")] == {"Pleural Effusion": 0}
    assert np.allclose(np.linalg.norm(corpus.embeddings, axis=1), 1, atol=1e-5)
    image = model.encode_images(torch.rand(2, 1, 32, 32)).numpy()
    scores, idx = corpus.search(image, 4)
    assert np.allclose(scores, np.take_along_axis(image @ corpus.embeddings.T, idx, axis=1), atol=1e-5)  # exact cosine
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    again = load_corpus(tmp_path / "corpus", model)
    assert again.texts == corpus.texts and (again.counts == corpus.counts).all()
    other = DualEncoder.load(tmp_path / "model")
    with torch.no_grad():
        next(other.text_head.parameters()).add_(0.01)
    with pytest.raises(ConfigError, match="another model"):
        load_corpus(tmp_path / "corpus", other)
    with pytest.raises(DataError, match="not a report corpus"):
        load_corpus(tmp_path)


def test_calibration_centres_scores(tmp_path):
    model = DualEncoder.load(tiny_dual_encoder(tmp_path / "model"))
    corpus = build_corpus(model, REPORTS * 3, tmp_path / "corpus", progress=False)
    torch.manual_seed(0)
    ref = model.encode_images(torch.rand(8, 1, 32, 32)).numpy()
    fit = model.encode_images(torch.rand(6, 1, 32, 32)).numpy()
    cal = calibrate(corpus, ref, fit, [REPORTS[0]] * 3 + [REPORTS[2]] * 3, ["No Finding", "Pleural Effusion"],
                    windows=(1, 2), ks=(1, 2), drops=(0.1, 1.0))
    assert cal["topk_k"] in (1, 2) and cal["params"]["window"] in (1, 2)
    loaded = load_corpus(tmp_path / "corpus", model)
    assert loaded.image_mean is not None and loaded.index.d == corpus.embeddings.shape[1] + 1
    scores, idx = loaded.search(fit[:1], len(loaded))
    centred = fit[0] @ loaded.embeddings.T - loaded.image_mean
    assert np.allclose(scores[0], centred[idx[0]], atol=1e-5)
    raw = draft_reports(loaded, fit[:1], "topk", k=2, centred=False)[0]
    assert raw.similarities == pytest.approx(sorted((fit[0] @ loaded.embeddings.T).tolist(), reverse=True)[:2], abs=1e-5)
    assert draft_reports(loaded, fit[:1], "adaptive", params=SelectionParams(normal_threshold=1e9))[0].normal


def test_iu_xray_corpus_and_one_draft(shared_data, tmp_path):
    """The 3,955 real IU X-ray reports: split, de-duplicate, label, embed (tiny model), index; draft one report offline."""
    tgz = shared_data / "iu-xray-reports" / "NLMCXR_reports.tgz"
    if not tgz.is_file():
        pytest.skip(f"{tgz} not found")
    model = DualEncoder.load(tiny_dual_encoder(tmp_path / "model"))
    start = time.time()
    reports = read_reports(tgz)
    assert len(reports) == 3955
    corpus = build_corpus(model, reports, tmp_path / "iu", source=str(tgz), progress=False)
    built = time.time() - start
    meta = corpus.meta
    assert meta["n_reports"] == 3955 and meta["dropped"]["redacted (XXXX)"] > 1000
    assert 5000 < len(corpus) < meta["n_occurrences"]  # real redundancy: far fewer distinct sentences than written
    assert corpus.texts[0] == "No acute cardiopulmonary abnormality." and corpus.counts[0] > 400  # "1. ..." merged in
    assert corpus.labels[0] == {"No Finding": 1}
    assert sum(lab.get("Cardiomegaly") == 1 for lab in corpus.labels) > 50
    assert len({t.lower() for t in corpus.texts}) == len(corpus)

    image = tmp_path / "cxr.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)).save(image)
    emb = model.encode_images([str(image)]).numpy()
    start = time.time()
    adaptive = draft_reports(corpus, emb, "adaptive")[0]
    topk = draft_reports(corpus, emb, "topk", k=3)[0]
    drafted = time.time() - start
    assert 1 <= len(adaptive.sentences) <= 8 and set(adaptive.sentences) <= set(corpus.texts)
    assert len(topk.sentences) == 3 and topk.scores == sorted(topk.scores, reverse=True)
    assert all(-1 <= s <= 1 for s in adaptive.similarities)
    print(f"IU X-ray corpus: {len(corpus)} entries built in {built:.1f} s; two drafts in {drafted:.2f} s")


def test_ivf_index_for_large_corpora(tmp_path):
    """The inverted-file index (``--index ivf``, auto from 200,000 entries) finds what exact search finds."""
    import faiss

    from convirt.reportgen.corpus import _index_kind, _write_index

    assert _index_kind("auto", 1000) == "flat" and _index_kind("auto", 10**6) == "ivf"
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((50, 16)).astype(np.float32)
    vectors = centres[rng.integers(0, 50, 20000)] + 0.05 * rng.standard_normal((20000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    _write_index(tmp_path, vectors, "ivf")
    index = faiss.read_index(str(tmp_path / "index.faiss"))
    assert isinstance(index, faiss.IndexIVFFlat)
    queries = vectors[:50] + 0.01
    _, top = index.search(queries, 1)
    exact = (queries @ vectors.T).argmax(axis=1)
    assert (top[:, 0] == exact).mean() >= 0.95


@pytest.mark.parametrize("dim", [16, 17])  # 17: a calibrated corpus' d + 1, zero-padded inside the index
def test_ivf_pq_index_finds_what_exact_search_finds(tmp_path, dim):
    """``--index ivf-pq``: product-quantised scan + exact re-ranking, tuned again when read back."""
    import faiss

    from convirt.reportgen.corpus import IVF_PQ_K_FACTOR, IVF_PQ_NPROBE, _tune_index, _write_index

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((50, dim)).astype(np.float32)
    vectors = centres[rng.integers(0, 50, 20000)] + 0.3 * rng.standard_normal((20000, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    _write_index(tmp_path, vectors, "ivf-pq")
    index = _tune_index(faiss.read_index(str(tmp_path / "index.faiss")), "ivf-pq")
    assert index.d == dim and index.ntotal == len(vectors)
    assert faiss.extract_index_ivf(index).nprobe == IVF_PQ_NPROBE
    queries = vectors[:100] + 0.05 * rng.standard_normal((100, dim)).astype(np.float32)
    scores, top = index.search(queries, 10)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top, exact)])
    assert recall >= 0.85, recall  # the plumbing; recall on 1M realistic vectors: benchmarks/retrieval.py
    # re-ranked scores are exact inner products
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ vectors.T, top, axis=1), rtol=1e-5, atol=1e-5)
    assert IVF_PQ_K_FACTOR >= 1


def test_ivf_pq_index_refuses_tiny_corpora(tmp_path):
    from convirt.errors import ConfigError
    from convirt.reportgen.corpus import _write_index

    with pytest.raises(ConfigError, match="ivf-pq needs at least"):
        _write_index(tmp_path, np.eye(16, dtype=np.float32), "ivf-pq")
