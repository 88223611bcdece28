"""Any image folder with text files: the layout for data sets that have no adapter of their own.

Every image (``.png``, ``.jpg``, ``.jpeg``, ``.dcm``) under ``--root`` is paired with

* ``name.txt`` beside ``name.png`` (one report per image), or else
* ``folder.txt`` beside ``folder/`` (one report per study folder, MIMIC-style: all images in the
  folder become the study's views).

The patient is the first folder below ``--root`` (``ROOT/<patient>/<study>/<image>``), or the file
name when images lie directly in ``--root``. Images without a text file are counted and left out.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from convirt.data.adapters.base import IMAGE_SUFFIXES, Adapter, Options, Table, relative, walk_files
from convirt.errors import DataError


def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace").strip()


def load(root: Path, options: Options, out: Path) -> Table:
    images = walk_files(root, IMAGE_SUFFIXES, skip=out)
    if not images:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    studies: dict[Path, list[Path]] = {}  # report file -> its images
    dropped = {}
    for image in images:
        own, folder_report = image.with_suffix(".txt"), image.parent.with_suffix(".txt")
        report = own if own.is_file() else folder_report if image.parent != root and folder_report.is_file() else None
        if report is None:
            dropped["no text file"] = dropped.get("no text file", 0) + 1
            continue
        studies.setdefault(report, []).append(image)
    rows = []
    for report, views in studies.items():
        text = _read_text(report)
        if not text:
            dropped["empty report"] = dropped.get("empty report", 0) + 1
            continue
        rel = relative(report, root)
        patient = rel.split("/")[0] if "/" in rel else report.stem
        rows.append({"id": rel.rsplit(".", 1)[0], "image": "|".join(relative(v, root) for v in views), "text": text,
                     "patient_id": patient})
    if not rows:
        raise DataError(f"no image under {root} has a non-empty text file (name.txt beside name.png, or folder.txt "
                        f"beside folder/); left out: {dropped}")
    return Table(pd.DataFrame(rows), root, [], has_text=True, dropped=dropped)


ADAPTER = Adapter(
    name="folder", kind="image-text", load=load, options=(),
    description="generic: images with name.txt beside them, or study folders with folder.txt",
    layout="ROOT/<patient>/<study>/<image>.png + <image>.txt  (or ROOT/<patient>/<study>.txt)",
)
