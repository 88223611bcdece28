"""ROCO, Radiology Objects in COntext (Pelka et al., LABELS 2018): PubMed Central figures with captions.

Layout of the ``razorx89/roco-dataset`` repository after ``scripts/fetch.py`` (``--root``):
``data/{train,validation,test}/radiology/`` with ``captions.txt`` (``ROCO_00020<TAB> caption``),
``dlinks.txt`` (``ROCO_00020<TAB>wget -r ftp://.../PMC3970251.tar.gz -P /path/to/Dir<TAB>figure.jpg``)
and ``images/PMC3970251_figure.jpg`` (fetch.py names each image ``<PMC id>_<figure name>``). Later
revisions of the repository renamed some files (``dlinks_tp_val_revised.txt``); any
``captions*.txt`` / ``dlinks*.txt`` is accepted when the plain name is absent.

Only the radiology subset is read. Figures of one article often show one patient, so the article
(PMC id) is the group kept within one split; the official train/validation/test split is kept.
Images that fetch.py could not download are counted and left out.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from convirt.data.adapters.base import Adapter, Options, Table
from convirt.data.reports import normalize_report
from convirt.errors import DataError

SPLIT_FOLDERS = {"train": "train", "validation": "valid", "test": "test"}
_PMC = re.compile(r"(PMC\d+)\.tar\.gz")


def _one(folder: Path, stem: str) -> Path | None:
    plain = folder / f"{stem}.txt"
    if plain.is_file():
        return plain
    found = sorted(folder.glob(f"{stem}*.txt"))
    return found[0] if found else None


def _tab_file(path: Path) -> list[list[str]]:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [line.split("\t") for line in lines if line.strip()]


def load(root: Path, options: Options, out: Path) -> Table:
    base = root / "data" if (root / "data").is_dir() else root
    rows, dropped = [], {}
    for folder_name, split in SPLIT_FOLDERS.items():
        folder = base / folder_name / "radiology"
        if not folder.is_dir():
            continue
        captions_path, links_path = _one(folder, "captions"), _one(folder, "dlinks")
        if captions_path is None or links_path is None:
            raise DataError(f"expected captions.txt and dlinks.txt in {folder} (clone github.com/razorx89/roco-dataset)")
        captions = {parts[0].strip(): normalize_report(" ".join(parts[1:])) for parts in _tab_file(captions_path)}
        for parts in _tab_file(links_path):
            roco_id, figure = parts[0].strip(), parts[-1].strip()
            pmc = _PMC.search(parts[1] if len(parts) > 2 else "")
            if pmc is None:
                dropped["no PMC archive in dlinks"] = dropped.get("no PMC archive in dlinks", 0) + 1
                continue
            caption = captions.get(roco_id, "")
            if not caption:
                dropped["empty report"] = dropped.get("empty report", 0) + 1
                continue
            image = (folder / "images" / f"{pmc.group(1)}_{figure}").relative_to(base).as_posix()
            rows.append({"id": roco_id, "image": image, "text": caption, "patient_id": pmc.group(1), "split": split})
    if not rows:
        raise DataError(f"expected ROCO's data/{{train,validation,test}}/radiology/ (captions.txt, dlinks.txt, images/) "
                        f"under {root}: clone https://github.com/razorx89/roco-dataset and run scripts/fetch.py")
    return Table(pd.DataFrame(rows), base, [], has_text=True, dropped=dropped,
                 notes={"group": "PubMed Central article (PMC id)"})


ADAPTER = Adapter(
    name="roco", kind="image-text", load=load, options=(),
    description="ROCO radiology figures with captions (PubMed Central), grouped by article",
    layout="data/{train,validation,test}/radiology/{captions.txt,dlinks.txt,images/PMC*_*.jpg}",
)
