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


def test_training_reads_the_same_samples_from_the_cache(tmp_path):
    from convirt.data.cache import CachedImageLoader
    from convirt.data.pairs import PairDataset, StreamBatchSampler, pairs_from_manifest
    from convirt.data.reports import SentenceSampler
    from convirt.data.transforms import eval_transform
    from convirt.data.manifest import read_manifest
    from tests.helpers import write_pair_manifest

    manifest = write_pair_manifest(tmp_path, n_train=12, n_valid=4, size=32)
    (tmp_path / "images" / "3.png").unlink()  # a vanished file: replaced the same way from both sources
    build_cache(manifest, tmp_path / "cache", size=32, progress=False)
    pairs = pairs_from_manifest(read_manifest(manifest), manifest.parent)
    tf = eval_transform(32)
    files = PairDataset(pairs, tf, SentenceSampler(), seed=3)
    cached = PairDataset(pairs, tf, SentenceSampler(), seed=3, load=CachedImageLoader(ImageCache(tmp_path / "cache"), tmp_path))
    sampler = StreamBatchSampler(len(pairs), batch_size=4, seed=3)
    for b, batch in zip(range(8), sampler):  # two epochs
        for key in batch:
            a, c = files[key], cached[key]
            assert (a["row"], a["text"], a["replaced"]) == (c["row"], c["text"], c["replaced"])
            # square images at the cache's size: only the uint8 rounding differs (normalised by std 0.5)
            assert torch.allclose(a["image"], c["image"], atol=1.0 / 255 + 1e-6)


def test_pretraining_from_the_cache(tmp_path):
    from convirt.config import load_config
    from convirt.errors import ConfigError
    from convirt.training.run import pretrain
    from tests.helpers import tiny_overrides, write_pair_manifest

    manifest = write_pair_manifest(tmp_path, size=32)
    with pytest.raises(ConfigError, match="data.image_cache"):
        load_config(None, tiny_overrides(manifest, tmp_path / "run") + [f"data.image_cache={tmp_path / 'nope'}"])
    build_cache(manifest, tmp_path / "cache", size=32, progress=False)
    cfg = load_config(None, tiny_overrides(manifest, tmp_path / "run", max_steps=2) + [f"data.image_cache={tmp_path / 'cache'}"])
    summary = pretrain(cfg)
    assert summary["global_step"] == 2 and summary["replaced_samples"] == 0
