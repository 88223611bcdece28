"""Reports are patient text: none of their sentences may appear in anything a run writes or prints.

The run (see conftest.bad_data_run) logs at DEBUG level with the progress bar on, over rows that
fail in every way, so every error path has had its chance to quote a report. The learned
tokenizer's vocabulary holds single words, never sentences.
"""

from __future__ import annotations

from tests.reliability.conftest import PRIVATE


def test_no_report_sentence_in_logs_outputs_or_run_files(bad_data_run):
    needles = [s.encode() for s in PRIVATE] + [b"Wilhelmina Quist", b"Okonkwo-Bassett reviewed"]
    assert all(n in (bad_data_run.root / "data" / "manifest.csv").read_bytes() for n in needles)  # the input has them
    files = [p for p in bad_data_run.out.rglob("*") if p.is_file()]
    names = {p.relative_to(bad_data_run.out).parts[0] for p in files}
    assert {"logs", "checkpoints", "model", "tokenizer", "summary.json", "config.yaml"} <= names
    assert any(p.name.startswith("events.out.tfevents") for p in files) and any(p.name == "metrics.csv" for p in files)
    leaks = [(str(p), n.decode()) for p in files for n in needles if n in p.read_bytes()]
    assert not leaks
    output = bad_data_run.output.encode()
    assert b"skipping manifest row" in output and b"DEBUG" in output  # the logs were really captured
    assert not [n.decode() for n in needles if n in output]
