import json

import numpy as np
import pandas as pd
import pytest
import torch
from torchmetrics.retrieval import RetrievalPrecision

from convirt.errors import DataError
from convirt.evaluation.retrieval import (_normalise, build_retrieval_benchmark, image_to_image_precision,
                                          precision_at_k, ranked_topk, text_to_image_precision)

BACKENDS = ["torch", "faiss"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_worked_example_with_ties(backend):
    # Query [1, 0]; cosines: c0=0, c1=1, c2=1 (same direction, other length), c3=0.707, c4=1, c5=-1.
    # Ties (c1, c2, c4) are broken by index, so the ranking is c1, c2, c4, c3, c0, c5.
    cand = np.array([[0, 1], [1, 0], [2, 0], [1, 1], [1, 0], [-1, 0]], dtype=float)
    query = np.array([[1, 0], [1, 0]], dtype=float)
    rel = np.array([[1, 0, 1, 0, 1, 0],  # hits along the ranking: 0, 1, 1, 0, 1, 0
                    [0, 0, 0, 0, 0, 0]])  # a query with nothing relevant
    out = precision_at_k(query, cand, rel, ks=(1, 2, 3, 4, 10), backend=backend)
    assert out["per_query"]["P@1"] == [0.0, 0.0]
    assert out["per_query"]["P@2"] == [0.5, 0.0]
    assert out["per_query"]["P@3"] == pytest.approx([2 / 3, 0.0])
    assert out["per_query"]["P@4"] == [0.5, 0.0]
    assert out["per_query"]["P@10"] == [0.3, 0.0]  # K > 6 candidates: still divided by K
    assert out["P@2"] == 0.25 and out["n_queries_without_relevant"] == 1
    assert out["notes"] and "K=[10]" in out["notes"][0]
    json.dumps(out)
    np.testing.assert_array_equal(ranked_topk(_normalise(query, "q"), _normalise(cand, "c"), 10, backend)[0],
                                  [1, 2, 4, 3, 0, 5])


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_torchmetrics_retrieval_precision(seed):
    rng = np.random.default_rng(seed)
    # Non-negative embeddings: torchmetrics only counts relevant documents with a positive score.
    q, c = np.abs(rng.normal(size=(30, 16))), np.abs(rng.normal(size=(40, 16)))
    rel = (rng.random((30, 40)) < 0.15).astype(int)
    rel[:3] = 0  # queries without any relevant candidate score 0 in both
    qn, cn = q / np.linalg.norm(q, axis=1, keepdims=True), c / np.linalg.norm(c, axis=1, keepdims=True)
    preds = torch.tensor(qn @ cn.T).flatten()
    indexes = torch.arange(30).repeat_interleave(40)
    ours = precision_at_k(q, c, rel, ks=(1, 5, 10, 60))
    for k in (1, 5, 10, 60):  # 60 > 40 candidates
        tm = RetrievalPrecision(top_k=k)(preds, torch.tensor(rel).flatten().bool(), indexes=indexes).item()
        assert ours[f"P@{k}"] == pytest.approx(tm, abs=1e-6)
    assert ours["n_queries_without_relevant"] >= 3


def test_faiss_and_torch_give_identical_rankings_including_ties_and_near_ties():
    rng = np.random.default_rng(3)
    cand = rng.normal(size=(2000, 24))
    cand[100:180] = cand[5]  # exact ties (80 copies, more than the shortlist margin)
    cand[300:310] = cand[7] + rng.normal(scale=1e-9, size=(10, 24))  # near ties below float32 resolution
    query = np.concatenate([rng.normal(size=(40, 24)), cand[[5, 7, 7]] * 3.0])
    qn, cn = _normalise(query, "q"), _normalise(cand, "c")
    for k in (1, 10, 50, 120):
        a, b = ranked_topk(qn, cn, k, "torch"), ranked_topk(qn, cn, k, "faiss")
        np.testing.assert_array_equal(a, b)
    # And both equal a brute-force float64 ranking with the documented tie rule.
    exact = (qn[:, None, :] * cn[None, :, :]).sum(-1)
    brute = np.stack([np.lexsort((np.arange(len(cn)), -row))[:120] for row in exact])
    np.testing.assert_array_equal(ranked_topk(qn, cn, 120, "torch"), brute)
    assert (ranked_topk(qn, cn, 120, "faiss")[40, :81] == np.r_[5, 100:180]).all()
    rel = (rng.random((len(query), len(cand))) < 0.1).astype(int)
    assert precision_at_k(query, cand, rel, backend="torch") == precision_at_k(query, cand, rel, backend="faiss")


@pytest.mark.parametrize("backend", BACKENDS)
def test_category_precision_text_to_image_and_image_to_image(backend):
    # Two categories on two axes; images 0-3 positive for category 0, 4-6 for category 1.
    img = np.array([[1, 0.1], [1, 0.2], [1, 0.3], [1, 0.4], [0.1, 1], [0.2, 1], [0.3, 1]], dtype=float)
    labels = np.array([[1, 0]] * 4 + [[0, 1]] * 3)
    text = np.array([[1, 0], [0, 1], [0.5, 0.5]])
    one_hot = np.array([[1, 0], [0, 1], [0, 1]])
    out = text_to_image_precision(text, one_hot, img, labels, ks=(3, 4, 8), category_names=["a", "b"], backend=backend)
    # Query 0 (category a): its 4 images rank first -> P@3 = 1, P@4 = 1, P@8 = 4/8.
    # Query 1 (b): 3 images, then a's -> P@3 = 1, P@4 = 3/4, P@8 = 3/8.
    # Query 2 (b, diagonal): cosines tie pairwise ([1, .3]~[.3, 1] etc.); tie rule puts category a's first.
    assert out["per_category"]["a"] == {"P@3": 1.0, "P@4": 1.0, "P@8": 0.5, "n_queries": 1}
    assert out["per_category"]["b"]["n_queries"] == 2
    # Query 2 ranks 3, 2, 6, 1, 5, 0, 4 (pairs 2~6, 1~5, 0~4 tie) -> hits for b at ranks 3, 5, 7.
    assert out["per_category"]["b"]["P@3"] == pytest.approx((1 + 1 / 3) / 2)
    assert out["per_category"]["b"]["P@4"] == pytest.approx((0.75 + 0.25) / 2)
    assert out["mean"]["P@8"] == pytest.approx((0.5 + 3 / 8) / 2)
    same = text_to_image_precision(text, np.array([0, 1, 1]), img, labels, ks=(3, 4, 8), category_names=["a", "b"])
    assert same["per_category"] == out["per_category"]
    # Image-to-image inside one pool: the query itself is excluded.
    i2i = image_to_image_precision(img, np.array([0] * 4 + [1] * 3), img, labels, ks=(3,), exclude=np.arange(7),
                                   backend=backend)
    assert i2i["per_category"]["0"]["P@3"] == 1.0  # 3 other a's
    assert i2i["per_category"]["1"]["P@3"] == pytest.approx(2 / 3)  # only 2 other b's
    with pytest.raises(DataError):
        text_to_image_precision(text, np.array([[1, 1], [0, 1], [0, 1]]), img, labels)


def test_query_without_relevant_candidates_counted():
    img = np.eye(3)
    labels = np.array([[1, 0], [1, 0], [1, 0]])  # nothing is category 1
    out = text_to_image_precision(np.eye(3)[:2], np.array([0, 1]), img, labels, ks=(1, 5))
    assert out["n_queries_without_relevant"] == 1
    assert out["per_category"]["1"]["P@1"] == 0.0 and out["per_category"]["0"]["P@5"] == pytest.approx(3 / 5)


def test_build_retrieval_benchmark_is_exact_and_deterministic():
    rng = np.random.default_rng(0)
    cols = ["a", "b", "c"]
    df = pd.DataFrame((rng.random((600, 3)) < 0.3).astype(float), columns=cols)
    df.loc[rng.choice(600, 40, replace=False), "b"] = -1.0  # uncertain: never eligible anywhere
    df.loc[rng.choice(600, 40, replace=False), "c"] = np.nan  # blank counts as negative
    bench = build_retrieval_benchmark(df, cols, n_per_category=30, seed=4, n_queries_per_category=5)
    assert len(bench.candidates) == 90 and len(bench.queries) == 15
    assert not set(bench.candidates) & set(bench.queries)
    y = df[cols].to_numpy()
    for rows, cats in ((bench.candidates, bench.candidate_category), (bench.queries, bench.query_category)):
        for r, j in zip(rows, cats):
            assert y[r, j] == 1 and all(y[r, o] == 0 or np.isnan(y[r, o]) for o in range(3) if o != j)
    again = build_retrieval_benchmark(df, cols, n_per_category=30, seed=4, n_queries_per_category=5)
    np.testing.assert_array_equal(bench.candidates, again.candidates)
    other = build_retrieval_benchmark(df, cols, n_per_category=30, seed=5, n_queries_per_category=5)
    assert not np.array_equal(bench.candidates, other.candidates)
    np.testing.assert_array_equal(bench.candidate_labels().argmax(1), bench.candidate_category)
    json.dumps(bench.to_dict())
    with pytest.warns(UserWarning, match="only"):
        build_retrieval_benchmark(df, cols, n_per_category=500, seed=0)
