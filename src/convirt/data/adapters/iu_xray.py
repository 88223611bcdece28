"""IU X-ray / Open-i (Demner-Fushman et al., JAMIA 2016): report XML plus PNG images.

Layout of the Open-i download: ``NLMCXR_reports.tgz`` holds ``ecgen-radiology/<n>.xml`` (one report
each: ``<uId id="CXR1"/>``, ``<AbstractText Label="COMPARISON|INDICATION|FINDINGS|IMPRESSION">``,
MeSH terms under ``<MeSH><major>``, and one ``<parentImage id="CXR1_1_IM-0001-3001">`` per image);
``NLMCXR_png.tgz`` unpacks to flat ``CXR1_1_IM-0001-3001.png`` files. ``--root`` holds the
extracted ``ecgen-radiology/`` or the ``.tgz`` itself (read in place), and the PNGs in ``--root``,
``NLMCXR_png/`` or ``images/`` (or ``--images DIR``).

One row per report; its images are the views (``|``-joined). The collection carries no patient
ids and each report is one study, so the report id is the patient id. Text is FINDINGS and
IMPRESSION (with headers); reports with neither are left out and counted. ``--reports-only``
writes the report corpus without images (``reports.csv``), for text-side work.
``No Finding`` is 1 when the only MeSH major term is ``normal``.
"""

from __future__ import annotations

import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from convirt.data.adapters.base import Adapter, Options, Table, progress
from convirt.data.adapters.report_text import compose
from convirt.errors import DataError

REPORTS_TGZ = "NLMCXR_reports.tgz"
REPORTS_DIR = "ecgen-radiology"
IMAGE_DIRS = ("NLMCXR_png", "images", ".")


def _xml_sources(location: Path) -> Iterator[tuple[str, bytes]]:
    """``(file name, XML bytes)`` from an ``ecgen-radiology`` folder or the tgz, in name order."""
    if location.is_dir():
        folder = location / REPORTS_DIR if (location / REPORTS_DIR).is_dir() else location
        for path in sorted(folder.glob("*.xml")):
            yield path.name, path.read_bytes()
        return
    try:
        with tarfile.open(location) as tar:
            members = sorted((m for m in tar if m.isfile() and m.name.endswith(".xml")), key=lambda m: m.name)
            for member in members:
                yield Path(member.name).name, tar.extractfile(member).read()
    except (tarfile.TarError, OSError) as err:
        raise DataError(f"cannot read {location} as a tar archive: {err}") from None


def _reports_location(root: Path, options: Options) -> Path:
    for candidate in ([options.reports] if options.reports else []) + [root / REPORTS_DIR, root / REPORTS_TGZ, root]:
        if candidate and ((candidate.is_dir() and (any(candidate.glob("*.xml")) or (candidate / REPORTS_DIR).is_dir()))
                          or candidate.is_file()):
            return candidate
    raise DataError(f"expected IU X-ray reports under {root}: {REPORTS_DIR}/*.xml or {REPORTS_TGZ} "
                    "(download NLMCXR_reports.tgz from https://openi.nlm.nih.gov/faq#collection), or pass --reports PATH")


def parse_report(name: str, data: bytes) -> dict:
    """One XML report -> id, sections, MeSH major terms and image ids (no text leaves in errors)."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as err:
        raise DataError(f"{name}: not well-formed XML ({err})") from None
    uid = root.find("uId")
    sections = {(e.get("Label") or "").upper(): " ".join((e.text or "").split()) for e in root.iter("AbstractText")}
    return {
        "id": uid.get("id") if uid is not None and uid.get("id") else Path(name).stem,
        "file": name,
        "findings": sections.get("FINDINGS", ""), "impression": sections.get("IMPRESSION", ""),
        "mesh": [(m.text or "").strip() for m in root.iter("major") if (m.text or "").strip()],
        "images": [p.get("id") for p in root.iter("parentImage") if p.get("id")],
    }


def _image_folder(root: Path, options: Options) -> Path | None:
    candidates = [options.images] if options.images else [root / d for d in IMAGE_DIRS]
    for folder in candidates:
        if folder.is_dir() and any(folder.glob("*.png")):
            return folder
    if options.images:
        raise DataError(f"--images {options.images}: no PNG files there (expected CXR1_1_IM-0001-3001.png, ...)")
    return None


def load(root: Path, options: Options, out: Path) -> Table:
    location = _reports_location(root, options)
    reports = [parse_report(name, data) for name, data in progress(_xml_sources(location), "reading reports", options, unit="xml")]
    if not reports:
        raise DataError(f"no XML reports found in {location}")
    images = None if options.reports_only else _image_folder(root, options)
    if images is None and not options.reports_only:
        n_images = sum(len(r["images"]) for r in reports)
        raise DataError(f"no PNG images found for the {len(reports)} IU X-ray reports ({n_images} image ids) in "
                        f"{', '.join(str(root / d) for d in IMAGE_DIRS)}: download NLMCXR_png.tgz from "
                        "https://openi.nlm.nih.gov/faq#collection and extract it there, pass --images DIR, "
                        "or use --reports-only to prepare the reports alone (reports.csv)")
    rows, dropped = [], {}
    for r in reports:
        text = compose(r["findings"], r["impression"])
        if not text:
            dropped["empty report"] = dropped.get("empty report", 0) + 1
            continue
        if not r["images"] and not options.reports_only:
            dropped["no images listed"] = dropped.get("no images listed", 0) + 1
            continue
        rows.append({"id": r["id"], "patient_id": r["id"], "text": text,
                     **({} if options.reports_only else {"image": "|".join(f"{i}.png" for i in r["images"])}),
                     "No Finding": float([m.lower() for m in r["mesh"]] == ["normal"]),
                     "mesh": "; ".join(r["mesh"]), "image_ids": "|".join(r["images"]), "xml": r["file"]})
    notes = {"reports": len(reports), "with FINDINGS": sum(bool(r["findings"]) for r in reports),
             "with IMPRESSION": sum(bool(r["impression"]) for r in reports)}
    return Table(pd.DataFrame(rows), images or root, ["No Finding"], has_text=True, stratify="No Finding",
                 dropped=dropped, notes=notes, reports_only=options.reports_only)


ADAPTER = Adapter(
    name="iu-xray", kind="image-text", load=load, options=("reports", "images", "reports_only"),
    description="IU X-ray / Open-i: report XML (FINDINGS, IMPRESSION, MeSH) with PNG images, or reports only",
    layout="ecgen-radiology/*.xml or NLMCXR_reports.tgz; NLMCXR_png/*.png (or --images DIR)",
)
