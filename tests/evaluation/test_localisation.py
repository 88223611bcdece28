"""The localisation check on synthetic radiographs: sentence choice, the chance row against the masks'
area computed here, and a run with a GLoRIA and a global model."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from convirt.data.synthetic import MASK_BITS, generate
from convirt.evaluation.localisation import collect_cases, finding_sentence, run_localisation, untrained_copy
from convirt.models.dual_encoder import DualEncoder
from tests.helpers import tiny_dual_encoder


def test_the_describing_sentence_is_the_first_positive_one():
    report = "FINDINGS: No pleural effusion. Mild cardiomegaly. IMPRESSION: Small left pleural effusion."
    assert finding_sentence(report, "Pleural Effusion") == "Small left pleural effusion."
    assert finding_sentence(report, "Cardiomegaly") == "Mild cardiomegaly."
    assert finding_sentence("FINDINGS: The heart is moderately enlarged.", "Cardiomegaly") == "The heart is moderately enlarged."
    assert finding_sentence(report, "Pneumothorax") is None


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("s")
    generate(root, 40, seed=3, size=64, strength=2.0, workers=1, progress=False)
    return root


def test_localisation_run_reports_mass_pointing_and_the_masks_share(synth, tmp_path):
    corpus = pd.read_csv(synth / "manifest.csv")["text"].tolist()
    gloria = DualEncoder.load(tiny_dual_encoder(tmp_path / "g", size=64, local=True, corpus=corpus))
    convirt = DualEncoder.load(tiny_dual_encoder(tmp_path / "c", size=64, corpus=corpus))
    models = {"gloria": gloria, "convirt": convirt, "untrained": untrained_copy(gloria, seed=1)}
    doc = run_localisation(models, synth, tmp_path / "out", split="train", max_cases=12, examples=3, progress=False)
    cases = collect_cases(synth, "train", 12)
    assert doc["n_cases"] == len(cases) > 0
    # chance: the mask's share of the (64 px) image, computed here from the stored bit masks
    share = [((np.asarray(Image.open(synth / "masks" / c["image"].split("/")[-1])) & MASK_BITS[c["finding"]]) > 0).mean()
             for c in cases]
    chance = doc["models"]["uniform map (chance)"]
    assert chance["mass_inside"] == pytest.approx(np.mean(share), abs=1e-6)
    for name in ("gloria", "convirt", "untrained"):
        m = doc["models"][name]
        assert 0 < m["n"] <= len(cases) and 0 <= m["mass_inside"] <= 1 and 0 <= m["pointing"] <= 1
    assert doc["models"]["gloria"]["method"] == "GLoRIA word attention"
    assert doc["models"]["convirt"]["method"].startswith("Grad-CAM")
    assert (tmp_path / "out" / "localisation_examples.png").stat().st_size > 1000
    assert "pointing game" in (tmp_path / "out" / "results.md").read_text()
    # an untrained copy differs from the trained model but shares its architecture and tokenizer
    assert untrained_copy(gloria).local_cfg == gloria.local_cfg
