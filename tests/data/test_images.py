from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from convirt.data.images import load_image, to_tensor
from convirt.errors import ImageDecodeError


def write_dicom(path: Path, pixels: np.ndarray | None, photometric: str = "MONOCHROME2", **elements) -> Path:
    """A minimal uncompressed DICOM file; ``pixels`` (H,W) or (F,H,W) uint16/int16, or None for no pixel data."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "CR"
    if pixels is not None:
        if pixels.ndim == 3:
            ds.NumberOfFrames = pixels.shape[0]
        ds.Rows, ds.Columns = pixels.shape[-2:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
        ds.PixelData = pixels.tobytes()
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_16bit_png_keeps_precision(tmp_path):
    gradient = np.empty((16, 256), dtype=np.uint16)
    gradient[:8] = np.linspace(0, 65535, 256).round()  # the full range
    gradient[8:] = 30000 + 3 * np.arange(256)  # levels 3/65535 apart: one 8-bit level holds ~85 of them
    Image.fromarray(gradient).save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    assert out.dtype == np.float32 and out.shape == (16, 256)
    np.testing.assert_allclose(out, gradient / 65535.0, atol=1e-4)
    assert len(np.unique(out[8])) == 256
    np.testing.assert_allclose(np.diff(out[8]), 3 / 65535, rtol=1e-2)


def test_8bit_png_and_rgb_to_luma(tmp_path):
    gray = np.arange(0, 256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(gray).save(tmp_path / "g.png")
    np.testing.assert_allclose(load_image(tmp_path / "g.png"), gray / 255.0, atol=1e-6)
    rgba = np.zeros((10, 12, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 200, 100, 50, 7
    Image.fromarray(rgba, "RGBA").save(tmp_path / "c.png")
    luma = (200 * 299 + 100 * 587 + 50 * 114) / 1000  # ITU-R 601, alpha ignored
    np.testing.assert_allclose(load_image(tmp_path / "c.png"), np.full((10, 12), luma / 255), atol=1 / 255)


def test_jpeg_and_max_side_reduction(tmp_path):
    y, x = np.mgrid[0:256, 0:320]
    smooth = ((x + y) * 255 / (256 + 320)).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "s.jpg", quality=95)
    full = load_image(tmp_path / "s.jpg")
    assert full.shape == (256, 320)
    np.testing.assert_allclose(full, smooth / 255.0, atol=3 / 255)  # JPEG is lossy
    small = load_image(tmp_path / "s.jpg", max_side=64)  # decoder scale 1/4: both sides stay >= 64
    assert small.shape == (64, 80)
    np.testing.assert_allclose(small, full.reshape(64, 4, 80, 4).mean(axis=(1, 3)), atol=3 / 255)
    Image.fromarray(smooth).save(tmp_path / "s.png")
    np.testing.assert_allclose(load_image(tmp_path / "s.png", max_side=100), smooth.reshape(128, 2, 160, 2).mean(axis=(1, 3)) / 255,
                               atol=1e-5)


def test_to_tensor_shares_memory():
    array = np.random.default_rng(0).random((5, 7), dtype=np.float32)
    tensor = to_tensor(array)
    assert tensor.shape == (1, 5, 7) and tensor.dtype.is_floating_point
    array[0, 0] = 42.0
    assert tensor[0, 0, 0].item() == 42.0


def test_dicom_rescale_and_window(tmp_path):
    stored = np.array([[0, 100, 200, 300], [400, 500, 600, 700], [800, 900, 1000, 1100], [1200, 1300, 1400, 1500]], np.uint16)
    stored = np.kron(stored, np.ones((2, 2), np.uint16))  # 8x8, the minimum side
    # modality LUT: value = 2 * stored - 1000; window centre 500, width 1001 (LINEAR, PS3.3 C.11.2.1.2.1)
    path = write_dicom(tmp_path / "w.dcm", stored, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=500, WindowWidth=1001)
    out = load_image(path)
    value = 2.0 * stored - 1000
    lo_edge, hi_edge = 500 - 0.5 - 1000 / 2, 500 - 0.5 + 1000 / 2
    windowed = np.clip((value - (500 - 0.5)) / 1000 + 0.5, 0, 1)
    windowed[value <= lo_edge], windowed[value > hi_edge] = 0, 1
    np.testing.assert_allclose(out, windowed, atol=1e-6)
    # stored 100 -> value -800: below the window; stored 800 -> 600: inside, (600 - 499.5) / 1000 + 0.5
    assert out[0, 2] == 0.0 and out[4, 0] == pytest.approx(0.6005, abs=1e-6) and out[6, 6] == 1.0


def test_dicom_without_window_is_min_max_scaled(tmp_path):
    stored = np.arange(64, dtype=np.int16).reshape(8, 8) * 10 - 200
    out = load_image(write_dicom(tmp_path / "a.dcm", stored, RescaleSlope=1, RescaleIntercept=50))
    np.testing.assert_allclose(out, (stored - stored.min()) / (stored.max() - stored.min()), atol=1e-6)


def test_dicom_monochrome1_inverted_and_detected_without_extension(tmp_path):
    stored = np.arange(64, dtype=np.uint16).reshape(8, 8) * 50
    path = write_dicom(tmp_path / "image_without_suffix", stored, photometric="MONOCHROME1")
    out = load_image(path)  # recognised by its 'DICM' preamble
    np.testing.assert_allclose(out, 1 - stored / stored.max(), atol=1e-6)
    assert out[0, 0] == 1.0 and out[-1, -1] == 0.0


def test_dicom_multiframe_gives_first_frame(tmp_path):
    frames = np.stack([np.arange(64, dtype=np.uint16).reshape(8, 8), np.full((8, 8), 7, np.uint16)])
    out = load_image(write_dicom(tmp_path / "m.dcm", frames))
    np.testing.assert_allclose(out, frames[0] / 63.0, atol=1e-6)


def test_dicom_without_pixel_data_truncated_or_fake(tmp_path):
    with pytest.raises(ImageDecodeError, match="DICOM file has no pixel data"):
        load_image(write_dicom(tmp_path / "sr.dcm", None))
    data = write_dicom(tmp_path / "full.dcm", np.zeros((32, 32), np.uint16)).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[:-500])
    with pytest.raises(ImageDecodeError, match="cannot decode DICOM pixel data"):
        load_image(tmp_path / "cut.dcm")
    (tmp_path / "fake.dcm").write_text("a text file with a DICOM name")
    with pytest.raises(ImageDecodeError, match="not a DICOM file"):
        load_image(tmp_path / "fake.dcm")


@pytest.mark.parametrize("case, match", [
    ("missing", "file not found"),
    ("empty", r"empty file \(0 bytes\)"),
    ("truncated_jpeg", "truncated"),
    ("tiny", "1x1 px, below the minimum side of 8"),
    ("text", "unsupported or corrupt image"),
    ("folder", "is a folder"),
])
def test_decode_failures_name_file_and_reason(tmp_path, case, match):
    path = tmp_path / f"{case}.jpg"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "truncated_jpeg":
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:400])
    elif case == "tiny":
        Image.new("L", (1, 1)).save(path)
    elif case == "text":
        path.write_text("not an image at all")
    elif case == "folder":
        path.mkdir()
    with pytest.raises(ImageDecodeError, match=match) as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_min_side_is_configurable(tmp_path):
    Image.new("L", (20, 12)).save(tmp_path / "s.png")
    assert load_image(tmp_path / "s.png").shape == (12, 20)
    with pytest.raises(ImageDecodeError, match="20x12 px, below the minimum side of 16"):
        load_image(tmp_path / "s.png", min_side=16)
