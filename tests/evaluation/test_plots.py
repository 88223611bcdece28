import sys
import types

import numpy as np
import pytest
from PIL import Image

from convirt.errors import DataError
from convirt.evaluation.plots import (plot_bar_precision, plot_label_fraction_curves, plot_retrieval_gallery,
                                      plot_saliency, plot_tsne, plot_umap)


def _summary(offset: float) -> dict:
    return {repr(f): {"macro_auroc": {"mean": 0.6 + offset + 0.1 * i, "std": 0.02 if f < 1 else None}}
            for i, f in enumerate((0.01, 0.1, 1.0))}


def _is_png(path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_label_fraction_curves(tmp_path):
    path = plot_label_fraction_curves({"ConVIRT": _summary(0.05), "Random": _summary(0.0)}, tmp_path / "lf.png")
    w, h = _is_png(path)
    assert w > 300 and h > 200
    with pytest.raises(DataError):
        plot_label_fraction_curves({"x": {"0.1": {"macro_auroc": {"mean": None, "std": None}}}}, tmp_path / "e.png")


def test_tsne(tmp_path):
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=5, size=(3, 16))
    labels = np.repeat([0, 1, 2, -1], 20)
    emb = np.concatenate([centers[j] + rng.normal(size=(20, 16)) for j in (0, 1, 2)] + [rng.normal(size=(20, 16))])
    _is_png(plot_tsne(emb, labels, ["a", "b", "c"], tmp_path / "tsne.png", seed=0))


def test_bar_precision(tmp_path):
    res = {"per_category": {"a": {"P@5": 0.8, "P@10": 0.7}, "b": {"P@5": 0.4, "P@10": 0.3}},
           "mean": {"P@5": 0.6, "P@10": 0.5}, "ks": [5, 10]}
    other = {**res, "per_category": {"a": {"P@5": 0.5, "P@10": 0.4}, "b": {"P@5": 0.2, "P@10": 0.1}},
             "mean": {"P@5": 0.35, "P@10": 0.25}}
    _is_png(plot_bar_precision({"ConVIRT": res, "Random": other}, tmp_path / "bars.png"))
    _is_png(plot_bar_precision(res, tmp_path / "one.png"))


# ------------------------------------------------------------------ retrieval gallery, UMAP, saliency
GREEN, RED = (44, 160, 44), (214, 39, 40)  # matplotlib tab:green / tab:red frames


def _count_colour(path, rgb, tol=12) -> int:
    with Image.open(path) as im:
        px = np.asarray(im.convert("RGB")).astype(int)
    return int((np.abs(px - np.array(rgb)).max(axis=-1) <= tol).sum())


def _gray_images(n, seed=0, size=(24, 20)):
    return np.random.default_rng(seed).random((n, *size))


def test_retrieval_gallery_layout_and_frames(tmp_path):
    q = _gray_images(3)
    cands = [_gray_images(4, seed=i + 1) for i in range(3)]
    rel = np.array([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=bool)
    w3, h3 = _is_png(plot_retrieval_gallery(q, cands, rel, tmp_path / "g3.png", query_titles=["a", "b", "c"]))
    assert w3 > h3  # 5 columns, 3 rows
    assert _count_colour(tmp_path / "g3.png", GREEN) > 50 and _count_colour(tmp_path / "g3.png", RED) > 50
    w2, h2 = _is_png(plot_retrieval_gallery(q, cands, rel, tmp_path / "g2.png", max_queries=2))
    assert abs(w2 - w3) < 0.1 * w3 and h2 < 0.85 * h3  # one row fewer
    # Only relevant candidates: green frames, no red ones.
    all_rel = plot_retrieval_gallery(q[:1], cands[:1], [[True] * 4], tmp_path / "green.png")
    assert _count_colour(all_rel, GREEN) > 50 and _count_colour(all_rel, RED) == 0
    # One query, five candidates: a wide strip; four queries, one candidate each: taller than wide.
    wide = _is_png(plot_retrieval_gallery(q[:1], [_gray_images(5)], [[0, 1, 0, 0, 1]], tmp_path / "wide.png"))
    assert wide[0] > 2.5 * wide[1]
    tall = _is_png(plot_retrieval_gallery(_gray_images(4), [_gray_images(1)] * 4, [[1]] * 4, tmp_path / "tall.png"))
    assert tall[1] > 1.3 * tall[0]


def test_retrieval_gallery_reads_paths_and_rejects_bad_input(tmp_path):
    paths = []
    for i in range(3):
        p = tmp_path / f"img{i}.png"
        Image.fromarray((_gray_images(1, seed=i)[0] * 255).astype(np.uint8)).save(p)
        paths.append(p)
    _is_png(plot_retrieval_gallery([paths[0]], [[str(paths[1]), paths[2]]], [[1, 0]], tmp_path / "paths.png"))
    q, c = _gray_images(2), [_gray_images(2), _gray_images(2)]
    bad_cases = [
        (q * 2, c, [[1, 0], [0, 1]]),  # values outside [0, 1]
        (q, c[:1], [[1, 0], [0, 1]]),  # one candidate list for two queries
        (q, c, [[1, 0, 1], [0, 1]]),  # three flags for two candidates
        (q, c, [[0.5, 0], [0, 1]]),  # not 0/1
        (np.random.default_rng(0).random((2, 8, 8, 3)), c, [[1, 0], [0, 1]]),  # colour images
        ([], [], []),
    ]
    for query, cand, rel in bad_cases:
        with pytest.raises(DataError):
            plot_retrieval_gallery(query, cand, rel, tmp_path / "bad.png")
    with pytest.raises(DataError):
        plot_retrieval_gallery(q, c, [[1, 0], [0, 1]], tmp_path / "bad.png", query_titles=["only one"])
    assert not (tmp_path / "bad.png").exists()


def test_umap_is_optional(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    emb, labels = rng.normal(size=(30, 8)), np.repeat([0, 1, 2], 10)
    monkeypatch.setitem(sys.modules, "umap", None)  # umap-learn not importable
    assert plot_umap(emb, labels, ["a", "b", "c"], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    calls = {}

    class FakeUMAP:  # stands in for umap.UMAP: a 2-D projection with the same interface
        def __init__(self, **kwargs):
            calls.update(kwargs)

        def fit_transform(self, x):
            return x[:, :2]

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
    _is_png(plot_umap(emb, labels, ["a", "b", "c"], tmp_path / "umap.png", seed=3, n_neighbors=50))
    assert calls["random_state"] == 3 and calls["n_neighbors"] == 29 and calls["n_components"] == 2
    with pytest.raises(DataError):
        plot_umap(emb[:2], labels[:2], ["a"], tmp_path / "small.png")


def test_saliency_overlay(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(6, 1, 32, 32))  # network-normalised values: scaled for display
    maps = rng.random((6, 32, 32))
    w, h = _is_png(plot_saliency(images, maps, tmp_path / "sal.png", titles=[f"t{i}" for i in range(6)]))
    assert w > 500 and abs(h - w) < 0.2 * w  # 4 columns x 2 (image, overlay) row pairs of square panels
    w1, h1 = _is_png(plot_saliency(images[:1, 0], maps[:1], tmp_path / "one.png"))
    assert h1 > 1.5 * w1  # one image above its overlay
    with pytest.raises(DataError):
        plot_saliency(images, maps[:5], tmp_path / "bad.png")
    with pytest.raises(DataError):
        plot_saliency(images, maps[:, :16], tmp_path / "bad.png")  # map size != image size
    with pytest.raises(DataError):
        plot_saliency(images, maps * 2, tmp_path / "bad.png")  # maps outside [0, 1]
    assert not (tmp_path / "bad.png").exists()
