"""Label specs (COLUMN, COLUMN=VALUE, multi-class text column), uncertainty policies and splits."""

import hashlib

import numpy as np
import pandas as pd
import pytest

from convirt.errors import ConfigError, DataError
from convirt.evaluation.labelled import load_labelled
from tests.helpers import write_labelled_manifest


def _manifest(tmp_path, rows):
    path = tmp_path / "m.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


ROWS = [{"image": f"{i}.png", "split": s, "A": a, "B": b, "finding": f}
        for i, (s, a, b, f) in enumerate([("train", 1, 0, "x"), ("train", -1, 1, "y"), ("val", 0, None, "z"),
                                           ("test", 1, 1, "x"), ("validation", 0, 0, "y"), ("test", None, 0, "z")])]


def test_binary_columns_with_uncertainty_policies(tmp_path):
    path = _manifest(tmp_path, ROWS)
    with pytest.raises(DataError, match="--uncertain zeros"):
        load_labelled(path, ["A", "B"])
    ones = load_labelled(path, ["A", "B"], uncertain="ones")
    zeros = load_labelled(path, ["A", "B"], uncertain="zeros")
    assert ones.task == "multilabel" and ones.label_names == ["A", "B"]
    np.testing.assert_array_equal(ones.y[:, 0], [1, 1, 0, 1, 0, 0])  # blank -> 0, -1 -> 1
    np.testing.assert_array_equal(zeros.y[:, 0], [1, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(zeros.y[:, 1], [0, 1, 0, 1, 0, 0])
    # split aliases: val / validation are the validation split
    assert {k: v.tolist() for k, v in zeros.splits.items()} == {"train": [0, 1], "valid": [2, 4], "test": [3, 5]}
    assert zeros.manifest_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_value_labels_and_multiclass(tmp_path):
    path = _manifest(tmp_path, ROWS)
    one = load_labelled(path, ["finding=x"])
    assert one.task == "binary" and one.y[:, 0].tolist() == [1, 0, 0, 1, 0, 0]
    multi = load_labelled(path, ["finding"])
    assert multi.task == "multiclass" and multi.label_names == ["finding=x", "finding=y", "finding=z"]
    assert multi.y.argmax(axis=1).tolist() == [0, 1, 2, 0, 1, 2] and (multi.y.sum(axis=1) == 1).all()


def test_errors_name_the_fix(tmp_path):
    path = _manifest(tmp_path, ROWS)
    with pytest.raises(DataError, match="'finding' must hold 0, 1, -1 or blank; row 1"):
        load_labelled(path, ["A", "finding"], uncertain="zeros")
    with pytest.raises(DataError, match="no column 'C'"):
        load_labelled(path, ["C"])
    with pytest.raises(ConfigError, match="task must be"):
        load_labelled(path, ["A"], task="regression")
    no_split = _manifest(tmp_path, [{k: v for k, v in r.items() if k != "split"} for r in ROWS])
    with pytest.raises(DataError, match="no 'split' column"):
        load_labelled(no_split, ["finding=x"])
    no_test = _manifest(tmp_path, [r for r in ROWS if r["split"] != "test"])
    with pytest.raises(DataError, match=r"no rows in split\(s\) \['test'\]"):
        load_labelled(no_test, ["finding=x"])
    escape = _manifest(tmp_path, [{**r, "image": "../outside.png"} for r in ROWS])
    with pytest.raises(DataError, match="row 1: path leaves"):
        load_labelled(escape, ["finding=x"])


def test_default_labels_are_the_01_columns_and_train_frame_keeps_patients(tmp_path):
    data = load_labelled(write_labelled_manifest(tmp_path))
    assert data.label_names == ["bright"]
    frame = data.train_frame()
    assert list(frame.columns) == ["image", "patient_id", "bright"] and len(frame) == 40
    np.testing.assert_array_equal(frame["bright"].to_numpy(), data.split_y("train")[:, 0])
