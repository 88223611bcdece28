"""GLoRIA's global + local image-text scores, and zero-shot / report retrieval that use them, against
direct computations (loop-based Z from tests/losses, numpy standardisation)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convirt.data.images import load_image, to_tensor
from convirt.errors import ConfigError
from convirt.evaluation import local_similarity
from convirt.evaluation.encoders import load_encoder
from convirt.evaluation.labelled import load_labelled
from convirt.evaluation.protocols import Settings
from convirt.evaluation.report_retrieval import image_to_report_retrieval
from convirt.evaluation.shared_space import run_report_retrieval, run_zeroshot
from convirt.models.dual_encoder import DualEncoder
from tests.helpers import tiny_dual_encoder, write_labelled_manifest
from tests.losses.test_local import reference_z

CORPUS = ["The lungs look bright.", "The lungs look dark. No effusion.", "lungs light dark mid"] * 10


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("w")
    manifest = write_labelled_manifest(root, {"train": 4, "valid": 2, "test": 12}, size=64)
    data = load_labelled(manifest, ["kind"], required_splits=())
    return data, tiny_dual_encoder(root / "gloria", size=64, local=True), tiny_dual_encoder(root / "convirt", size=64)


def _direct(dual, paths, texts):
    """Global cosine and loop-reference Z, image by image, without the evaluation code's loaders."""
    with torch.no_grad():
        images = torch.stack([dual.preprocess(to_tensor(load_image(p))) for p in paths])
        h, regions = dual.local_features(images)
        g = F.normalize(dual.image_head(h), dim=1) @ F.normalize(dual.encode_text(texts), dim=1).T
        tokens = dual.tokenize(texts)
        _, words, mask = dual.word_features(tokens["input_ids"], tokens["attention_mask"])
    regions = regions.flatten(2).transpose(1, 2).double()
    z = reference_z(regions, words.double(), mask.sum(1).tolist(), dual.local_cfg.attention_scale, dual.local_cfg.word_scale)
    return g.double().numpy(), z.numpy()


def _standardised(x):
    return (x - x.mean(0)) / x.std(0)


def test_scores_global_local_and_both_match_a_direct_computation(world):
    data, gloria_dir, _ = world
    dual = DualEncoder.load(gloria_dir)
    paths, texts = data.split_paths("test"), ["the lungs look bright.", "dark lungs, no effusion", "mid"]
    g, z = _direct(dual, paths, texts)
    emb = dual.encode_images(paths).numpy()
    regions = local_similarity.image_regions(dual, paths, batch_size=5, progress=False)
    np.testing.assert_allclose(local_similarity.scores(dual, emb, regions, texts, "global"), g, atol=1e-5)
    np.testing.assert_allclose(local_similarity.scores(dual, emb, regions, texts, "local"), z, rtol=1e-4, atol=1e-4)
    both = local_similarity.scores(dual, emb, regions, texts, "auto")
    np.testing.assert_allclose(both, 0.5 * (_standardised(g) + _standardised(z)), rtol=1e-4, atol=1e-4)


def test_local_similarity_is_refused_for_global_models(world):
    dual = DualEncoder.load(world[2])
    assert local_similarity.resolve("auto", dual) == "global"
    with pytest.raises(ConfigError, match="needs a GLoRIA model.*--similarity global"):
        local_similarity.resolve("both", dual)


def test_zeroshot_with_gloria_scores_prompts_by_both_similarities(world, tmp_path):
    data, gloria_dir, _ = world
    enc = load_encoder(str(gloria_dir))
    prompts = {"light": ["bright lungs", "the lungs look bright"], "dark": ["dark lungs"], "mid": ["mid lungs", "mid"]}
    settings = Settings(seeds=(0,), n_boot=0, cache_dir=tmp_path / "cache", progress=False)
    doc = run_zeroshot([enc], data, tmp_path / "z", settings, prompts, "max")
    m = doc["models"][enc.name]
    assert m["similarity"] == "both"
    texts = [p for c in ("light", "dark", "mid") for p in prompts[c]]
    g, z = _direct(enc.dual, data.split_paths("test"), texts)
    s = 0.5 * (_standardised(g) + _standardised(z))
    pred = np.stack([s[:, :2].max(1), s[:, 2], s[:, 3:].max(1)], axis=1).argmax(1)
    classes = ["light", "dark", "mid"]
    names = [n.split("=")[1] for n in data.label_names]
    truth = np.array([classes.index(names[j]) for j in data.split_y("test").argmax(1)])
    assert m["accuracy"] == pytest.approx(float((pred == truth).mean()))


def test_report_retrieval_ranks_by_given_scores(world, tmp_path):
    rng = np.random.default_rng(0)
    emb, rep = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    scores = rng.normal(size=(6, 6))
    r = image_to_report_retrieval(emb, rep, ks=(1, 3), paired=np.arange(6), scores=scores)
    for k in (1, 3):
        assert r[f"R@{k}"] == pytest.approx(np.mean([i in np.argsort(-scores[i])[:k] for i in range(6)]))
    cos = (emb / np.linalg.norm(emb, axis=1, keepdims=True)) @ (rep / np.linalg.norm(rep, axis=1, keepdims=True)).T
    assert image_to_report_retrieval(emb, rep, ks=(1, 3), paired=np.arange(6), scores=cos)["R@3"] == \
        image_to_report_retrieval(emb, rep, ks=(1, 3), paired=np.arange(6))["R@3"]
    data, gloria_dir, _ = world
    settings = Settings(seeds=(0,), n_boot=0, cache_dir=tmp_path / "cache", progress=False)
    enc = load_encoder(str(gloria_dir))
    doc = run_report_retrieval([enc], data, tmp_path / "r", settings, ks=(1, 5))
    m = doc["models"][enc.name]
    reports = [t.replace("FINDINGS: ", "") for t in data.frame["text"].iloc[data.splits["test"]]]
    g, z = _direct(enc.dual, data.split_paths("test"), reports)
    s = 0.5 * (_standardised(g) + _standardised(np.where(np.isfinite(z), z, 0)))
    assert m["similarity"] == "both"
    assert m["R@5"] == pytest.approx(np.mean([i in np.argsort(-s[i], kind="stable")[:5] for i in range(len(s))]))
