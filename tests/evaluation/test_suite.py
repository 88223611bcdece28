"""The suite: one YAML, several protocols and models, one comparison table agreeing with each protocol's file."""

import json

import pandas as pd
import pytest
import yaml

from convirt.errors import ConfigError
from convirt.evaluation.suite import load_suite, run_suite
from tests.helpers import tiny_dual_encoder, write_labelled_manifest


def test_suite_runs_every_protocol_and_the_table_matches_their_results(tmp_path):
    write_labelled_manifest(tmp_path, {"train": 24, "valid": 8, "test": 24})
    tiny_dual_encoder(tmp_path / "model")
    (tmp_path / "prompts.json").write_text(json.dumps({"light": ["bright lungs"], "dark": ["dark lungs"], "mid": ["mid"]}))
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump({
        "data": "labelled.csv", "labels": ["bright"], "size": 32, "models": ["model", "random:resnet18"],
        "names": ["tiny convirt", "random"],
        "settings": {"fractions": [0.5, 1.0], "seeds": [0, 1], "n_boot": 20, "cache_dir": "cache"},
        "protocols": {"linear": {}, "retrieval": {"labels": ["kind"], "per_category": 3, "queries_per_category": 1,
                                                  "ks": [1, 3]},
                      "zeroshot": {"labels": ["kind"], "prompts": "prompts.json"},
                      "report-retrieval": {"ks": [1, 5]}}}))
    docs = run_suite(tmp_path / "suite.yaml", tmp_path / "out", progress=False)
    assert set(docs) == {"linear", "retrieval", "zeroshot", "report-retrieval"}
    table = pd.read_csv(tmp_path / "out" / "comparison.csv", index_col="model")
    assert list(table.index) == ["tiny convirt", "random"]
    linear = json.loads((tmp_path / "out" / "linear" / "results.json").read_text())
    for model in table.index:
        assert table.loc[model, "linear AUROC @50%"] == pytest.approx(linear["models"][model]["summary"]["0.5"]["macro_auroc"]["mean"])
    zs = json.loads((tmp_path / "out" / "zeroshot" / "results.json").read_text())
    assert table.loc["tiny convirt", "zero-shot accuracy"] == pytest.approx(zs["models"]["tiny convirt"]["accuracy"])
    assert pd.isna(table.loc["random", "zero-shot accuracy"])  # image-only: left out, not failed
    assert "| tiny convirt |" in (tmp_path / "out" / "comparison.md").read_text()


@pytest.mark.parametrize("doc, message", [
    ({"protocols": {"linaer": {}}}, "unknown protocol 'linaer'"),
    ({"protocols": {"linear": {"prompts": "x.json"}}}, r"does not take \['prompts'\]"),
    ({"protocols": {"linear": {"fractions": "all"}}}, "must be a list"),
    ({"protocol": {"linear": {}}}, "unknown key"),
    ({"models": []}, "'protocols' must map"),
])
def test_bad_suite_files_are_refused_with_the_fix(tmp_path, doc, message):
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=message):
        load_suite(path)
