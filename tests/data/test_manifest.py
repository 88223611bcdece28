from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from convirt.data.manifest import REQUIRED_COLUMNS, label_columns, read_manifest, resolve_image_paths
from convirt.errors import DataError

ROWS = [
    {"image": "images/a.png", "text": "FINDINGS: Clear.", "split": "train", "patient_id": "007", "Edema": 1, "Effusion": "", "age": 54},
    {"image": "images/b.png|images/b_lat.png", "text": "", "split": "valid", "patient_id": "008", "Edema": -1, "Effusion": 0, "age": 61},
    {"image": "images/c.png", "text": "NA", "split": "test", "patient_id": "009", "Edema": 0, "Effusion": 1, "age": 70},
]


def test_required_columns():
    assert REQUIRED_COLUMNS == ("image", "text")


def test_csv_keeps_empty_and_na_reports_as_text(tmp_path):
    path = tmp_path / "m.csv"
    pd.DataFrame(ROWS).to_csv(path, index=False)
    df = read_manifest(path)
    assert df["text"].tolist() == ["FINDINGS: Clear.", "", "NA"]  # not NaN
    assert df["patient_id"].tolist() == ["007", "008", "009"]  # ids keep their leading zeros
    assert df["Edema"].tolist() == [1.0, -1.0, 0.0]
    assert np.isnan(df["Effusion"][0]) and df["Effusion"][2] == 1.0
    assert label_columns(df) == ["Edema", "Effusion"]  # age is numeric but not a label


def test_jsonl_raw_keeps_types_and_coerced_text_is_str(tmp_path):
    path = tmp_path / "m.jsonl"
    rows = [{"image": "a.png", "text": "Heart normal."}, {"image": "b.png", "text": 42}, {"image": "c.png", "text": None}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert read_manifest(path, raw=True)["text"].tolist()[1] == 42
    assert read_manifest(path)["text"].tolist() == ["Heart normal.", "42", ""]


def test_parquet(tmp_path):
    path = tmp_path / "m.parquet"
    try:
        pd.DataFrame(ROWS).astype({"Effusion": str}).to_parquet(path)
    except ImportError:  # no Parquet engine installed: reading must say which package is missing
        path.write_bytes(b"PAR1")
        with pytest.raises(DataError, match="pip install pyarrow"):
            read_manifest(path)
        return
    df = read_manifest(path)
    assert df["text"].tolist() == ["FINDINGS: Clear.", "", "NA"] and label_columns(df) == ["Edema", "Effusion"]


@pytest.mark.parametrize("name, content, match", [
    ("m.txt", "image,text\n", "unsupported manifest format '.txt'"),
    ("absent.csv", None, "file not found"),
    ("empty.csv", "", r"empty file \(0 bytes\)"),
    ("bad.jsonl", '{"image": "a.png", "text": \n', "cannot read as JSON Lines"),
])
def test_unreadable_manifests(tmp_path, name, content, match):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=match) as info:
        read_manifest(path)
    assert str(path) in str(info.value)


def test_label_columns_rules():
    df = pd.DataFrame({"image": ["a", "b", "c"], "text": ["1", "0", "1"], "Edema": ["1", "", "-1"], "score": [0.5, 1, 0],
                       "sex": ["M", "F", ""], "blank": ["", "", ""], "flag": [True, False, True]})
    assert label_columns(df) == ["Edema", "flag"]


def test_resolve_image_paths(tmp_path):
    root = tmp_path / "data"
    assert resolve_image_paths("images/a.png", root) == [root / "images" / "a.png"]
    assert resolve_image_paths(" f/a.png | f/./b.png ", root) == [root / "f" / "a.png", root / "f" / "b.png"]
    assert resolve_image_paths("f/../a.png", root) == [root / "a.png"]  # stays inside the folder
    absolute = str(tmp_path / "elsewhere.png")
    assert resolve_image_paths(absolute, root, allow_absolute=True) == [Path(absolute)]


@pytest.mark.parametrize("entry, match", [
    ("../secret.png", "leaves the manifest's folder"),
    ("images/../../secret.png", "leaves the manifest's folder"),
    ("a.png|..", "leaves the manifest's folder"),
    ("/etc/passwd", "absolute path not allowed: /etc/passwd"),
    ("", "no image path"),
    ("a.png||b.png", "empty path between"),
])
def test_resolve_image_paths_refuses(tmp_path, entry, match):
    with pytest.raises(DataError, match=match):
        resolve_image_paths(entry, tmp_path)
