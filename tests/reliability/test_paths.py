"""Manifest paths resolve under the manifest's folder: `..` escapes are refused always, absolute paths
unless data.allow_absolute_paths is set; refused rows are never read."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from convirt.config import load_config
from convirt.errors import DataError
from convirt.training.datamodule import load_split_pairs
from convirt.training.run import pretrain
from tests.helpers import write_pair_manifest
from tests.reliability.common import fast_overrides


@pytest.fixture
def escaping(tmp_path):
    """The helper manifest plus three training rows whose (valid) images lie outside its folder."""
    manifest = write_pair_manifest(tmp_path / "data")
    outside = tmp_path / "outside.png"
    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(outside)
    df = pd.read_csv(manifest)
    extra = pd.DataFrame({"image": ["../outside.png", "images/../../outside.png", str(outside)],
                          "text": ["FINDINGS: The lungs are clear."] * 3, "patient_id": ["x", "y", "z"], "split": ["train"] * 3})
    pd.concat([df, extra]).to_csv(manifest, index=False)
    n = len(df)
    return manifest, outside, (n + 1, n + 2, n + 3)  # 1-based data rows of the three


def test_escaping_and_absolute_paths_are_refused_with_the_fix(escaping, tmp_path):
    manifest, outside, (up, nested_up, absolute) = escaping
    with pytest.raises(DataError) as caught:
        pretrain(load_config(overrides=fast_overrides(manifest, tmp_path / "run")))
    message = str(caught.value)
    assert "has 3 bad row(s)" in message
    assert f"row {up}, image: path leaves the manifest's folder: ../outside.png" in message
    assert f"row {nested_up}, image: path leaves the manifest's folder: images/../../outside.png" in message
    assert f"row {absolute}, image: absolute path not allowed: {outside}" in message and "data.allow_absolute_paths" in message

    train, _, skipped = load_split_pairs(load_config(overrides=fast_overrides(manifest, tmp_path / "run") + ["data.skip_bad_rows=true"]))
    assert skipped == 3 and all(outside not in p.image_paths for p in train)


def test_absolute_paths_are_accepted_when_allowed_but_escapes_still_are_not(escaping, tmp_path):
    manifest, outside, (up, nested_up, absolute) = escaping
    cfg = load_config(overrides=fast_overrides(manifest, tmp_path / "run") + ["data.allow_absolute_paths=true", "data.skip_bad_rows=true"])
    train, _, skipped = load_split_pairs(cfg)
    assert skipped == 2
    assert [p.row for p in train if outside in p.image_paths] == [absolute]
