"""``convirt evaluate``: help for every verb, files written, and errors that say what to change."""

import json

import pytest

from convirt.cli.main import main
from tests.helpers import tiny_dual_encoder, write_labelled_manifest

VERBS = ["linear", "finetune", "retrieval", "zeroshot", "report-retrieval", "suite"]


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", verb, "--help"])
    assert exit_.value.code == 0 and "--out" in capsys.readouterr().out


def test_linear_writes_results_and_prints_the_table(tmp_path, capsys):
    manifest = write_labelled_manifest(tmp_path, {"train": 20, "valid": 8, "test": 12})
    code = main(["evaluate", "linear", "--model", "random:resnet18", "--data", str(manifest), "--labels", "bright",
                 "--size", "32", "--fractions", "1", "--seeds", "0", "--n-boot", "0", "--cache", str(tmp_path / "c"),
                 "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 0
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc["protocol"] == "linear" and doc["models"]["Random resnet18"]["runs"][0]["fraction"] == 1.0
    assert "| Random resnet18 |" in capsys.readouterr().out


def test_report_retrieval_and_zeroshot_from_the_command_line(tmp_path):
    manifest = write_labelled_manifest(tmp_path, {"train": 2, "valid": 2, "test": 10})
    model = tiny_dual_encoder(tmp_path / "m")
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"light": {"a": ["bright", "light"], "b": ["lungs"]}, "dark": ["dark lungs"],
                                   "mid": ["mid"]}))
    common = ["--model", str(model), "--data", str(manifest), "--cache", str(tmp_path / "c"), "--no-progress"]
    assert main(["evaluate", "report-retrieval", *common, "--out", str(tmp_path / "r"), "--ks", "1", "2"]) == 0
    assert main(["evaluate", "zeroshot", *common, "--labels", "kind", "--prompts", str(prompts), "--n-boot", "10",
                 "--out", str(tmp_path / "z")]) == 0
    doc = json.loads((tmp_path / "z" / "results.json").read_text())
    assert doc["prompts"]["per_class"]["light"] == ["bright lungs", "light lungs"]  # parts combined in order


def test_errors_exit_2_with_a_message(tmp_path, capsys):
    manifest = write_labelled_manifest(tmp_path, {"train": 4, "valid": 2, "test": 2})
    assert main(["evaluate", "linear", "--model", str(tmp_path / "missing"), "--data", str(manifest),
                 "--out", str(tmp_path / "o")]) == 2
    assert "imagenet:NAME" in capsys.readouterr().err
    assert main(["evaluate", "linear", "--model", "random:resnet18", "--data", str(manifest), "--labels", "nope",
                 "--out", str(tmp_path / "o")]) == 2
    assert "no column 'nope'" in capsys.readouterr().err
