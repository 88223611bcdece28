"""Image files (PNG, JPEG, DICOM) -> float32 grayscale arrays in [0, 1].

One loader for every format so that training, evaluation and ``convirt data check`` agree on
what a readable image is. Failures raise :class:`ImageDecodeError` naming the file and the cause.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from convirt.errors import ImageDecodeError

DICOM_SUFFIXES = (".dcm", ".dicom")
MIN_SIDE = 8  # smaller images are placeholders or corrupt exports, not radiographs


def load_image(path: str | Path, max_side: int | None = None, min_side: int = MIN_SIDE) -> np.ndarray:
    """Decode ``path`` into an ``(H, W)`` float32 array in [0, 1].

    PNG/JPEG are scaled by their bit depth (255 or 65535), colour is converted to luma. DICOM goes
    through the modality LUT (rescale), the VOI LUT or window when present, then a min-max scaling;
    MONOCHROME1 is inverted so that bright always means dense; multi-frame files give frame 0.

    ``max_side`` is the largest side the caller will resize to: the image may then be decoded at a
    reduced scale (JPEG: in the decoder; others: integer box averaging) while both sides stay
    >= ``max_side``, so no detail the caller keeps is lost. Images with a side below ``min_side``
    are refused.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageDecodeError(f"{path}: {'is a folder, not a file' if path.is_dir() else 'file not found'}")
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError as err:
        raise ImageDecodeError(f"{path}: cannot read file ({err.strerror})") from err
    if not head:
        raise ImageDecodeError(f"{path}: empty file (0 bytes)")
    if path.suffix.lower() in DICOM_SUFFIXES or head[128:132] == b"DICM":
        array = _decode_dicom(path, preamble=head[128:132] == b"DICM")
    else:
        array = _decode_raster(path, max_side, min_side)
    h, w = array.shape
    if min(h, w) < min_side:
        raise ImageDecodeError(f"{path}: image is {w}x{h} px, below the minimum side of {min_side} px")
    if max_side and min(h, w) >= 2 * max_side:
        array = _box_reduce(array, min(h, w) // max_side)
    return array


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """``(H, W)`` array -> ``(1, H, W)`` float32 tensor, sharing memory when already float32."""
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).unsqueeze(0)


def _decode_raster(path: Path, max_side: int | None, min_side: int) -> np.ndarray:
    try:
        with Image.open(path) as img:
            if img.format == "JPEG":  # decode straight to luma, at 1/2..1/8 scale when max_side allows
                img.draft("L", (max(max_side, min_side),) * 2 if max_side else None)
            img.load()
            return _raster_to_float(img, path)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{path}: unsupported or corrupt image (not a PNG, JPEG or DICOM file)") from None
    except Image.DecompressionBombError as err:
        raise ImageDecodeError(f"{path}: image too large to decode safely ({err})") from None
    except (OSError, ValueError, SyntaxError) as err:
        reason = "truncated file" if "truncated" in str(err).lower() else "corrupt file"
        raise ImageDecodeError(f"{path}: {reason} ({err})") from None


def _raster_to_float(img: Image.Image, path: Path) -> np.ndarray:
    mode = img.mode
    if mode.startswith("I;16"):
        return np.divide(np.asarray(img), 65535.0, dtype=np.float32)
    if mode == "I":  # 16-bit data in a 32-bit container (some PNG/TIFF readers)
        raw = np.asarray(img)
        if raw.min() < 0 or raw.max() > 65535:
            raise ImageDecodeError(f"{path}: unsupported 32-bit integer pixel values")
        return np.divide(raw, 65535.0, dtype=np.float32)
    if mode == "F":
        raise ImageDecodeError(f"{path}: unsupported floating-point image (mode F); convert it to 16-bit PNG")
    if mode != "L":
        img = img.convert("L")  # RGB/RGBA/P/CMYK -> ITU-R 601 luma; alpha is dropped
    return np.divide(np.asarray(img), 255.0, dtype=np.float32)


def _decode_dicom(path: Path, preamble: bool) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array

    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as err:  # pydicom raises many types on malformed files
        raise ImageDecodeError(f"{path}: not a readable DICOM file ({type(err).__name__}: {err})") from None
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if not preamble:
            raise ImageDecodeError(f"{path}: not a DICOM file (no 'DICM' preamble, no pixel data)")
        raise ImageDecodeError(f"{path}: DICOM file has no pixel data (a report or other non-image object?)")
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        array = pixel_array(ds, index=0 if frames > 1 else None)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
        if array.ndim == 3:  # colour (pydicom returns RGB): luma, scaled by the stored bit depth
            luma = array[..., 0] * 0.299 + array[..., 1] * 0.587 + array[..., 2] * 0.114
            return np.divide(luma, 2 ** int(ds.get("BitsStored", 8)) - 1, dtype=np.float32).clip(0, 1)
        array = apply_voi_lut(apply_modality_lut(array, ds), ds)
    except ImageDecodeError:
        raise
    except Exception as err:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        hint = f" (compressed as {syntax.name}: install pylibjpeg or gdcm)" if syntax and syntax.is_compressed else ""
        raise ImageDecodeError(f"{path}: cannot decode DICOM pixel data{hint}: {err}") from None
    array = array.astype(np.float32, copy=False)
    lo, hi = float(array.min()), float(array.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ImageDecodeError(f"{path}: DICOM pixel data contains NaN or infinite values")
    array -= lo
    if hi > lo:
        array /= hi - lo
    if photometric == "MONOCHROME1":  # low values are bright: invert so that dense is bright
        np.subtract(1.0, array, out=array)
    return array


def _box_reduce(array: np.ndarray, factor: int) -> np.ndarray:
    """Average non-overlapping ``factor x factor`` blocks (edges that do not fill a block are cut)."""
    h, w = (array.shape[0] // factor) * factor, (array.shape[1] // factor) * factor
    return array[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3), dtype=np.float32)
