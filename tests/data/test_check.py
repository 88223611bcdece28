from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from convirt.cli.main import main
from convirt.data.check import BadRow, check_manifest
from convirt.data.manifest import read_manifest

REPORT = "FINDINGS: The heart is normal. IMPRESSION: No acute disease."
SECRET = "Patient John Doe"  # stands for report text: must never appear in any output


def _image(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16), dtype=np.uint8)).save(path)


@pytest.fixture
def broken(tmp_path):
    """Rows 1, 6 and 9 are good; every other row has exactly one known problem (row 8 two)."""
    for i in range(1, 10):
        _image(tmp_path / "images" / f"{i}.png", i)
    (tmp_path / "images" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)  # corrupt
    (tmp_path / "images" / "4.png").unlink()
    rows = [
        ("images/1.png", REPORT),
        ("images/2.png", ""),  # empty report
        ("images/3.png", f"{SECRET} {REPORT}"),  # corrupt image
        ("images/4.png", f"{SECRET} {REPORT}"),  # missing image
        ("../outside.png", f"{SECRET} {REPORT}"),  # escapes the folder
        ("images/6.png", f"{SECRET}. {REPORT}"),
        ("images/7.png", "12345"),  # a number, not a report
        ("images/1.png|images/missing.png", "   \n "),  # second view missing + whitespace-only report
        ("images/9.png", f"{SECRET}: fine."),
        ("images/1.png", REPORT),  # duplicate of row 1: a warning only
    ]
    path = tmp_path / "manifest.csv"
    pd.DataFrame(rows, columns=["image", "text"]).to_csv(path, index=False)
    return path


EXPECTED = [
    BadRow(2, "text", "empty report"),
    BadRow(3, "image", "cannot decode images/3.png: "),  # prefix; the decoder's reason follows
    BadRow(4, "image", "file not found: images/4.png"),
    BadRow(5, "image", "path leaves the manifest's folder: ../outside.png"),
    BadRow(7, "text", "report is a number, not text"),
    BadRow(8, "image", "file not found: images/missing.png"),
    BadRow(8, "text", "report is only whitespace"),
]


def test_broken_manifest_every_problem_with_its_row(broken):
    report = check_manifest(broken, progress=False, workers=2)
    assert report.n_rows == 10 and not report.ok and report.n_bad_rows == 6
    assert [(b.row, b.column) for b in report.bad] == [(e.row, e.column) for e in EXPECTED]
    for got, want in zip(report.bad, EXPECTED):
        assert got.reason.startswith(want.reason), (got, want)
    assert "corrupt" in report.bad[1].reason or "truncated" in report.bad[1].reason
    assert report.ok_rows == [1, 6, 9, 10]
    assert report.warnings == [BadRow(10, None, "duplicate of row 1 (same image and report)")]
    assert SECRET not in json.dumps(report.to_dict())


def test_no_decode_skips_only_the_decoding(broken):
    report = check_manifest(broken, decode_images=False, progress=False)
    assert [b.row for b in report.bad] == [2, 4, 5, 7, 8, 8]


def test_cli_prints_rows_and_exits_1(broken, tmp_path, capsys):
    out = tmp_path / "check.json"
    assert main(["data", "check", str(broken), "--json", str(out)]) == 1
    printed = capsys.readouterr()
    assert "10 rows, 4 ok, 6 with problems" in printed.out
    assert "row 4, column image: file not found: images/4.png" in printed.out
    assert "row 7, column text: report is a number, not text" in printed.out
    assert "warning: row 10: duplicate of row 1" in printed.out
    assert SECRET not in printed.out + printed.err + out.read_text()
    saved = json.loads(out.read_text())
    assert saved["ok"] is False and saved["n_rows"] == 10 and saved["bad"][0] == {"row": 2, "column": "text", "reason": "empty report"}


def test_good_manifest_exits_0(tmp_path, capsys):
    for i in range(3):
        _image(tmp_path / "img" / f"{i}.png", i)
    path = tmp_path / "good.jsonl"
    path.write_text("".join(json.dumps({"image": f"img/{i}.png", "text": f"Finding number {i}."}) + "\n" for i in range(3)))
    assert main(["data", "check", str(path)]) == 0
    assert "3 rows, 3 ok, 0 with problems" in capsys.readouterr().out
    report = check_manifest(path, progress=False)
    assert report.ok and report.ok_rows == [1, 2, 3] and not report.warnings


def test_absolute_paths_need_the_flag(tmp_path):
    _image(tmp_path / "elsewhere" / "a.png")
    path = tmp_path / "data" / "m.csv"
    path.parent.mkdir()
    pd.DataFrame({"image": [str(tmp_path / "elsewhere" / "a.png")], "text": [REPORT]}).to_csv(path, index=False)
    assert check_manifest(path, progress=False).bad[0].reason.startswith("absolute path not allowed")
    assert check_manifest(path, allow_absolute=True, progress=False).ok
    assert main(["data", "check", str(path), "--allow-absolute-paths"]) == 0


def test_jsonl_non_text_and_binary_reports(tmp_path):
    _image(tmp_path / "a.png")
    path = tmp_path / "m.jsonl"
    rows = [{"image": "a.png", "text": 3.5}, {"image": "a.png", "text": ["a", "list"]}, {"image": "a.png", "text": None},
            {"image": "a.png", "text": "bad \x00 bytes"}, {"image": "a.png", "text": "Fine report."}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    reasons = [(b.row, b.reason) for b in check_manifest(path, progress=False).bad]
    assert reasons == [(1, "report is not text (a float value)"), (2, "report is not text (a list value)"), (3, "empty report"),
                       (4, "report contains control characters (binary data?)")]


def test_invalid_utf8_csv_is_reported_per_row(tmp_path):
    _image(tmp_path / "a.png")
    path = tmp_path / "m.csv"
    path.write_bytes("image,text\na.png,Heart normal \ufffd kept.\na.png,caf".encode() + b"\xe9 latin-1 text\n")
    assert [(b.row, b.reason) for b in check_manifest(path, progress=False).bad] == [
        (2, "report is not valid UTF-8 text (save the manifest as UTF-8)")]  # a stored U+FFFD is valid text
    assert read_manifest(path)["text"].tolist() == ["Heart normal \ufffd kept.", "caf\ufffd latin-1 text"]


def test_wrong_columns_reported_once(tmp_path, capsys):
    path = tmp_path / "m.csv"
    pd.DataFrame({"path": ["a.png"], "report": [REPORT]}).to_csv(path, index=False)
    report = check_manifest(path, progress=False)
    assert [(b.row, b.column) for b in report.bad] == [(None, "image"), (None, "text")]
    assert report.bad[0].reason == "missing required column 'image' (found: path, report); rename column 'path' to 'image'?"
    assert main(["data", "check", str(path)]) == 1
    assert "manifest, column text: missing required column 'text'" in capsys.readouterr().out


def test_unreadable_manifest_reported_once(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text("{not json\n")
    report = check_manifest(path, progress=False)
    assert report.n_rows == 0 and len(report.bad) == 1 and report.bad[0].row is None
    assert report.bad[0].reason.startswith("cannot read manifest: cannot read as JSON Lines")
    assert main(["data", "check", str(tmp_path / "absent.csv")]) == 1


def test_cli_help_lists_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["data", "check", "--help"])
    text = capsys.readouterr().out
    for flag in ("MANIFEST", "--no-decode", "--json OUT", "--allow-absolute-paths", "Exit status"):
        assert flag in text


def test_labelled_set_without_text(tmp_path, capsys):
    _image(tmp_path / "images" / "a.png")
    path = tmp_path / "labels.csv"
    pd.DataFrame({"image": ["images/a.png", "images/a.png"], "Pneumonia": [1, 0]}).to_csv(path, index=False)
    assert [b.column for b in check_manifest(path, progress=False).bad] == ["text"]
    report = check_manifest(path, progress=False, require_text=False)
    assert report.ok and report.ok_rows == [1, 2]
    assert [w.reason for w in report.warnings] == ["duplicate of row 1 (same image)"]
    assert main(["data", "check", str(path), "--no-text"]) == 0
