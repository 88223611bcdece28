"""``convirt corpus build|calibrate``, ``convirt report draft`` and ``convirt evaluate report-gen`` end to end (tiny model)."""

import json

import pytest

from convirt.cli.main import main
from tests.helpers import tiny_dual_encoder, write_labelled_manifest


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("reportgen")
    return root, tiny_dual_encoder(root / "model"), write_labelled_manifest(root / "data")


def test_corpus_draft_and_evaluate(setup, capsys):
    root, model, manifest = setup
    corpus, reports = root / "corpus", root / "reports"
    assert main(["corpus", "build", "--model", str(model), "--reports", str(manifest), "--split", "train",
                 "--out", str(corpus), "--no-progress"]) == 0
    assert "distinct entries" in capsys.readouterr().out
    assert main(["corpus", "build", "--model", str(model), "--reports", str(manifest), "--level", "report",
                 "--out", str(reports), "--no-progress"]) == 0
    assert main(["corpus", "calibrate", "--corpus", str(corpus), "--model", str(model), "--data", str(manifest),
                 "--observations", "chexpert", "--no-progress"]) == 0
    assert "window" in capsys.readouterr().out
    image = manifest.parent / "images" / "0.png"
    out_json = root / "draft.json"
    assert main(["report", "draft", "--model", str(model), "--corpus", str(corpus), "--image", str(image),
                 "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "REPORT:" in printed and "cosine" in printed
    draft = json.loads(out_json.read_text())[0]
    assert draft["sentences"] and len(draft["similarities"]) == len(draft["sentences"])
    assert main(["report", "draft", "--model", str(model), "--corpus", str(corpus), "--image", str(image),
                 "--method", "topk", "--k", "2", "--raw"]) == 0
    out = root / "eval"
    assert main(["evaluate", "report-gen", "--model", str(model), "--corpus", str(corpus), "--report-corpus", str(reports),
                 "--data", str(manifest), "--out", str(out), "--no-progress"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert set(doc["results"]) == {"report", "topk", "topk-centred", "adaptive"}
    for r in doc["results"].values():
        assert 0 <= r["label"]["micro_f1"] <= 1 and 0 <= r["BLEU-4"] <= 1 and 0 <= r["ROUGE-L"] <= 1
        assert r["repeated_findings"] >= 0
    assert doc["n_images"] == 16 and "| selector |" in (out / "results.md").read_text()
    assert len((out / "drafts.jsonl").read_text().splitlines()) == 16


def test_errors_are_clear(setup, capsys, tmp_path):
    _, model, manifest = setup
    assert main(["report", "draft", "--model", str(model), "--corpus", str(tmp_path), "--image", str(manifest)]) == 2
    assert "not a report corpus" in capsys.readouterr().err
    assert main(["corpus", "build", "--model", str(tmp_path / "nope"), "--reports", str(manifest),
                 "--out", str(tmp_path / "c")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["corpus", "build", "--model", str(model), "--reports", str(tmp_path / "missing.csv"),
                 "--out", str(tmp_path / "c")]) == 2
    assert "no such file" in capsys.readouterr().err
    for argv in (["corpus", "--help"], ["corpus", "build", "--help"], ["report", "draft", "--help"],
                 ["evaluate", "report-gen", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
