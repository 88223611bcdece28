"""``logs/metrics.csv`` that survives crashes, full disks and resumes.

Lightning's CSV logger appends rows in place (a full disk or a kill leaves half a row) and deletes
the file when a run is resumed. Here the whole file is rewritten atomically at each flush, and a
resumed run keeps the rows of the run it continues, replacing those of the steps it redoes.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from convirt.atomic import atomic_write_text


class AtomicCSVLogger(CSVLogger):
    @property
    @rank_zero_experiment
    def experiment(self) -> "_AtomicWriter":
        if self._experiment is None:
            Path(self.root_dir).mkdir(parents=True, exist_ok=True)
            self._experiment = _AtomicWriter(self.log_dir)
        return self._experiment


class _AtomicWriter(ExperimentWriter):
    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        path = Path(self.metrics_file_path)
        self.rows: list[dict] = list(csv.DictReader(io.StringIO(path.read_text()))) if path.is_file() else []
        self.metrics_keys = sorted({k for row in self.rows for k in row})
        self._earlier = len(self.rows)  # rows of the run this one resumes

    def _check_log_dir_exists(self) -> None:
        pass  # the parent deletes metrics.csv here; a resumed run keeps it

    def save(self) -> None:
        if not self.metrics:
            return
        if self._earlier:  # drop what the interrupted run logged after its checkpoint: it is redone now
            first = min(int(m["step"]) for m in self.metrics)
            self.rows = [r for r in self.rows[: self._earlier] if int(float(r["step"])) < first] + self.rows[self._earlier :]
            self._earlier = 0
        self.rows.extend(self.metrics)
        self.metrics = []
        self.metrics_keys = sorted({k for row in self.rows for k in row})
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=self.metrics_keys, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.metrics_file_path, out.getvalue())
