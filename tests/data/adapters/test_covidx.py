"""COVIDx CXR as on Kaggle: ``train.txt`` / ``val.txt`` / ``test.txt`` with lines
``patient_id filename class data_source`` (e.g. ``379 SARS-10.1148rg.242035193-g04mr34g04a-Fig4a-day7.jpeg
negative cohen``) and images in ``train/``, ``val/``, ``test/``; older releases ship
``train_COVIDx9A.txt`` / ``test_COVIDx9A.txt`` with COVID-19 / pneumonia / normal classes."""

from __future__ import annotations

import pytest

from tests.data.adapters.files import run, write_image


def _write(root, split, lines):
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{split}.txt").write_text("".join(" ".join(line) + "\n" for line in lines))
    for k, (_, filename, _, _) in enumerate(lines):
        write_image(root / split.split("_")[0] / filename, seed=k)


@pytest.fixture
def covidx(tmp_path):
    root = tmp_path / "covidx"
    train = [("379", "SARS-10.1148rg.242035193-g04mr34g04a-Fig4a-day7.jpeg", "negative", "cohen"),
             ("1", "0a2b3c4d.png", "positive", "ricord"), ("1", "0a2b3c4e.png", "positive", "ricord"),
             ("1", "1b2c3d4e.png", "negative", "rsna")]  # patient "1" of rsna is another person than "1" of ricord
    train += [(str(100 + i), f"img{i}.png", ["positive", "negative"][i % 2], "bimcv") for i in range(16)]
    test = [("900", "test1.png", "positive", "ricord"), ("901", "test2.png", "negative", "rsna")]
    _write(root, "train", train)
    _write(root, "test", test)
    return root, train, test


def test_covidx_binary(covidx, tmp_path):
    root, train, test = covidx
    summary, df = run("covidx", root, tmp_path / "out")
    df = df.set_index("image")
    assert len(df) == len(train) + len(test)
    assert df.loc["data/train/0a2b3c4d.png", "patient_id"] == "ricord:1" != df.loc["data/train/1b2c3d4e.png", "patient_id"]
    assert df.loc["data/train/0a2b3c4d.png", "split"] == df.loc["data/train/0a2b3c4e.png", "split"]
    assert set(df.loc[["data/test/test1.png", "data/test/test2.png"], "split"]) == {"test"}
    assert set(df.loc[df.index.str.startswith("data/train/"), "split"]) <= {"train", "valid"}
    assert summary["labels"] == {"COVID-19": {"positive": 11, "negative": 11, "uncertain": 0, "blank": 0}}


def test_covidx_three_classes_with_val(tmp_path):
    root = tmp_path / "covidx9a"
    _write(root, "train_COVIDx9A", [(str(i), f"a{i}.png", ["COVID-19", "pneumonia", "normal"][i % 3], "cohen")
                                    for i in range(6)])
    _write(root, "test_COVIDx9A", [("50", "t.png", "pneumonia", "rsna")])
    (root / "val.txt").write_text("60 v.png normal rsna\n")
    write_image(root / "val" / "v.png")
    summary, df = run("covidx", root, tmp_path / "out")
    assert df.set_index("image")["split"].to_dict() == {**{f"data/train/a{i}.png": "train" for i in range(6)},
                                                        "data/test/t.png": "test", "data/val/v.png": "valid"}
    assert summary["labels"]["Pneumonia"]["positive"] == 3 and summary["labels"]["COVID-19"]["positive"] == 2
