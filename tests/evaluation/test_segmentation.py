"""Segmentation on the pretrained encoder: mask decoding, the weights inside the U-Net, Dice/IoU, a training run."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from convirt.cli.main import main
from convirt.errors import ConfigError
from convirt.data.adapters.siim import decode_rle
from convirt.data.synthetic import finding_boxes, finding_masks, make_study, write_localized_manifest
from convirt.evaluation.encoders import load_encoder
from convirt.evaluation.localized import default_config, encode_rle, load_localized, read_mask
from convirt.evaluation.protocols import Settings
from convirt.evaluation.segmentation import (SegmentationModel, build_unet, counts, run_segmentation,
                                             segmentation_metrics)
from convirt.models.image import ImageEncoder
from tests.evaluation.localized_toy import write_toy_localized


def test_rle_round_trip_both_siim_encodings_and_a_hand_case():
    rng = np.random.default_rng(0)
    for relative in (False, True):
        for _ in range(5):
            mask = rng.random((7, 11)) < 0.3
            assert np.array_equal(decode_rle(encode_rle(mask, relative), 11, 7, relative), mask)
    mask = np.zeros((3, 4), bool)  # column-major runs: pixel (row 1, col 0) is index 1, (0..2, col 2) are 6..8
    mask[1, 0] = True
    mask[:, 2] = True
    assert encode_rle(mask) == "2 1 7 3"
    assert encode_rle(mask, relative_starts=True) == "1 1 4 3"
    assert encode_rle(np.zeros((2, 2), bool)) == "-1"


def test_mask_cells_png_rle_and_blank(tmp_path):
    mask = np.zeros((6, 8), bool)
    mask[2:4, 1:5] = True
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "m.png")
    assert np.array_equal(read_mask("m.png", (6, 8), tmp_path), mask)
    assert np.array_equal(read_mask(encode_rle(mask), (6, 8), tmp_path), mask)
    for blank in ("", float("nan"), "-1", None):
        assert not read_mask(blank, (6, 8), tmp_path).any()
    big = read_mask("m.png", (12, 16), tmp_path)  # a mask stored at another size follows the image
    assert big.shape == (12, 16) and big.sum() == 4 * mask.sum()


def test_synthetic_findings_give_masks_and_one_box_per_lesion(tmp_path):
    study = next(s for s in (make_study(0, i, i, 64) for i in range(40)) if s.findings)
    masks = finding_masks(study.mask)
    assert set(masks) <= {f.name for f in study.findings} and masks
    toy = np.zeros((20, 30), bool)
    toy[2:5, 3:9] = True  # lesion 1
    toy[10:12, 20:22] = True  # lesion 2
    toy[11, 24] = True  # a speck of lesion 2 (within the merge distance)
    toy[18, 0] = True  # a lone 1-pixel crumb: dropped
    assert finding_boxes(toy) == [[3.0, 2.0, 6.0, 3.0], [20.0, 10.0, 5.0, 2.0]]


def test_dice_and_iou_on_a_hand_case_agree_with_torchmetrics():
    from torchmetrics.functional.classification import binary_jaccard_index
    from torchmetrics.segmentation import DiceScore

    pred = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    truth = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    pred[0, 0, :2, :2] = True  # 4 predicted pixels
    truth[0, 0, :2, :3] = True  # 6 true pixels, 4 shared: TP 4, FP 0, FN 2
    pred[1, 0, 3, 3] = True  # image 2: one false positive, nothing true
    c = counts(pred, truth).numpy()
    assert c.tolist() == [[4, 0, 2], [0, 1, 0]]
    m = segmentation_metrics(c)
    assert m["dice"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 2)) and m["iou"] == pytest.approx(4 / 7)
    assert m["dice_positive"] == pytest.approx(0.8)  # image 1 only: 8 / 10
    assert m["dice_image_mean"] == pytest.approx(0.4)  # (0.8 + 0) / 2
    dice = DiceScore(num_classes=2, include_background=False, average="micro", input_format="index",
                     aggregation_level="global")
    dice.update(pred[:, 0].long(), truth[:, 0].long())
    assert float(dice.compute()) == pytest.approx(m["dice"])
    assert float(binary_jaccard_index(pred.long(), truth.long())) == pytest.approx(m["iou"])
    empty = segmentation_metrics(np.zeros((3, 3)))
    assert empty["dice"] is None and empty["dice_image_mean"] == 1.0  # empty predicted for empty: SIIM scores 1


@pytest.mark.parametrize("name", ["resnet18", "convnext_atto"])
def test_the_encoders_weights_are_the_ones_inside_the_unet(name):
    torch.manual_seed(0)
    encoder = ImageEncoder(name, pretrained=False).eval()
    unet, report = build_unet(encoder)
    inside = unet.encoder.model.state_dict()
    assert report["copied"] == len(inside)
    source = {k.replace(".", "_"): v for k, v in encoder.backbone.state_dict().items()}
    for key, value in inside.items():
        assert torch.equal(value, source[key.replace(".", "_")]), key
    unet.eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():  # same weights, same function: the deepest U-Net feature is the encoder's feature map
        assert torch.allclose(unet.encoder(x)[-1], encoder.backbone.forward_features(x), atol=1e-5)


def test_a_frozen_encoder_gets_no_gradient_and_keeps_its_statistics():
    encoder = ImageEncoder("resnet18", pretrained=False)
    model = SegmentationModel(encoder, freeze=True, cfg=default_config(True))
    model.train()
    assert not model.net.encoder.training and model.net.decoder.training
    before = {k: v.clone() for k, v in model.net.encoder.state_dict().items()}
    loss = model.loss(model(torch.randn(2, 1, 32, 32)), torch.zeros(2, 1, 32, 32))
    loss.backward()
    assert all(p.grad is None for p in model.net.encoder.parameters())
    assert all(p.grad is not None for p in model.net.decoder.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.net.encoder.state_dict().items())


def test_a_tiny_run_learns_and_writes_results_and_overlays(tmp_path):
    manifest = write_toy_localized(tmp_path)
    data = load_localized(manifest, "mask")
    assert data.labelled.label_names == ["has mask"] and data.labelled.y.sum() > 0
    encoder = load_encoder("random:resnet18", size=32)
    settings = Settings(fractions=[1.0], seeds=[0], batch_size=8, cache_dir=None, progress=False, n_boot=50)
    cfg = default_config(False, lr=3e-3, batch_size=8, max_epochs=4, patience=4, min_epoch_steps=6, augment="none")
    doc = run_segmentation([encoder], data, tmp_path / "out", settings, cfg, freeze=False, overlays=4)
    run = doc["models"]["Random resnet18"]["runs"][0]
    losses = run["train_loss_per_epoch"]
    assert len(losses) == run["epochs"] + 1 or len(losses) == run["epochs"]
    assert losses[-1] < 0.7 * losses[0]
    assert run["test"]["dice"] > 0.3 and run["test"]["dice_ci"]["low"] <= run["test"]["dice"]
    assert run["weights"]["copied"] > 0 and run["weights"]["unused"] == []
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["protocol"] == "segment" and saved["models"]["Random resnet18"]["summary"]["1.0"]["dice"]["mean"] > 0.3
    assert (tmp_path / "out" / "overlays_0.png").stat().st_size > 1000
    assert "## Test Dice" in (tmp_path / "out" / "results.md").read_text()


def test_synthetic_manifest_feeds_the_same_loader(tmp_path):
    from convirt.data.synthetic import generate

    generate(tmp_path, 24, size=48, workers=1, progress=False)
    manifest = write_localized_manifest(tmp_path, "Pleural Effusion")
    data = load_localized(manifest, "mask", labels=["Pleural Effusion"])
    frame = data.labelled.frame
    positive = frame["mask"].notna() & (frame["mask"].astype(str) != "")
    assert positive.any() and (frame.loc[positive, "Pleural Effusion"] == 1).all()
    boxes = load_localized(manifest, "boxes", labels=["Pleural Effusion"])
    assert boxes.classes == ["Pleural Effusion"]


def test_cli_help_and_a_bad_column(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "segment", "--help"])
    assert exit_.value.code == 0 and "--freeze" in capsys.readouterr().out
    manifest = write_toy_localized(tmp_path, {"train": 4, "valid": 2, "test": 2})
    code = main(["evaluate", "segment", "--model", "random:resnet18", "--data", str(manifest), "--out",
                 str(tmp_path / "o"), "--target-column", "nope", "--no-progress"])
    assert code != 0 and "nope" in capsys.readouterr().err


def test_positive_oversampling_draws_findings_at_the_asked_share(tmp_path):
    from torch.utils.data import WeightedRandomSampler

    from convirt.evaluation.localized import positive_weights

    positive = np.array([True, False, False, False, False, False, False, False])
    w = positive_weights(positive, 0.5).numpy()
    np.testing.assert_allclose(w, [0.5] + [0.5 / 7] * 7)  # hand-worked: half the mass on the one positive
    draws = np.array(list(WeightedRandomSampler(torch.as_tensor(w), 20000, generator=torch.Generator().manual_seed(0))))
    assert abs(positive[draws].mean() - 0.5) < 0.02
    manifest = write_toy_localized(tmp_path)
    data = load_localized(manifest, "mask")
    from convirt.evaluation.localized import LocalizedImages

    images = LocalizedImages(data, "train", None, lambda x: x)
    expected = [isinstance(c, str) and c.strip() != "" for c in data.cells("train")]
    assert images.positive.tolist() == expected and 0 < images.positive.sum() < len(expected)
    with pytest.raises(ConfigError, match="positive_fraction must lie in"):
        default_config(False, positive_fraction=1.0)
