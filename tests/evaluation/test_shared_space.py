"""Retrieval, zero-shot and report retrieval runs, each checked against a direct computation."""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score

from convirt.data.images import load_image, to_tensor
from convirt.errors import ConfigError
from convirt.evaluation.encoders import load_encoder
from convirt.evaluation.labelled import load_labelled
from convirt.evaluation.protocols import Settings
from convirt.evaluation.shared_space import run_report_retrieval, run_retrieval, run_zeroshot
from tests.helpers import tiny_dual_encoder, write_labelled_manifest


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("w")
    manifest = write_labelled_manifest(root, {"train": 4, "valid": 2, "test": 30})
    return load_labelled(manifest, ["kind"], required_splits=()), tiny_dual_encoder(root / "model")


def _settings(tmp_path):
    return Settings(seeds=(0,), n_boot=20, cache_dir=tmp_path / "cache", progress=False)


def _features(enc, paths, projected):
    """Embeddings computed here, image by image, without the evaluation code's loader or cache."""
    with torch.no_grad():
        batch = torch.stack([enc.transform()(to_tensor(load_image(p))) for p in paths])
        h = enc.module.eval()(batch)
        return (enc.dual.image_head(h) if projected else h).numpy()


def test_image_and_text_retrieval_against_a_brute_force_loop(world, tmp_path):
    data, model = world
    enc = load_encoder(str(model))
    queries = tmp_path / "queries.csv"
    pd.DataFrame({"Variable": ["kind=light", "dark", "mid"], "Text": ["bright lungs", "dark lungs", "mid"]}).to_csv(queries, index=False)
    with pytest.raises(Exception, match="not among the labels"):
        run_retrieval([enc], data, tmp_path / "bad", _settings(tmp_path), ks=(1, 3), per_category=4,
                      queries_per_category=1, text_queries=queries)
    pd.DataFrame({"Variable": ["light", "dark", "mid"], "Text": ["bright lungs", "dark lungs", "mid"]}).to_csv(queries, index=False)
    doc = run_retrieval([enc], data, tmp_path / "out", _settings(tmp_path), ks=(1, 3), per_category=4,
                        queries_per_category=1, text_queries=queries)
    bench = doc["benchmark"]
    test_rows = data.splits["test"]
    cand = [data.paths[test_rows[i]] for i in bench["candidates"]]
    qpaths = [data.paths[test_rows[i]] for i in bench["queries"]]
    cat_c, cat_q = np.array(bench["candidate_category"]), np.array(bench["query_category"])
    c = F.normalize(torch.from_numpy(_features(enc, cand, False)), dim=1)
    q = F.normalize(torch.from_numpy(_features(enc, qpaths, False)), dim=1)
    sims = (q @ c.T).numpy()
    for k in (1, 3):
        per_query = [np.mean(cat_c[np.argsort(-s, kind="stable")[:k]] == cat_q[i]) for i, s in enumerate(sims)]
        per_cat = [np.mean([p for p, cq in zip(per_query, cat_q) if cq == j]) for j in sorted(set(cat_q))]
        assert doc["models"][enc.name]["image_to_image"]["mean"][f"P@{k}"] == pytest.approx(np.mean(per_cat))
    t2i = doc["models"][enc.name]["text_to_image"]
    assert t2i["n_queries"] == 3 and set(t2i["per_category"]) == {"light", "dark", "mid"}
    assert (tmp_path / "out" / "precision.png").is_file() and (tmp_path / "out" / "gallery_image_0.png").is_file()


def test_zeroshot_accuracy_equals_argmax_of_mean_prompt_similarity(world, tmp_path):
    data, model = world
    enc = load_encoder(str(model))
    prompts = {"light": ["bright lungs", "the lungs look bright"], "dark": ["dark lungs"], "mid": ["mid lungs", "mid"]}
    doc = run_zeroshot([enc], data, tmp_path / "z", _settings(tmp_path), prompts, "mean")
    img = F.normalize(torch.from_numpy(_features(enc, data.split_paths("test"), True)), dim=1)
    classes = ["light", "dark", "mid"]
    centres = torch.stack([F.normalize(enc.dual.encode_text(prompts[c]).mean(0), dim=0) for c in classes])
    pred = (img @ centres.T).argmax(1).numpy()
    names = [n.split("=")[1] for n in data.label_names]
    truth = np.array([classes.index(names[j]) for j in data.split_y("test").argmax(1)])
    assert doc["models"][enc.name]["accuracy"] == pytest.approx(accuracy_score(truth, pred))
    with pytest.raises(Exception, match="no prompts for class"):
        run_zeroshot([enc], data, tmp_path / "z2", _settings(tmp_path), {"light": ["x"]}, "mean")


def test_report_retrieval_recall_against_a_direct_ranking(world, tmp_path):
    data, model = world
    enc = load_encoder(str(model))
    doc = run_report_retrieval([enc], data, tmp_path / "r", _settings(tmp_path), ks=(1, 5))
    img = F.normalize(torch.from_numpy(_features(enc, data.split_paths("test"), True)), dim=1)
    reports = [t.replace("FINDINGS: ", "") for t in data.frame["text"].iloc[data.splits["test"]]]
    rep = enc.dual.encode_text(reports)
    sims = (img @ rep.T).numpy()
    for k in (1, 5):
        hits = [i in np.argsort(-s, kind="stable")[:k] for i, s in enumerate(sims)]
        assert doc["models"][enc.name][f"R@{k}"] == pytest.approx(np.mean(hits))
    assert "R@1" in (tmp_path / "r" / "results.md").read_text()


def test_text_protocols_refuse_image_only_encoders(world, tmp_path):
    data, _ = world
    with pytest.raises(ConfigError, match="needs a text encoder"):
        run_zeroshot([load_encoder("random:resnet18", size=32)], data, tmp_path / "z", _settings(tmp_path),
                     {"light": ["a"], "dark": ["b"], "mid": ["c"]})


def test_image_queries_from_a_variable_path_csv_equal_drawn_queries(world, tmp_path):
    data, model = world
    enc = load_encoder(str(model))
    drawn = run_retrieval([enc], data, tmp_path / "a", _settings(tmp_path), ks=(1, 3), per_category=4,
                          queries_per_category=1, gallery=0)
    bench, rows = drawn["benchmark"], data.splits["test"]
    names = ["light", "dark", "mid"]
    order = [n.split("=")[1] for n in data.label_names]
    csv = tmp_path / "image_queries.csv"
    pd.DataFrame({"Variable": [order[c] for c in bench["query_category"]],
                  "Path": [data.frame["image"].iloc[rows[i]] for i in bench["queries"]]}).to_csv(csv, index=False)
    from convirt.evaluation.shared_space import read_image_queries

    given = run_retrieval([enc], data, tmp_path / "b", _settings(tmp_path), ks=(1, 3), per_category=4,
                          image_queries=read_image_queries(csv, order, image_root=data.manifest.parent), gallery=0)
    assert given["models"][enc.name]["image_to_image"]["mean"] == drawn["models"][enc.name]["image_to_image"]["mean"]
    assert sorted(names) == sorted(order)


def test_negated_text_queries_rank_by_the_difference(world, tmp_path):
    data, model = world
    enc = load_encoder(str(model))
    queries = tmp_path / "q.csv"
    pd.DataFrame({"Variable": ["light", "dark", "mid"], "Text": ["bright lungs", "dark lungs", "mid"],
                  "Negated": ["dark lungs", "", "no effusion"]}).to_csv(queries, index=False)
    doc = run_retrieval([enc], data, tmp_path / "n", _settings(tmp_path), ks=(1, 3), text_queries=queries, gallery=0)
    img = F.normalize(torch.from_numpy(_features(enc, data.split_paths("test"), True)), dim=1)
    q = enc.dual.encode_text(["bright lungs", "dark lungs", "mid"])
    q[0] -= enc.dual.encode_text(["dark lungs"])[0]
    q[2] -= enc.dual.encode_text(["no effusion"])[0]
    sims = (F.normalize(q, dim=1) @ img.T).numpy()
    y = data.split_y("test")
    order = [n.split("=")[1] for n in data.label_names]
    cats = [order.index(c) for c in ("light", "dark", "mid")]
    for k in (1, 3):
        expected = np.mean([y[np.argsort(-s, kind="stable")[:k], c].mean() for s, c in zip(sims, cats)])
        assert doc["models"][enc.name]["text_to_image"]["mean"][f"P@{k}"] == pytest.approx(expected)
    assert doc["text_queries"]["n_with_negation"] == 2
