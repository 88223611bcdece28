"""The generic layout: ``ROOT/<patient>/<study>/<image>.png`` with ``<image>.txt`` beside it, or a study
folder with ``<study>.txt`` beside the folder (MIMIC-style)."""

from __future__ import annotations

import pytest

from convirt.errors import DataError

from tests.data.adapters.files import run, write_image


def test_image_and_study_reports(tmp_path):
    root = tmp_path / "mine"
    write_image(root / "p1" / "s1" / "frontal.png")
    write_image(root / "p1" / "s1" / "lateral.jpg", seed=1)
    (root / "p1" / "s1.txt").write_text("FINDINGS: Clear lungs.\n")  # one report for the study folder
    write_image(root / "p2" / "a.png", seed=2)
    (root / "p2" / "a.txt").write_text("Small effusion.")  # one report per image
    write_image(root / "p2" / "b.png", seed=3)
    (root / "p2" / "b.txt").write_text("  \n")  # empty
    write_image(root / "p3" / "c.png", seed=4)  # no text at all
    write_image(root / "loose.png", seed=5)
    (root / "loose.txt").write_text("Normal chest.")
    summary, df = run("folder", root, tmp_path / "out")
    df = df.set_index("id")
    assert df["image"].to_dict() == {"p1/s1": "data/p1/s1/frontal.png|data/p1/s1/lateral.jpg", "p2/a": "data/p2/a.png",
                                     "loose": "data/loose.png"}
    assert df["patient_id"].to_dict() == {"p1/s1": "p1", "p2/a": "p2", "loose": "loose"}
    assert df.loc["p1/s1", "text"] == "FINDINGS: Clear lungs."
    assert summary["dropped"] == {"no text file": 1, "empty report": 1}


def test_output_inside_root_is_not_read_back(tmp_path):
    root = tmp_path / "mine"
    for i in range(3):
        write_image(root / f"p{i}" / "x.png", seed=i)
        (root / f"p{i}" / "x.txt").write_text(f"Report {i}.")
    first, _ = run("folder", root, root / "prepared")
    again, df = run("folder", root, root / "prepared")  # OUT/data links back to ROOT: not walked twice
    assert first["studies"] == again["studies"] == 3 and set(df["image"]) == {f"data/p{i}/x.png" for i in range(3)}


def test_data_inside_output_needs_no_link(tmp_path):
    out = tmp_path / "project"
    write_image(out / "raw" / "p0" / "x.png")
    (out / "raw" / "p0" / "x.txt").write_text("Report.")
    summary, df = run("folder", out / "raw", out)
    assert summary["image_link"] is None and not (out / "data").exists()
    assert df["image"].tolist() == ["raw/p0/x.png"]


def test_no_images(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        run("folder", tmp_path / "empty", tmp_path / "out")
