from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from convirt.config import load_config
from convirt.training.run import pretrain
from tests.helpers import write_pair_manifest
from tests.reliability.common import STEPS, fast_overrides, model_weights


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    """One intra-op thread here and in the subprocesses: identical arithmetic for bit-exact weight
    comparisons, and no oversubscription of a shared 2-core machine (10-100x slower steps).
    Restored after this folder's tests."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass
class Reference:
    manifest: Path
    out: Path
    weights: dict


@pytest.fixture(scope="package")
def reference(tmp_path_factory, one_thread) -> Reference:
    """An uninterrupted run of STEPS steps, the result every interrupted-and-resumed run must equal."""
    root = tmp_path_factory.mktemp("reference")
    manifest = write_pair_manifest(root / "data")
    summary = pretrain(load_config(overrides=fast_overrides(manifest, root / "run")))
    assert summary["global_step"] == STEPS and summary["resumed_from"] is None
    return Reference(manifest, root / "run", model_weights(root / "run"))


# ---------------------------------------------------------------- a run on data with every kind of bad sample
PRIVATE = [  # distinctive report sentences that must never leave the manifest
    "Wilhelmina Quist has a zebra-striped opacity in the left apex.",
    "Dr. Okonkwo-Bassett reviewed the marmalade-coloured effusion on Tuesday.",
]


@dataclass
class BadDataRun:
    root: Path
    out: Path
    summary: dict
    output: str  # stdout + stderr of the process
    runtime_bad: dict[int, str]  # manifest row -> what is wrong, for samples that fail when loaded
    checked_bad: dict[int, str]  # manifest row -> what is wrong, for rows the pre-training check catches
    deep_png: Path
    long_report: str


def _dicom_without_pixels(path: Path) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # a structured report: no image
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "SR"
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="package")
def bad_data_run(tmp_path_factory, one_thread) -> BadDataRun:
    """`convirt pretrain` (one epoch, progress bar on, DEBUG logging) on a manifest holding every kind
    of bad sample of the reliability issue, interleaved with good rows."""
    import csv
    import io

    import numpy as np
    from PIL import Image

    from tests.helpers import SENTENCES
    from tests.reliability.common import run_faulty

    root = tmp_path_factory.mktemp("bad_data")
    images = root / "data" / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def png(name: str, size: int = 32) -> str:
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(images / name)
        return f"images/{name}"

    def report(i: int) -> str:
        return f"FINDINGS: {SENTENCES[i % len(SENTENCES)]} {PRIVATE[i % 2]}"

    png("vanishes.png")
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(images / "truncated.jpg", quality=95)
    data = (images / "truncated.jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(data[: len(data) // 2])
    _dicom_without_pixels(images / "no_pixels.dcm")
    (images / "zero_bytes.png").write_bytes(b"")
    png("one_pixel.png", size=1)
    deep = images / "sixteen_bit.png"
    Image.fromarray((np.arange(32 * 32).reshape(32, 32) * 40).astype(np.uint16)).save(deep)  # max 40920 of 65535
    long_report = "FINDINGS: " + " ".join(f"{SENTENCES[i % 6]} {PRIVATE[i % 2]}" for i in range(12000))  # ~1.3 MB

    runtime = [("images/vanishes.png", "file not found"), ("images/truncated.jpg", "truncated file"),
               ("images/no_pixels.dcm", "DICOM file has no pixel data"), ("images/zero_bytes.png", "empty file (0 bytes)"),
               ("images/one_pixel.png", "image is 1x1 px")]
    texts = [("", "empty report"), (" \t\n  ", "report is only whitespace"), (b"Lung \xff\xfe opacity.", "not valid UTF-8")]
    specials = [(image, report(i), ("runtime", why)) for i, (image, why) in enumerate(runtime)]
    specials += [(png(f"t{i}.png"), text, ("checked", why)) for i, (text, why) in enumerate(texts)]
    specials += [("images/sixteen_bit.png", report(7), None), (png("long.png"), long_report, None)]
    rows, runtime_bad, checked_bad, good = [], {}, {}, 0
    for kind in specials:  # each bad row between good ones: a replacement (the next row) is always good
        rows.append((png(f"{good}.png"), report(good), "train"))
        good += 1
        image, text, what = kind
        rows.append((image, text, "train"))
        if what:
            (runtime_bad if what[0] == "runtime" else checked_bad)[len(rows)] = what[1]
    while len(rows) - len(checked_bad) < 24:  # 24 training pairs: one epoch is 6 batches of 4
        rows.append((png(f"{good}.png"), report(good), "train"))
        good += 1
    rows += [(png(f"v{i}.png"), report(i), "valid") for i in range(8)]

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "text", "split"])
    placeholder = "@@NOT-UTF8@@"
    writer.writerows((image, placeholder if isinstance(text, bytes) else text, split) for image, text, split in rows)
    manifest = root / "data" / "manifest.csv"
    manifest.write_bytes(buffer.getvalue().encode().replace(placeholder.encode(), texts[2][0]))

    out = root / "run"
    sets = fast_overrides(manifest, out, max_steps=6) + [
        "data.skip_bad_rows=true", "data.check_images=false", "trainer.progress_bar=true"]
    done = run_faulty("none", 0, sets, "--delete", str(images / "vanishes.png"), "--log-level", "DEBUG")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    return BadDataRun(root, out, summary, done.stdout + done.stderr, runtime_bad, checked_bad, deep, long_report)
