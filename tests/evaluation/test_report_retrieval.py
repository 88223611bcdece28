import json

import numpy as np
import pytest

from convirt.errors import ConfigError, DataError
from convirt.evaluation.report_retrieval import image_to_report_retrieval

BACKENDS = ["torch", "faiss"]


def _hand_case():
    # Images q0 = (1, 0), q1 = (0, 1), q2 = (1, 1); reports r0 = (1, 0), r1 = (2, 0), r2 = (0, 1), r3 = (1, 1).
    # Rankings (ties broken by lower report index):
    #   q0: r0 (1), r1 (1), r3 (.71), r2 (0)
    #   q1: r2 (1), r3 (.71), r0 (0), r1 (0)
    #   q2: r3 (1), r0 (.71), r1 (.71), r2 (.71)
    images = np.array([[1, 0], [0, 1], [1, 1]], dtype=float)
    reports = np.array([[1, 0], [2, 0], [0, 1], [1, 1]], dtype=float)
    image_labels = np.array([[1, 0], [0, 1], [np.nan, -1]])  # q2: blank and uncertain -> all negative
    report_labels = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    return images, reports, image_labels, report_labels


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_worked_recall_and_exact_precision(backend):
    images, reports, il, rl = _hand_case()
    out = image_to_report_retrieval(images, reports, ks=(1, 2, 4, 6), paired=np.array([1, 2, -1]), image_labels=il,
                                    report_labels=rl, agreement="exact", backend=backend, return_topk=True)
    assert out["topk"] == [[0, 1, 3, 2], [2, 3, 0, 1], [3, 0, 1, 2]]
    # Recall: q0's report r1 is at rank 2, q1's r2 at rank 1, q2 has none (left out).
    assert out["per_query"]["R@1"] == [False, True, None]
    assert (out["R@1"], out["R@2"], out["R@4"], out["R@6"]) == (0.5, 1.0, 1.0, 1.0)
    assert out["n_recall_queries"] == 2 and out["n_unpaired_images"] == 1
    # Exact agreement: q0 only r0, q1 only r2, q2 (all negative) only r3 -> each hit at rank 1 only.
    assert out["per_query"]["P@1"] == [1.0, 1.0, 1.0]
    assert out["per_query"]["P@2"] == [0.5, 0.5, 0.5]
    assert out["P@6"] == pytest.approx(1 / 6)  # K = 6 > 4 reports: still divided by 6
    assert out["n_queries_without_relevant"] == 0
    assert any("K=[6]" in n for n in out["notes"]) and any("unpaired" in n or "no paired" in n for n in out["notes"])
    json.dumps(out)


def test_hand_worked_any_agreement():
    images, reports, il, rl = _hand_case()
    out = image_to_report_retrieval(images, reports, ks=(1, 2, 4), image_labels=il, report_labels=rl,
                                    agreement="any")
    # q0 (1,0) agrees with r0, r1 -> hits 1,1,0,0; q1 (0,1) with r1, r2 -> ranking r2,r3,r0,r1 -> 1,0,0,1;
    # q2 (none positive) agrees only with the all-negative r3 -> 1,0,0,0.
    assert out["per_query"]["P@2"] == [1.0, 0.5, 0.5]
    assert out["per_query"]["P@4"] == [0.5, 0.5, 0.25]
    assert out["R@1"] is None and out["n_recall_queries"] == 0
    assert out["n_queries_without_relevant"] == 0


def _reference(images, reports, ks, paired, il, rl, agreement):
    """Plain-loop reference: full cosine matrix, stable sort per query, explicit comparisons."""
    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def clean(v):
        return [0 if (np.isnan(a) or a == -1) else int(a) for a in v]

    sim = unit(images) @ unit(reports).T
    recall = {k: [] for k in ks}
    precision = {k: [] for k in ks}
    without = 0
    for i in range(len(images)):
        order = sorted(range(len(reports)), key=lambda j: (-sim[i, j], j))
        yi = clean(il[i])
        relevant = []
        for j in range(len(reports)):
            yj = clean(rl[j])
            if agreement == "exact":
                relevant.append(yi == yj)
            else:
                shared = any(a == 1 and b == 1 for a, b in zip(yi, yj))
                relevant.append(shared or (sum(yi) == 0 and sum(yj) == 0))
        without += not any(relevant)
        for k in ks:
            if paired[i] >= 0:
                recall[k].append(paired[i] in order[:k])
            precision[k].append(sum(relevant[j] for j in order[:k]) / k)
    return ({k: float(np.mean(v)) for k, v in recall.items()}, {k: float(np.mean(v)) for k, v in precision.items()},
            without)


@pytest.mark.parametrize("agreement", ["exact", "any"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_loop_reference_on_random_data(agreement, backend):
    rng = np.random.default_rng(7)
    n_i, n_r, dim, n_lab = 40, 70, 12, 4
    reports = rng.normal(size=(n_r, dim))
    paired = rng.permutation(n_r)[:n_i]
    paired[::7] = -1
    images = np.where(paired[:, None] >= 0, reports[np.maximum(paired, 0)], 0) + rng.normal(scale=1.5, size=(n_i, dim))
    il = rng.choice([0.0, 1.0, -1.0, np.nan], size=(n_i, n_lab), p=[0.5, 0.3, 0.1, 0.1])
    rl = rng.choice([0.0, 1.0, -1.0, np.nan], size=(n_r, n_lab), p=[0.6, 0.25, 0.1, 0.05])
    ks = (1, 3, 10, 100)
    out = image_to_report_retrieval(images, reports, ks=ks, paired=paired, image_labels=il, report_labels=rl,
                                    agreement=agreement, backend=backend)
    ref_r, ref_p, ref_without = _reference(images, reports, ks, paired, il, rl, agreement)
    for k in ks:
        assert out[f"R@{k}"] == pytest.approx(ref_r[k])
        assert out[f"P@{k}"] == pytest.approx(ref_p[k])
    assert out["n_queries_without_relevant"] == ref_without
    assert out["n_unpaired_images"] == int((paired < 0).sum()) and out["n_images"] == n_i
    assert out["R@100"] == 1.0 and 0 < out["R@1"] < 1


def test_errors():
    images, reports, il, rl = _hand_case()
    with pytest.raises(ConfigError):
        image_to_report_retrieval(images, reports)  # nothing to compute
    with pytest.raises(ConfigError):
        image_to_report_retrieval(images, reports, image_labels=il)
    with pytest.raises(ConfigError):
        image_to_report_retrieval(images, reports, paired=[0, 1, 2], agreement="partial")
    with pytest.raises(ConfigError):
        image_to_report_retrieval(images, reports, ks=(0,), paired=[0, 1, 2])
    with pytest.raises(DataError):
        image_to_report_retrieval(images, reports, paired=[0, 1, 4])  # out of range
    with pytest.raises(DataError):
        image_to_report_retrieval(images, reports, paired=[0, 1])  # wrong length
    with pytest.raises(DataError):
        image_to_report_retrieval(images, reports, image_labels=il, report_labels=np.full((4, 2), 2))
    with pytest.raises(DataError):
        image_to_report_retrieval(images, reports, image_labels=il, report_labels=rl[:, :1])
    with pytest.raises(DataError):
        image_to_report_retrieval(images, reports, image_labels=il[:2], report_labels=rl)
    with pytest.raises(DataError):
        image_to_report_retrieval(images, reports[:, :1], paired=[0, 1, 2])
