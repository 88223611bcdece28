"""SIIM-ACR Pneumothorax as on Kaggle: ``train-rle.csv`` with columns ``ImageId`` and `` EncodedPixels``
(leading space in the name and in `` -1``; relative run-length runs over the column-major image; one
row per region), DICOMs at ``dicom-images-train/<StudyUID>/<SeriesUID>/<ImageId>.dcm`` and test images
in ``dicom-images-test/``; the stage-2 ``stage_2_train.csv`` uses standard (absolute, 1-based) runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from convirt.data.adapters.siim import decode_rle

from tests.data.adapters.files import run, write_dicom

HEIGHT, WIDTH = 24, 32  # not square, so that a transposed mask cannot pass


def encode(mask: np.ndarray, relative_starts: bool) -> str:
    """An independent encoder: runs of the column-major (Fortran-order) pixels."""
    flat = np.concatenate([[0], mask.flatten(order="F").astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(flat))
    starts, ends = edges[0::2], edges[1::2]
    out, previous_end = [], 0
    for start, end in zip(starts, ends):
        out += [int(start - previous_end) if relative_starts else int(start + 1), int(end - start)]
        previous_end = end
    return " ".join(map(str, out))


def _masks():
    a = np.zeros((HEIGHT, WIDTH), bool)
    a[2:6, 20:30] = True
    b = np.zeros((HEIGHT, WIDTH), bool)
    b[15:22, 3:5] = True
    return a, b


@pytest.mark.parametrize("relative_starts", [True, False])
def test_rle_round_trip(relative_starts):
    a, b = _masks()
    for mask in (a, b, a | b):
        assert np.array_equal(decode_rle(encode(mask, relative_starts), WIDTH, HEIGHT, relative_starts), mask)


@pytest.mark.parametrize("csv_name, relative_starts", [("train-rle.csv", True), ("stage_2_train.csv", False)])
def test_siim(tmp_path, csv_name, relative_starts):
    root = tmp_path / "siim"
    ids = [f"1.2.276.0.7230010.3.1.4.8323329.{5597 + i}.1517875188.{959090 + i}" for i in range(12)]
    a, b = _masks()
    rows = []
    for i, image_id in enumerate(ids):
        study, series = f"1.2.276.0.7230010.3.1.2.8323329.{i}", f"1.2.276.0.7230010.3.1.3.8323329.{i}"
        write_dicom(root / "dicom-images-train" / study / series / f"{image_id}.dcm", f"patient-{i // 2}",
                    rows=HEIGHT, columns=WIDTH, sop_uid=image_id, seed=i)
        if i == 0:  # two regions, two rows
            rows += [(image_id, " " + encode(a, relative_starts)), (image_id, " " + encode(b, relative_starts))]
        elif i == 1:
            rows.append((image_id, " " + encode(b, relative_starts)))
        else:
            rows.append((image_id, " -1"))
    write_dicom(root / "dicom-images-test" / "s" / "t" / "1.2.3.dcm", "test-patient")  # no label row: ignored
    columns = ["ImageId", " EncodedPixels"] if relative_starts else ["ImageId", "EncodedPixels"]
    pd.DataFrame(rows, columns=columns).to_csv(root / csv_name, index=False)

    summary, df = run("siim-pneumothorax", root, tmp_path / "out")
    df = df.set_index("id")
    assert sorted(df.index) == sorted(ids)
    assert df["Pneumothorax"].sum() == 2 and summary["notes"]["mask regions"] == 3
    union = np.asarray(Image.open(tmp_path / "out" / df.loc[ids[0], "mask"])) > 0
    assert union.shape == (HEIGHT, WIDTH) and np.array_equal(union, a | b)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / df.loc[ids[1], "mask"])) > 0, b)
    assert pd.isna(df.loc[ids[5], "mask"]) or df.loc[ids[5], "mask"] == ""
    assert df.loc[ids[3], "patient_id"] == "patient-1" and df.loc[ids[2], "split"] == df.loc[ids[3], "split"]
    assert df.loc[ids[0], "image"].startswith("data/dicom-images-train/1.2.276.0.7230010.3.1.2.8323329.0/")
