import json
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

from convirt.errors import ConfigError, DataError
from convirt.evaluation.splits import (indices_checksum, label_fraction_subsets, load_subsets, save_subsets,
                                       subsets_checksum)

LABELS = ["common", "medium", "rare"]


def make_df(n_patients: int = 800, seed: int = 0) -> pd.DataFrame:
    """1-4 images per patient; labels at ~30%, ~10% and ~2% prevalence (a patient's images share labels mostly)."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        base = rng.random(3) < np.array([0.3, 0.1, 0.02])
        for _ in range(rng.integers(1, 5)):
            flip = rng.random(3) < 0.02
            rows.append({"patient_id": f"p{p:04d}", **dict(zip(LABELS, (base ^ flip).astype(int)))})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=1).reset_index(drop=True)  # patients interleaved


@pytest.fixture(scope="module")
def df():
    return make_df()


@pytest.fixture(scope="module")
def subsets(df):
    return label_fraction_subsets(df, (0.01, 0.1, 1.0), (0, 1, 2), LABELS)


def test_patients_are_never_split(df, subsets):
    rows_of = df.groupby("patient_id").indices
    for key, idx in subsets.items():
        chosen = set(idx.tolist())
        patients = set(df.loc[idx, "patient_id"])
        for p in patients:
            assert set(rows_of[p].tolist()) <= chosen, f"{key}: patient {p} split"
        assert len(idx) == len(chosen) and (np.diff(idx) > 0).all()  # sorted, no duplicates


def test_fraction_sizes(df, subsets):
    max_rows = df.groupby("patient_id").size().max()
    for (fraction, seed), idx in subsets.items():
        if fraction == 1.0:
            np.testing.assert_array_equal(idx, np.arange(len(df)))
        else:
            # Whole patients: within one patient of the target (plus seeded patients for rare labels).
            assert abs(len(idx) - fraction * len(df)) <= 3 * max_rows, (fraction, seed, len(idx))
    assert len(subsets[(0.01, 0)]) < len(subsets[(0.1, 0)]) < len(subsets[(1.0, 0)])


def test_every_label_has_positives_and_negatives(df, subsets):
    for key, idx in subsets.items():
        y = df.loc[idx, LABELS].to_numpy()
        assert (y.sum(axis=0) >= 1).all(), key
        assert ((1 - y).sum(axis=0) >= 1).all(), key


def test_min_positives_is_honoured(df):
    subs = label_fraction_subsets(df, (0.01,), (0, 1, 2, 3), LABELS, min_positives=3)
    for key, idx in subs.items():
        assert (df.loc[idx, LABELS].sum(axis=0) >= 3).all(), key


def test_deterministic_and_seed_dependent(df, subsets):
    again = label_fraction_subsets(df, (0.01, 0.1, 1.0), (0, 1, 2), LABELS)
    assert subsets.keys() == again.keys()
    for key in subsets:
        np.testing.assert_array_equal(subsets[key], again[key])
    assert subsets_checksum(subsets) == subsets_checksum(again)
    assert indices_checksum(subsets[(0.1, 0)]) != indices_checksum(subsets[(0.1, 1)])


def test_same_indices_in_a_fresh_process_with_another_hash_seed(df, subsets, tmp_path):
    df.to_csv(tmp_path / "m.csv", index=False)
    code = ("import pandas as pd; from convirt.evaluation.splits import label_fraction_subsets, subsets_checksum; "
            f"df = pd.read_csv({str(tmp_path / 'm.csv')!r}); "
            f"print(subsets_checksum(label_fraction_subsets(df, (0.01, 0.1, 1.0), (0, 1, 2), {LABELS!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "12345", "PATH": ""})
    assert out.stdout.strip() == subsets_checksum(subsets)


def test_stratified_prevalence_is_close_to_the_table(df, subsets):
    prevalence = df[LABELS].mean()
    for seed in (0, 1, 2):
        idx = subsets[(0.1, seed)]
        expected = prevalence["medium"] * len(idx)
        assert abs(df.loc[idx, "medium"].sum() - expected) <= 0.3 * expected


def test_smaller_fraction_nested_in_larger_for_one_seed():
    df = make_df(400, seed=3)
    subs = label_fraction_subsets(df, (0.1, 0.3), (0,), ["common"])
    assert set(subs[(0.1, 0)]) <= set(subs[(0.3, 0)])


def test_without_group_column_rows_are_independent(df):
    subs = label_fraction_subsets(df, (0.1,), (0,), LABELS, group_column=None)
    assert abs(len(subs[(0.1, 0)]) - round(0.1 * len(df))) <= 1


def test_impossible_label_warns_instead_of_failing(df):
    d = df.copy()
    d["never"] = 0
    with pytest.warns(UserWarning, match="never"):
        subs = label_fraction_subsets(d, (0.1,), (0,), LABELS + ["never"])
    assert (d.loc[subs[(0.1, 0)], LABELS].sum(axis=0) >= 1).all()


def test_bad_arguments(df):
    with pytest.raises(ConfigError):
        label_fraction_subsets(df, (0.0,), (0,), LABELS)
    with pytest.raises(ConfigError):
        label_fraction_subsets(df, (0.1,), (0,), [])
    with pytest.raises(DataError, match="lacks"):
        label_fraction_subsets(df, (0.1,), (0,), ["nope"])
    with pytest.raises(DataError, match="0/1"):
        label_fraction_subsets(df.assign(common=-1), (0.1,), (0,), ["common"])


def test_save_load_round_trip_and_checks(df, subsets, tmp_path):
    path = tmp_path / "subsets.json"
    save_subsets(subsets, path, row_ids=df["patient_id"] + "/" + df.index.astype(str))
    loaded = load_subsets(path, row_ids=df["patient_id"] + "/" + df.index.astype(str))
    assert loaded.keys() == subsets.keys()
    for key in subsets:
        np.testing.assert_array_equal(loaded[key], subsets[key])
    assert subsets_checksum(loaded) == subsets_checksum(subsets)
    # Applied to a reordered manifest: refused.
    with pytest.raises(DataError, match="different manifest"):
        load_subsets(path, row_ids=list(reversed(df["patient_id"] + "/" + df.index.astype(str))))
    # Edited file: refused.
    doc = json.loads(path.read_text())
    doc["subsets"][0]["indices"][0] += 1
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="checksum"):
        load_subsets(path)


def test_load_rejects_other_files(tmp_path):
    (tmp_path / "x.json").write_text('{"a": 1}')
    with pytest.raises(DataError):
        load_subsets(tmp_path / "x.json")
    with pytest.raises(DataError):
        load_subsets(tmp_path / "missing.json")


def test_no_warnings_on_a_normal_table(df):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        label_fraction_subsets(df, (0.05,), (0,), LABELS)


def test_tiny_subset_gets_a_patient_with_the_rarest_label():
    # One positive among 5000 single-image patients and a ~3-row subset: random redraws almost never
    # contain it, so the subset is completed with that patient (one row above the target at most).
    df = pd.DataFrame({"patient_id": [f"p{i}" for i in range(5000)], "rare": 0,
                       "common": (np.arange(5000) % 2)})
    df.loc[4321, "rare"] = 1
    subs = label_fraction_subsets(df, (0.0005,), (0, 1), ["rare", "common"])
    for key, idx in subs.items():
        assert 4321 in idx and df.loc[idx, "common"].nunique() == 2, key
        assert len(idx) <= round(0.0005 * 5000) + 1
