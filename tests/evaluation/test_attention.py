"""Word maps: orientation and mass of GLoRIA attention maps on a hand-built case, Grad-CAM maps for
global models, the localisation metrics, and `convirt explain`."""

import json

import numpy as np
import pytest
import torch

from convirt.evaluation.attention import explain, mass_inside, pointing_hits, word_attention
from convirt.models.dual_encoder import DualEncoder
from tests.helpers import tiny_dual_encoder


@pytest.fixture(scope="module")
def gloria(tmp_path_factory):
    return DualEncoder.load(tiny_dual_encoder(tmp_path_factory.mktemp("g") / "m", size=64, local=True))


@pytest.fixture(scope="module")
def convirt_model(tmp_path_factory):
    return DualEncoder.load(tiny_dual_encoder(tmp_path_factory.mktemp("c") / "m", size=64))


def test_a_word_aligned_with_one_region_maps_onto_that_regions_pixels(gloria, monkeypatch):
    # a 4 x 4 grid of regions over a 64 px image; region (row 1, col 3) carries word 0's direction
    d = gloria.text_encoder.num_features
    regions = torch.zeros(1, d, 4, 4)
    regions[0, 0, 1, 3] = 5.0
    words = torch.zeros(1, 2, d)
    words[0, 0, 0], words[0, 1, 1] = 1.0, 1.0  # word 1 is orthogonal to every region: a uniform map
    monkeypatch.setattr(gloria, "local_features", lambda images: (None, regions))
    monkeypatch.setattr(gloria, "word_features", lambda ids, mask: (None, words, torch.ones(1, 2, dtype=torch.bool)))
    names, maps = word_attention(gloria, torch.zeros(1, 1, 64, 64), "lungs bright")
    assert names == ["lungs", "bright"] and maps.shape == (2, 64, 64)
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    cell = np.zeros((64, 64), bool)
    cell[16:32, 48:64] = True  # the pixels of region (1, 3)
    row, col = np.unravel_index(maps[0].argmax(), maps[0].shape)
    assert cell[row, col]
    # softmax(4 * 5) puts all but 1e-7 of the mass on that region; bilinear upsampling spreads it over
    # half a cell around (8 px): most of it stays in the cell, all of it in the cell grown by 8 px
    assert mass_inside(maps[:1], cell[None])[0] > 0.6  # chance (a uniform map): 1/16
    grown = np.zeros((64, 64), bool)
    grown[8:40, 40:64] = True
    assert mass_inside(maps[:1], grown[None])[0] > 0.999
    np.testing.assert_allclose(maps[1], np.full((64, 64), 1 / 64**2), rtol=1e-4)


def test_phrases_of_the_text_average_their_words_maps(gloria):
    image = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    out = explain(gloria, image, "The lungs look dark.", phrases=["lungs dark", "bright"])
    assert out["labels"] == ["the", "lungs", "look", "dark", "lungs dark", "bright"]
    maps = out["maps"]
    expected = (maps[1] + maps[3]) / 2
    np.testing.assert_allclose(maps[4], expected / expected.sum(), rtol=1e-5)
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), 1.0, rtol=1e-5)


def test_global_models_explain_with_similarity_gradcam(convirt_model):
    from convirt.evaluation.attention import similarity_gradcam

    image = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    out = explain(convirt_model, image, "lungs dark", phrases=["no effusion"])
    assert out["method"].startswith("Grad-CAM") and out["labels"] == ["lungs", "dark", "no effusion"]
    np.testing.assert_allclose(out["maps"][2], similarity_gradcam(convirt_model, image, ["no effusion"])[0])


def test_mass_and_pointing_on_hand_worked_maps():
    maps = np.zeros((2, 2, 2))
    maps[0] = [[0.5, 0.25], [0.25, 0.0]]
    maps[1] = [[0.1, 0.1], [0.1, 0.7]]
    masks = np.array([[[True, False], [False, False]], [[True, True], [False, False]]])
    np.testing.assert_allclose(mass_inside(maps, masks), [0.5, 0.2])
    assert pointing_hits(maps, masks).tolist() == [True, False]


def test_convirt_explain_writes_overlays_and_a_summary(gloria, tmp_path):
    from PIL import Image

    from convirt.cli.main import main

    model_dir = tiny_dual_encoder(tmp_path / "m", size=64, local=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 80), dtype=np.uint8)).save(tmp_path / "x.png")
    assert main(["explain", "--model", str(model_dir), "--image", str(tmp_path / "x.png"), "--text", "The lungs look dark.",
                 "--phrase", "lungs dark", "--out", str(tmp_path / "out")]) == 0
    doc = json.loads((tmp_path / "out" / "explain.json").read_text())
    assert doc["method"] == "GLoRIA word attention" and [m["label"] for m in doc["maps"]][-1] == "lungs dark"
    for m in doc["maps"]:
        assert (tmp_path / "out" / m["file"]).stat().st_size > 1000
    assert (tmp_path / "out" / "grid.png").is_file() and "lungs dark" in (tmp_path / "out" / "explain.md").read_text()
