from __future__ import annotations

import json

import pandas as pd
import pytest

from convirt.cli.main import main
from convirt.data.adapters import registry
from tests.data.adapters.files import write_image


@pytest.fixture
def kermany(tmp_path):
    root = tmp_path / "kermany"
    for i in range(10):
        write_image(root / "images" / f"person{i}_bacteria_{i}.jpg", seed=i)
    pd.DataFrame({"image": [f"images/person{i}_bacteria_{i}.jpg" for i in range(10)],
                  "patient_id": [f"person{i}" for i in range(10)], "label": ["pneumonia"] * 10,
                  "subtype": ["bacteria"] * 10}).to_csv(root / "labels.csv", index=False)
    return root


def test_list_and_help_name_every_data_set(capsys):
    assert main(["data", "prepare", "--list"]) == 0
    listed = capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["data", "prepare", "--help"])
    helped = capsys.readouterr().out
    for name, adapter in registry().items():
        assert name in listed and adapter.description in listed and name in helped
    for flag in ("--root", "--out", "--seed", "--split-fractions", "--frontal-only", "--uncertainty", "--decode"):
        assert flag in helped


def test_prepare_prints_the_summary(kermany, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["data", "prepare", "kermany", "--root", str(kermany), "--out", str(out), "--seed", "1",
                 "--split-fractions", "0.6,0.2,0.2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("kermany: 10 studies, 10 images, 10 patients")
    assert "Pneumonia: 10 positive" in printed and "check: ok" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seed"] == 1 and summary["fractions"] == {"train": 0.6, "valid": 0.2, "test": 0.2}
    assert main(["data", "check", str(out / "manifest.csv"), "--no-text"]) == 0


def test_usage_errors_exit_2(kermany, tmp_path, capsys):
    assert main(["data", "prepare", "kermany", "--root", str(kermany), "--out", str(tmp_path / "o"),
                 "--uncertainty", "zeros"]) == 2
    assert "--uncertainty does not apply to kermany" in capsys.readouterr().err
    assert main(["data", "prepare", "kermany", "--root", str(tmp_path / "absent"), "--out", str(tmp_path / "o")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["data", "prepare", "kermany"]) == 2
    assert main(["data", "prepare", "kermany", "--root", str(kermany), "--out", str(tmp_path / "o"),
                 "--split-fractions", "0.5,0.5"]) == 2
