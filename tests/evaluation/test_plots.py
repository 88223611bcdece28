import numpy as np
import pytest
from PIL import Image

from convirt.errors import DataError
from convirt.evaluation.plots import plot_bar_precision, plot_label_fraction_curves, plot_tsne


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
