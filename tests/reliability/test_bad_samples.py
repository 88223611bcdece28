"""Bad samples at run time: every kind in the issue, in one training manifest. Each is logged with its
manifest row and replaced (or, for unusable reports, skipped by the pre-training check); the counts
end up in summary.json; nothing crashes; valid oddities (16-bit PNG, a 1.3 MB report) just train."""

from __future__ import annotations

import random
import re
import time

from convirt.data.images import load_image
from convirt.data.reports import SentenceSampler


def test_bad_samples_are_logged_by_row_replaced_and_counted(bad_data_run):
    run = bad_data_run
    assert run.summary["global_step"] == 6 and run.summary["train_pairs"] == 24  # exactly one epoch
    # one epoch draws every training row once, so each row that fails to load is replaced exactly once
    assert run.summary["replaced_samples"] == len(run.runtime_bad) == 5
    assert run.summary["skipped_bad_rows"] == len(run.checked_bad) == 3

    replaced = re.findall(r"skipping manifest row (\d+): ImageDecodeError: (.*)", run.output)
    assert sorted(int(row) for row, _ in replaced) == sorted(run.runtime_bad)  # each once, no other row
    for row, reason in replaced:
        assert run.runtime_bad[int(row)] in reason, (row, reason)
    skipped = re.search(r"manifest.csv: skipping 3 bad row\(s\): (.*)", run.output).group(1)
    for row, why in run.checked_bad.items():
        assert re.search(rf"row {row}, text: [^;]*{re.escape(why)}", skipped), (row, why, skipped)
    assert "Traceback" not in run.output


def test_valid_oddities_load_and_train(bad_data_run):
    image = load_image(bad_data_run.deep_png)  # 16-bit PNG: scaled by 65535, not clipped at 255
    assert abs(float(image.max()) - 40920 / 65535) < 1e-6
    start = time.perf_counter()
    sentence = SentenceSampler()(bad_data_run.long_report, random.Random(0))
    assert time.perf_counter() - start < 10  # sentence splitting is quadratic: the whole report took minutes
    assert sentence and len(sentence) < 200
    assert (bad_data_run.out / "model" / "model.safetensors").exists()
