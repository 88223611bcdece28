"""``convirt benchmark`` end to end on a tiny budget: table, claims, reuse of finished runs."""

import json

import pandas as pd
import pytest

from convirt.benchmark import (LOCALIZED_COLUMNS, BenchSize, check_claims, moco_queue_size, parse_methods, run_benchmark,
                               run_localized_tasks)
from convirt.errors import ConfigError
from tests.helpers import write_labelled_manifest

TINY = ["image.size=32", "text.model=scratch", "text.freeze_layers=0", "text.max_length=16",
        "text.scratch.vocab_size=100", "text.scratch.hidden=32", "text.scratch.layers=1", "text.scratch.heads=2",
        "projection.dim=16", "trainer.checkpoint_every_n_steps=2", "trainer.log_every_n_steps=1",
        "data.num_workers=0", "trainer.precision=32-true"]


def test_tiny_benchmark_writes_the_table_and_reuses_finished_runs(tmp_path):
    manifest = write_labelled_manifest(tmp_path / "d", {"train": 24, "valid": 8, "test": 16})
    size = BenchSize(0, 4, 8, 1.0, (0.5, 1.0), (0, 1))
    doc = run_benchmark(["random", "convirt", "gloria", "mocov2"], tmp_path / "out", str(manifest), size,
                        labels=["bright"], progress=False, overrides=TINY)
    table = pd.read_csv(tmp_path / "out" / "benchmark.csv", index_col="method")
    assert list(table.index) == ["random", "convirt", "gloria", "mocov2"]
    # MoCo's queue was fitted to the 24 training images (its default, 4,096, would be refused)
    assert "queue_size: 8" in (tmp_path / "out" / "runs" / "mocov2" / "config.yaml").read_text()
    reports = json.loads((tmp_path / "out" / "report_retrieval" / "results.json").read_text())["models"]
    assert reports["gloria"]["similarity"] == "both" and reports["convirt"]["similarity"] == "global"
    assert table.loc["gloria", "image→report P@10"] == pytest.approx(reports["gloria"]["P@10"])
    assert pd.isna(table.loc["random", "image→report P@10"])
    linear = json.loads((tmp_path / "out" / "linear" / "results.json").read_text())
    assert table.loc["convirt", "AUROC @50%"] == pytest.approx(linear["models"]["convirt"]["summary"]["0.5"]["macro_auroc"]["mean"])
    assert doc["pretrain"]["convirt"]["global_step"] == 4
    assert {c["claim"]: c["holds"] for c in doc["claims"]}["linear AUROC at 0.5: convirt > simclr"] is None
    again = run_benchmark(["random", "convirt", "gloria", "mocov2"], tmp_path / "out", str(manifest), size,
                          labels=["bright"], progress=False, overrides=TINY)
    assert again["pretrain"]["convirt"]["reused"] is True
    assert again["pretrain_seconds"]["convirt"] == doc["pretrain"]["convirt"]["fit_seconds"]  # not the reuse time
    # a finished run trained with other settings is neither reused nor resumed over
    with pytest.raises(ConfigError, match=r"other settings \(projection.dim\)"):
        run_benchmark(["convirt"], tmp_path / "out", str(manifest), size, labels=["bright"], progress=False,
                      overrides=[*TINY, "projection.dim=8"])


@pytest.fixture
def one_thread():
    """This process at one torch thread, like each side-by-side job on 2 cores: same arithmetic, same numbers."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_side_by_side_pretraining_gives_the_numbers_of_runs_in_turn(tmp_path, one_thread):
    manifest = write_labelled_manifest(tmp_path / "d", {"train": 24, "valid": 8, "test": 16})
    size = BenchSize(0, 4, 8, 1.0, (1.0,), (0,))
    kw = dict(data=str(manifest), size=size, labels=["bright"], progress=False, overrides=TINY)
    in_turn = run_benchmark(["random", "convirt", "simclr"], tmp_path / "in_turn", jobs=1, **kw)
    side = run_benchmark(["random", "convirt", "simclr"], tmp_path / "side", jobs=2, **kw)
    assert in_turn["parallel"] == {"processes": 1, "threads": None}
    assert side["parallel"] == {"processes": 2, "threads": 1}
    for method in ("convirt", "simclr"):
        assert side["pretrain"][method]["global_step"] == 4
        assert side["pretrain"][method]["metrics"] == in_turn["pretrain"][method]["metrics"]
    assert side["linear"] == in_turn["linear"]


def test_claims_are_judged_on_the_numbers():
    stat = lambda m: {"mean": m, "std": 0.01}  # noqa: E731
    doc = {"spec": {"fractions": [0.01, 0.1, 1.0]},
           "linear": {"convirt": {"0.01": stat(0.7), "0.1": stat(0.8)}, "simclr": {"0.01": stat(0.6)},
                      "random": {"0.01": stat(0.65), "1.0": stat(0.85)}},
           "text_to_image": {"convirt": {"P@10": 0.3}, "binary": {"P@10": 0.25}},
           "localisation": {"gloria": {"mass_inside": 0.3}, "untrained gloria": {"mass_inside": 0.15}},
           "zeroshot": {"gloria": {"macro_auroc": 0.7}, "convirt": {"macro_auroc": 0.75}},
           "report_retrieval": {"convirt": {"P@10": 0.26}, "binary": {"P@10": 0.11}},
           "localized": {"segment": {"finding": "Pneumothorax", "models": {"convirt": {"headline": 0.4},
                                                                                "random": {"headline": 0.3}}},
                         "detect": {"finding": "Pneumonia", "models": {"convirt": {"headline": 0.1},
                                                                        "random": {"headline": 0.2}}}}}
    claims = {c["claim"]: c["holds"] for c in check_claims(doc)}
    assert claims["linear AUROC at 0.01: convirt > simclr"] is True
    assert claims["linear AUROC at 0.01: simclr > random"] is False
    assert claims["linear AUROC at 0.01: convirt > mocov2"] is None
    assert claims["convirt at 0.1 of the labels >= random at 1"] is False
    assert claims["text->image P@10: convirt far above binary (>= 1.5x)"] is False
    assert claims["image->report P@10: convirt far above binary (>= 1.5x)"] is True
    assert claims["localisation: gloria's attention mass inside the finding >= 1.5x an untrained encoder's"] is True
    assert claims["zero-shot macro AUROC: gloria > convirt"] is False
    assert claims["segment Dice (Pneumothorax): convirt > random"] is True
    assert claims["detect mAP@0.5 (Pneumonia): convirt > random"] is False
    two = {c["claim"]: c["holds"] for c in check_claims({**doc, "spec": {"fractions": [0.1, 1.0]}})}
    assert two["convirt at 0.1 of the labels >= random at 1"] is False  # 0.8 < 0.85; not "convirt at 1 >= random at 1"
    one = {c["claim"] for c in check_claims({**doc, "spec": {"fractions": [1.0]}})}
    assert not any("of the labels" in c for c in one)  # one fraction: nothing to compare


def test_unknown_methods_are_refused():
    with pytest.raises(ConfigError, match="unknown method"):
        parse_methods("convirt,simclrr")


def test_localized_tasks_score_every_encoder_and_reuse_finished_ones(tmp_path):
    from convirt.data.synthetic import generate
    from convirt.evaluation.encoders import load_encoder

    generate(tmp_path / "synth", n=60, seed=0, size=32, strength=3.0, workers=1, progress=False)
    encoders = [load_encoder("random:resnet18", size=32, seed=s, name=n) for s, n in ((0, "random"), (1, "convirt"))]
    spec = BenchSize(0, 1, 8, 1.0, (1.0,), (0,), localized_epochs=1, localized_fraction=1.0)
    found = run_localized_tasks(encoders, tmp_path / "synth", tmp_path / "out", spec, 0, progress=False)
    stamps = {}
    for task, (key, _) in LOCALIZED_COLUMNS.items():
        assert set(found[task]["models"]) == {"random", "convirt"}
        for enc in encoders:
            results = tmp_path / "out" / task / enc.name / "results.json"
            run = json.loads(results.read_text())["models"][enc.name]["runs"][0]
            assert run["fraction"] == 1.0 and run["epochs"] == 1
            assert found[task]["models"][enc.name]["headline"] == run["test"][key]
            stamps[results] = results.stat().st_mtime_ns
    again = run_localized_tasks(encoders, tmp_path / "synth", tmp_path / "out", spec, 0, progress=False)
    assert again == found and all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # nothing trained twice
    other = load_encoder("random:resnet18", size=32, seed=2, name="convirt")  # new weights under the same name
    run_localized_tasks([other], tmp_path / "synth", tmp_path / "out", spec, 0, progress=False)
    assert (tmp_path / "out" / "segment" / "convirt" / "results.json").stat().st_mtime_ns != \
        stamps[tmp_path / "out" / "segment" / "convirt" / "results.json"]


def test_localized_tasks_side_by_side_give_the_numbers_of_runs_in_turn(tmp_path, one_thread):
    from convirt.data.synthetic import generate
    from convirt.evaluation.encoders import load_encoder

    generate(tmp_path / "synth", n=60, seed=0, size=32, strength=3.0, workers=1, progress=False)
    encoders = [load_encoder("random:resnet18", size=32, seed=1, name="convirt")]  # a job per task
    spec = BenchSize(0, 1, 8, 1.0, (1.0,), (0,), localized_epochs=1, localized_fraction=1.0)
    in_turn = run_localized_tasks(encoders, tmp_path / "synth", tmp_path / "a", spec, 0, progress=False, jobs=1)
    side = run_localized_tasks(encoders, tmp_path / "synth", tmp_path / "b", spec, 0, progress=False, jobs=2)
    assert side == in_turn  # each encoder travelled to its job's process whole


def test_moco_queue_fits_the_training_set():
    assert moco_queue_size(2110, 64) == 1024  # the default size's 2,110 training images: half is 1,055
    assert moco_queue_size(560, 32) == 256
    assert moco_queue_size(40, 32) == 32  # never shorter than a batch (MoCo enqueues whole batches)
    assert moco_queue_size(1_281_167, 256) == 65536  # ImageNet: MoCo v2's own queue
