from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from convirt.data.split import (assign_splits, assignment_checksum, normalize_split, parse_fractions, verify_splits,
                                write_splits)
from convirt.errors import ConfigError, DataError


def _patients(n_patients=200, seed=0):
    """1 to 4 rows per patient, in shuffled order."""
    rng = np.random.default_rng(seed)
    rows = [f"P{p:04d}" for p in range(n_patients) for _ in range(int(rng.integers(1, 5)))]
    return list(rng.permutation(rows))


def test_patients_never_straddle_and_fractions_hold():
    patients = _patients()
    splits = assign_splits(patients, fractions=(0.7, 0.15, 0.15), seed=0)
    frame = pd.DataFrame({"p": patients, "s": splits})
    assert (frame.groupby("p")["s"].nunique() == 1).all()
    share = frame["s"].value_counts(normalize=True)
    assert abs(share["train"] - 0.7) < 0.03 and abs(share["valid"] - 0.15) < 0.03 and abs(share["test"] - 0.15) < 0.03


def test_deterministic_and_seed_dependent():
    patients = _patients()
    a, b, c = (assign_splits(patients, seed=s) for s in (5, 5, 6))
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    # the order of rows does not matter: the same patient gets the same split
    order = np.random.default_rng(1).permutation(len(patients))
    shuffled = assign_splits([patients[i] for i in order], seed=5)
    assert dict(zip(patients, a)) == dict(zip([patients[i] for i in order], shuffled))


def test_stratified_by_label():
    rng = np.random.default_rng(0)
    patients = [f"P{i}" for i in range(1000)]
    rare = (rng.random(1000) < 0.05).astype(int)  # a 5% label
    splits = assign_splits(patients, fractions=(0.8, 0.1, 0.1), seed=0, strata=rare)
    for split in ("valid", "test"):
        in_split = rare[splits == split]
        assert abs(in_split.mean() - rare.mean()) < 0.01  # without strata this varies by about +-0.02


def test_official_splits_are_kept_and_only_open_splits_drawn():
    patients = [f"P{i}" for i in range(100)]
    official = ["test" if i < 10 else "" for i in range(100)]
    splits = assign_splits(patients, official, fractions=(0.8, 0.1, 0.1), seed=0)
    assert (splits[:10] == "test").all()
    assert set(splits[10:]) == {"train", "valid"}  # test exists officially: not drawn again
    assert abs((splits[10:] == "valid").mean() - 1 / 9) < 0.03  # 0.1 / (0.8 + 0.1)


def test_a_patient_with_an_official_split_keeps_its_other_rows_there():
    splits = assign_splits(["A", "A", "B", "C"], ["validate", "", "", "train"], seed=0)
    assert splits[0] == splits[1] == "valid"


def test_checksum_tracks_the_assignment_not_the_row_order():
    ids, splits = ["a", "b", "c"], ["train", "valid", "test"]
    base = assignment_checksum(ids, splits)
    assert assignment_checksum(ids[::-1], splits[::-1]) == base
    assert assignment_checksum(ids, ["train", "test", "valid"]) != base
    assert assignment_checksum(ids + ["d"], splits + ["train"]) != base


def test_fraction_and_name_errors():
    assert parse_fractions("0.7,0.2,0.1") == (0.7, 0.2, 0.1)
    for bad in ("0.8,0.1", "0.5,0.2,0.2", "0,0.5,0.5", "a,b,c", "-0.1,0.6,0.5"):
        with pytest.raises(ConfigError):
            parse_fractions(bad)
    assert normalize_split("Validate") == "valid" and normalize_split(float("nan")) == ""
    with pytest.raises(DataError, match="unknown split name"):
        normalize_split("holdout")


def test_verify_splits_detects_an_edited_manifest(tmp_path):
    df = pd.DataFrame({"id": ["a", "b", "c", "d"], "image": ["x.png"] * 4, "text": ["t"] * 4,
                       "patient_id": ["1", "1", "2", "3"], "split": ["train", "train", "valid", "test"]})
    df.to_csv(tmp_path / "manifest.csv", index=False)
    write_splits(tmp_path / "splits.json", df, seed=0, fractions=(0.8, 0.1, 0.1), stratify=None, n_official=0,
                 redrawn=False)
    assert verify_splits(tmp_path / "manifest.csv")["counts"]["train"] == {"rows": 2, "patients": 1}
    df.assign(split=["train", "train", "test", "valid"]).to_csv(tmp_path / "manifest.csv", index=False)
    with pytest.raises(DataError, match="differs from the assignment pinned"):
        verify_splits(tmp_path / "manifest.csv")
