"""The image cache stores exactly the resized, quantised decode; failures and interruptions are safe."""

import pickle

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from convirt.data import cache as cache_module
from convirt.data.cache import ImageCache, build_cache
from convirt.data.images import load_image
from convirt.errors import ImageDecodeError
from tests.data.test_images import write_dicom


def _reference(path, size):
    """Shorter side to ``size`` (antialiased bilinear), centre square, rounded to uint8: written out by hand."""
    x = torch.from_numpy(load_image(path))[None, None]
    h, w = x.shape[-2:]
    nh, nw = (size, round(w * size / h)) if h <= w else (round(h * size / w), size)
    y = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0, 0]
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    y = y[top:top + size, left:left + size]
    return np.clip(np.rint(y.numpy() * 255), 0, 255).astype(np.uint8)


@pytest.fixture()
def manifest(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    Image.fromarray(rng.integers(0, 256, (40, 64), dtype=np.uint8)).save(tmp_path / "img" / "wide.png")
    Image.fromarray(rng.integers(0, 65536, (50, 30), dtype=np.uint16)).save(tmp_path / "img" / "tall16.png")
    write_dicom(tmp_path / "img" / "ct.dcm", rng.integers(0, 4000, (36, 36)).astype(np.uint16))
    (tmp_path / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rows = [{"image": "img/wide.png|img/tall16.png", "text": "a"}, {"image": "img/ct.dcm", "text": "b"},
            {"image": "./img/wide.png", "text": "c"}, {"image": "img/broken.png", "text": "d"}]
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    return tmp_path / "m.csv"


def test_cached_pixels_equal_the_reference_decode(manifest, tmp_path):
    index = build_cache(manifest, tmp_path / "cache", size=24, workers=2, progress=False)
    assert index["paths"] == ["img/wide.png", "img/tall16.png", "img/ct.dcm", "img/broken.png"]  # views split, deduplicated
    cache = ImageCache(tmp_path / "cache")
    for name in ("wide.png", "tall16.png", "ct.dcm"):
        got = cache.load(f"img/{name}")
        assert got.shape == (24, 24) and got.dtype == np.float32
        np.testing.assert_array_equal(np.rint(got * 255).astype(np.uint8), _reference(manifest.parent / "img" / name, 24))
    assert "./img/wide.png" in cache and "img/missing.png" not in cache


def test_failed_images_are_listed_and_raise_like_the_file(manifest, tmp_path):
    index = build_cache(manifest, tmp_path / "cache", size=16, progress=False)
    assert list(index["failed"]) == ["img/broken.png"] and "corrupt" in index["failed"]["img/broken.png"]
    cache = ImageCache(tmp_path / "cache")
    with pytest.raises(ImageDecodeError, match="img/broken.png: .*corrupt"):
        cache.load("img/broken.png")
    with pytest.raises(ImageDecodeError, match="not in the image cache"):
        cache.load("img/other.png")


def test_an_interrupted_build_leaves_nothing_and_keeps_the_old_cache(manifest, tmp_path, monkeypatch):
    build_cache(manifest, tmp_path / "cache", size=16, progress=False)
    before = (tmp_path / "cache" / "images.npy").read_bytes()
    calls = []

    def dying(path, **kw):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return load_image(path, **kw)

    monkeypatch.setattr(cache_module, "load_image", dying)
    with pytest.raises(KeyboardInterrupt):
        build_cache(manifest, tmp_path / "cache", size=32, workers=1, progress=False)
    assert (tmp_path / "cache" / "images.npy").read_bytes() == before  # old cache intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "img", "m.csv"]  # no temporary folder left


def test_cache_pickles_without_its_memory_map(manifest, tmp_path):
    build_cache(manifest, tmp_path / "cache", size=16, progress=False)
    cache = ImageCache(tmp_path / "cache")
    first = cache.load("img/ct.dcm")
    clone = pickle.loads(pickle.dumps(cache))
    assert clone._array is None
    np.testing.assert_array_equal(clone.load("img/ct.dcm"), first)
