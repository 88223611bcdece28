"""The embedding cache returns exactly what embedding returns, and misses whenever an input changes."""

import os

import numpy as np
import torch

from convirt.evaluation.cache import EmbeddingCache
from convirt.evaluation.embed import embed_images
from convirt.evaluation.encoders import load_encoder
from convirt.evaluation.labelled import load_labelled
from tests.helpers import write_labelled_manifest


def test_hit_miss_and_invalidation(tmp_path):
    data = load_labelled(write_labelled_manifest(tmp_path / "d", {"train": 6, "valid": 2, "test": 2}))
    enc = load_encoder("random:resnet18", size=32)
    paths = data.split_paths("train")
    cache = EmbeddingCache(tmp_path / "cache")
    first = cache.get(enc, paths, data.manifest_sha256, progress=False)
    direct = embed_images(enc.module, paths, enc.transform(), progress=False)
    np.testing.assert_array_equal(first, direct)
    again = cache.get(enc, paths, data.manifest_sha256, progress=False)
    np.testing.assert_array_equal(again, first)
    assert (cache.hits, cache.misses) == (1, 1)

    # another manifest, other weights, a replaced image: each misses
    cache.get(enc, paths, "0" * 64, progress=False)
    other = load_encoder("random:resnet18", size=32, seed=5)
    cache.get(other, paths, data.manifest_sha256, progress=False)
    st = os.stat(paths[0])
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    cache.get(enc, paths, data.manifest_sha256, progress=False)
    assert (cache.hits, cache.misses) == (1, 4)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 4 and not list((tmp_path / "cache").glob(".*tmp"))


def test_a_corrupt_entry_is_recomputed_and_no_cache_always_computes(tmp_path):
    data = load_labelled(write_labelled_manifest(tmp_path / "d", {"train": 4, "valid": 2, "test": 2}))
    enc = load_encoder("random:resnet18", size=32)
    paths = data.split_paths("train")
    cache = EmbeddingCache(tmp_path / "cache")
    good = cache.get(enc, paths, data.manifest_sha256, progress=False)
    (entry,) = (tmp_path / "cache").glob("*.npy")
    entry.write_bytes(entry.read_bytes()[:40])  # truncated by a crash of an older writer
    np.testing.assert_array_equal(cache.get(enc, paths, data.manifest_sha256, progress=False), good)
    assert cache.misses == 2
    off = EmbeddingCache(None)
    off.get(enc, paths, data.manifest_sha256, progress=False)
    off.get(enc, paths, data.manifest_sha256, progress=False)
    assert (off.hits, off.misses) == (0, 2)


def test_projected_features_use_the_projection_head(tmp_path):

    data = load_labelled(write_labelled_manifest(tmp_path / "d", {"train": 4, "valid": 2, "test": 2}))
    from convirt.config import ImageConfig, ProjectionConfig, ScratchTextConfig, TextConfig
    from convirt.models.dual_encoder import DualEncoder

    text = TextConfig(model="scratch", freeze_layers=0, max_length=8, scratch=ScratchTextConfig(vocab_size=60, hidden=16, layers=1, heads=2))
    model = DualEncoder.build(ImageConfig(model="resnet18", pretrained=False, size=32), text, ProjectionConfig(dim=8),
                              corpus=["a small effusion", "normal heart"] * 10)
    enc = load_encoder(str(model.save(tmp_path / "m")))
    paths = data.split_paths("train")
    out = EmbeddingCache(tmp_path / "c").get(enc, paths, data.manifest_sha256, progress=False, projected=True)
    with torch.no_grad():
        expected = embed_images(lambda x: enc.dual.image_head(enc.module(x)), paths, enc.transform(), progress=False)
    assert out.shape == (4, 8)
    np.testing.assert_allclose(out, expected, atol=1e-6)
