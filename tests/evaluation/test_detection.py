"""Detection on the pretrained encoder: boxes through the transforms, the weights inside the detector, mAP,
a training run, and the suite's columns."""

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from convirt.cli.main import main
from convirt.evaluation.detection import build_detector, mean_average_precision, run_detection
from convirt.evaluation.encoders import load_encoder
from convirt.evaluation.localized import (LocalizedImages, default_config, load_localized, localized_transform,
                                          parse_boxes, summarize)
from convirt.evaluation.protocols import Settings
from convirt.evaluation.suite import comparison_table, load_suite
from convirt.models.image import ImageEncoder
from tests.evaluation.localized_toy import write_toy_localized


def test_box_cells_rsna_layout_with_optional_class():
    xyxy, classes = parse_boxes("[[10, 5, 20, 20], [0, 0, 4, 2, \"Nodule\"]]", "Pneumonia")
    assert xyxy.tolist() == [[10, 5, 30, 25], [0, 0, 4, 2]] and classes == ["Pneumonia", "Nodule"]
    for blank in ("", "[]", float("nan")):
        assert parse_boxes(blank, "x")[0].shape == (0, 4)


def test_boxes_follow_resize_and_flip_as_computed_by_hand():
    # image 100 wide x 50 high, box x 10..30, y 5..25; resized to 32 x 32: x * 0.32, y * 0.64
    boxes = tv_tensors.BoundingBoxes([[10.0, 5.0, 30.0, 25.0]], format="XYXY", canvas_size=(50, 100))
    image = tv_tensors.Image(torch.zeros(1, 50, 100))
    out = v2.Resize((32, 32))({"image": image, "boxes": boxes})
    assert out["boxes"].tolist()[0] == pytest.approx([3.2, 3.2, 9.6, 16.0])
    flipped = v2.RandomHorizontalFlip(p=1.0)(out)  # x -> 32 - x, corners swap
    assert flipped["boxes"].tolist()[0] == pytest.approx([22.4, 3.2, 28.8, 16.0])


def test_the_dataset_moves_boxes_and_masks_together(tmp_path):
    mask = np.zeros((50, 100), bool)
    mask[5:25, 10:30] = True
    Image.fromarray((mask * 200).astype(np.uint8)).save(tmp_path / "img.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "m.png")
    import pandas as pd

    pd.DataFrame([{"image": "img.png", "split": s, "mask": "m.png", "boxes": "[[10, 5, 20, 20], [-10, 0, 5, 5]]"}
                  for s in ("train", "valid", "test")]).to_csv(tmp_path / "m.csv", index=False)
    boxes = load_localized(tmp_path / "m.csv", "boxes")
    ds = LocalizedImages(boxes, "test", None, localized_transform(32, 0.5, 0.5, "none", boxes=True))
    image, target = ds[0]
    assert image.shape == (1, 32, 32)
    assert target["boxes"].tolist()[0] == pytest.approx([3.2, 3.2, 9.6, 16.0])  # the box outside the image is dropped
    assert target["labels"].tolist() == [1]
    torch.manual_seed(0)
    flip = v2.Compose([v2.Resize((32, 32)), v2.RandomHorizontalFlip(1.0), v2.Normalize([0.5], [0.5])])
    masks = load_localized(tmp_path / "m.csv", "mask")
    _, m = LocalizedImages(masks, "test", None, flip)[0]
    ys, xs = np.nonzero(m[0].numpy())
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == pytest.approx((22.4, 3.2, 28.8, 16.0), abs=1)


@pytest.mark.parametrize("name", ["resnet18", "convnext_atto"])
def test_the_encoders_weights_are_the_ones_inside_the_detector(name):
    torch.manual_seed(0)
    encoder = ImageEncoder(name, pretrained=False).eval()
    detector = build_detector(encoder, num_classes=1, size=64).eval()
    body = detector.backbone.body
    source = {k.replace(".", "_"): v for k, v in encoder.backbone.state_dict().items()}
    inside = body.state_dict()
    assert detector.backbone.weights_report["copied"] == len(inside)
    for key, value in inside.items():
        assert torch.equal(value, source[key.replace(".", "_")]), key
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(body(x)[-1], encoder.backbone.forward_features(x), atol=1e-5)
        features = detector.backbone(x)
    assert list(features) == ["0", "1", "2", "3", "pool"] and features["0"].shape[-1] == 16  # stride 4 first


def test_map_on_hand_cases():
    target = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([1])}]
    exact = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}]
    assert mean_average_precision(exact, target)["map_50"] == pytest.approx(1.0)
    # IoU 0.64: a hit at thresholds 0.50, 0.55, 0.60 only, so mAP@[.5:.95] = 3 / 10
    shifted = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 6.4]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}]
    m = mean_average_precision(shifted, target)
    assert m["map_50"] == pytest.approx(1.0) and m["map_75"] == pytest.approx(0.0) and m["map"] == pytest.approx(0.3)
    none = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}]
    assert mean_average_precision(none, target)["map_50"] == pytest.approx(0.0)


def test_a_tiny_run_learns_and_writes_results_and_overlays(tmp_path):
    manifest = write_toy_localized(tmp_path, {"train": 32, "valid": 8, "test": 8}, size=64)
    data = load_localized(manifest, "boxes", labels=["lesion"])
    assert data.classes == ["lesion"]
    encoder = load_encoder("random:resnet18", size=64)
    settings = Settings(fractions=[1.0], seeds=[0], batch_size=8, cache_dir=None, progress=False, n_boot=0)
    cfg = default_config(False, lr=1e-3, batch_size=8, max_epochs=3, patience=3, min_epoch_steps=4, augment="mild")
    doc = run_detection([encoder], data, tmp_path / "out", settings, cfg, freeze=False, overlays=4)
    run = doc["models"]["Random resnet18"]["runs"][0]
    losses = run["train_loss_per_epoch"]
    assert losses[-1] < 0.8 * losses[0]
    assert run["test"]["map_50"] is not None and run["test"]["n_boxes"] > 0
    assert run["weights"]["copied"] > 0
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["protocol"] == "detect" and "map_50" in saved["models"]["Random resnet18"]["summary"]["1.0"]
    assert (tmp_path / "out" / "overlays_0.png").stat().st_size > 1000
    assert "## Test mAP@0.5" in (tmp_path / "out" / "results.md").read_text()


def test_a_frozen_backbone_gets_no_gradient():
    from convirt.evaluation.detection import DetectionModel

    model = DetectionModel(ImageEncoder("resnet18", pretrained=False), 1, 64, freeze=True, cfg=default_config(True))
    model.train()
    assert not model.net.backbone.body.training and model.net.backbone.fpn.training
    images = [torch.randn(1, 64, 64), torch.randn(1, 64, 64)]
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 30.0, 30.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    sum(model(images, targets).values()).backward()
    assert all(p.grad is None for p in model.net.backbone.body.parameters())
    assert any(p.grad is not None for p in model.net.backbone.fpn.parameters())


def test_suite_takes_the_localized_protocols_and_tabulates_dice_and_map(tmp_path):
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"models": ["random:resnet18"], "protocols": {
        "segment": {"data": "a.csv", "epochs": 2, "target_column": "mask"}, "detect-frozen": {"data": "b.csv", "batch_size": 4}}}))
    _, protocols = load_suite(tmp_path / "s.yaml")
    assert protocols["segment"].target_column == "mask" and protocols["detect-frozen"].batch_size == 4
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"protocols": {"segment": {"Cs": [1.0]}}}))
    with pytest.raises(Exception, match="does not take"):
        load_suite(tmp_path / "bad.yaml")
    seg = {"summary": summarize([{"fraction": 1.0, "seed": 0, "n_train": 5, "test": {"dice": 0.5, "iou": 0.4}}],
                                [("dice", ""), ("iou", "")])}
    det = {"summary": summarize([{"fraction": 0.1, "seed": s, "n_train": 5, "test": {"map_50": v, "map": v / 2}}
                                 for s, v in ((0, 0.2), (1, 0.4))], [("map_50", ""), ("map", "")])}
    table = comparison_table({"segment": {"models": {"A": seg}}, "detect": {"models": {"A": det}}}, ["A"])
    assert table.loc["A", "segment Dice @100%"] == pytest.approx(0.5)
    assert table.loc["A", "detect mAP@0.5 @10%"] == pytest.approx(0.3)
    assert table.loc["A", "detect mAP@0.5 @10% std"] == pytest.approx(np.std([0.2, 0.4], ddof=1))


def test_cli_help():
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "detect", "--help"])
    assert exit_.value.code == 0
