"""The shared writing step of `convirt data prepare`, exercised through small adapters' fixtures."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from convirt.data.adapters import Options, registry
from convirt.data.check import check_manifest
from convirt.data.manifest import label_columns, read_manifest
from convirt.data.prepare import prepare
from convirt.data.split import verify_splits
from convirt.errors import DataError
from tests.data.adapters.files import write_image

SECRET = "Patient Jane Roe has a small left effusion"  # stands for report text


def _folder_set(root, n=10):
    for i in range(n):
        write_image(root / f"p{i}" / "x.png", seed=i)
        (root / f"p{i}" / "x.txt").write_text(f"{SECRET} ({i}).")
    return root


def test_registry_names_and_descriptions():
    adapters = registry()
    assert {"mimic-cxr", "chexpert-plus", "iu-xray", "roco", "covid-notes", "folder", "rsna-pneumonia", "covidx",
            "mura", "chexpert", "kermany", "siim-pneumothorax", "chexpert-8x200", "chexpert-5x200"} == set(adapters)
    assert all(a.description and "\n" not in a.description and a.layout for a in adapters.values())


def test_manifest_is_usable_without_absolute_paths(tmp_path):
    root, out = _folder_set(tmp_path / "raw"), tmp_path / "out"
    summary = prepare("folder", root, out, Options(progress=False))
    assert os.path.islink(out / "data") and (out / "data").resolve() == root.resolve()
    report = check_manifest(out / "manifest.csv", decode_images=True, allow_absolute=False, progress=False)
    assert report.ok and report.n_rows == 10
    assert SECRET not in (out / "summary.json").read_text() and SECRET not in (out / "splits.json").read_text()
    assert verify_splits(out / "manifest.csv")["sha256"] == summary["splits_sha256"]
    # the output folder can move: paths are relative, the link is absolute
    moved = tmp_path / "elsewhere"
    out.rename(moved)
    assert check_manifest(moved / "manifest.csv", decode_images=False, progress=False).ok


def test_link_is_repointed_and_never_replaces_a_folder(tmp_path):
    first, second, out = _folder_set(tmp_path / "a"), _folder_set(tmp_path / "b", n=3), tmp_path / "out"
    prepare("folder", first, out, Options(progress=False))
    prepare("folder", second, out, Options(progress=False))
    assert (out / "data").resolve() == second.resolve() and len(read_manifest(out / "manifest.csv")) == 3
    other = tmp_path / "other"
    (other / "data").mkdir(parents=True)
    with pytest.raises(DataError, match="exists and is not a link"):
        prepare("folder", first, other, Options(progress=False))


def test_missing_views_and_rows_are_counted(tmp_path):
    from convirt.data.prepare import _drop_missing_images

    write_image(tmp_path / "a.png")
    df = pd.DataFrame({"image": ["a.png|gone.png", "gone.png", "a.png"], "id": ["1", "2", "3"]})
    kept, n_dropped = _drop_missing_images(df, tmp_path, Options(progress=False))
    assert kept["image"].tolist() == ["a.png", "a.png"] and kept["id"].tolist() == ["1", "3"] and n_dropped == 1


def test_labels_written_as_integers_and_found_by_the_manifest_reader(tmp_path):
    root = tmp_path / "kermany"
    for i in range(6):
        write_image(root / "images" / f"IM-{i:04d}-0001.jpg", seed=i)
    pd.DataFrame({"image": [f"images/IM-{i:04d}-0001.jpg" for i in range(6)],
                  "patient_id": [f"IM-{i:04d}" for i in range(6)],
                  "label": ["normal", "pneumonia"] * 3, "subtype": ["normal", "virus"] * 3}).to_csv(root / "labels.csv",
                                                                                                  index=False)
    prepare("kermany", root, tmp_path / "out", Options(progress=False))
    text = (tmp_path / "out" / "manifest.csv").read_text()
    assert ",1," in text and ",1.0," not in text
    assert label_columns(read_manifest(tmp_path / "out" / "manifest.csv")) == ["Pneumonia"]


def test_redraw_ignores_the_official_split(tmp_path):
    root = tmp_path / "covidx"
    lines = [f"{i} img{i}.png {'positive' if i % 2 else 'negative'} src" for i in range(30)]
    root.mkdir()
    (root / "train.txt").write_text("\n".join(lines[:25]) + "\n")
    (root / "test.txt").write_text("\n".join(lines[25:]) + "\n")
    for i in range(30):
        write_image(root / ("train" if i < 25 else "test") / f"img{i}.png", seed=i)
    kept = prepare("covidx", root, tmp_path / "kept", Options(progress=False))
    redrawn = prepare("covidx", root, tmp_path / "redrawn", Options(progress=False), redraw_splits=True)
    assert kept["official_split_rows"] == 5 and redrawn["official_split_rows"] == 0
    assert kept["splits"]["test"]["rows"] == 5 and kept["splits_sha256"] != redrawn["splits_sha256"]
    assert json.loads((tmp_path / "redrawn" / "splits.json").read_text())["official_redrawn"] is True


def test_a_bad_image_fails_the_check_and_is_reported(tmp_path):
    root = _folder_set(tmp_path / "raw", n=3)
    (root / "p1" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)
    summary = prepare("folder", root, tmp_path / "out", Options(progress=False), decode_images=True)
    assert not summary["check"]["ok"] and summary["check"]["n_bad_rows"] == 1
    assert (tmp_path / "out" / "check.json").is_file()
    assert "cannot decode" in summary["check"]["first_problems"][0]


def test_errors_say_what_is_missing(tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        prepare("kermany", tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="chest_xray/train/NORMAL"):
        prepare("kermany", tmp_path / "empty", tmp_path / "out")
    with pytest.raises(DataError, match="unknown data set 'mimic'"):
        prepare("mimic", tmp_path / "empty", tmp_path / "out")
