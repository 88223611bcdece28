"""A preprocessing cache: every image of a manifest decoded, windowed and resized once, as uint8.

Decoding a JPEG costs ~1–2 ms and a DICOM (VOI LUT, 16 bit) far more, on every step of every
epoch; the training transform then throws most of the pixels away. The cache stores each image
once as ``size × size`` uint8 (``images.npy``, a plain NumPy file read with ``mmap_mode="r"``, so
every loader worker shares the page cache and opening it costs nothing), with ``index.json``
mapping the manifest's image paths to rows.

What is stored, and what that changes:

* the image after :func:`convirt.data.images.load_image` (DICOM windowing, MONOCHROME1
  inversion, bit-depth scaling), its shorter side resized to ``size`` (antialiased) and the
  centre ``size × size`` square cut out — the same geometry as the evaluation transform. Training
  crops are then drawn from that square: on near-square radiographs that loses only the edges.
  Choose ``size`` at least the training resolution (e.g. 256 for 224-px training).
* uint8 quantisation (256 levels): after normalisation the model input differs from the float
  decode by at most 1/510 of the intensity range.

An image that cannot be decoded is not cached: it is listed in ``index.json`` under ``failed``
with its reason, and reading it raises the same :class:`ImageDecodeError` the file would, so the
run-time replacement of bad samples works unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import v2
from tqdm.auto import tqdm

from convirt.data.images import load_image
from convirt.data.manifest import VIEW_SEPARATOR, read_manifest, resolve_image_paths
from convirt.errors import ConfigError, DataError, ImageDecodeError

FORMAT = "convirt.image_cache"
VERSION = 1


def _square(array: np.ndarray, size: int) -> np.ndarray:
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
    out = v2.functional.center_crop(v2.functional.resize(tensor, size, antialias=True), [size, size])[0]
    return np.clip(np.rint(out.numpy() * 255.0), 0, 255).astype(np.uint8)


def manifest_image_paths(manifest: Path, allow_absolute: bool = False) -> list[str]:
    """Every distinct image path of a manifest (views split), in first-seen order, as written in it."""
    df = read_manifest(manifest)
    if "image" not in df.columns:
        raise DataError(f"manifest {manifest} has no 'image' column")
    seen: dict[str, None] = {}
    for row, entry in enumerate(df["image"], start=1):
        try:
            resolve_image_paths(entry, manifest.parent, allow_absolute)
        except DataError as err:
            raise DataError(f"manifest {manifest}, row {row}: {err}") from None
        for part in entry.split(VIEW_SEPARATOR):
            seen.setdefault(os.path.normpath(part.strip()), None)
    return list(seen)


def build_cache(manifest: str | Path, out: str | Path, size: int = 256, workers: int | None = None,
                allow_absolute: bool = False, progress: bool = True) -> dict:
    """Decode every image of ``manifest`` into ``out`` (``images.npy`` + ``index.json``); returns the index.

    The folder is written under a temporary name and renamed at the end: an interrupted build
    never leaves a cache that looks complete.
    """
    if size < 16:
        raise ConfigError(f"cache size must be >= 16 px, got {size}")
    manifest, out = Path(manifest), Path(out)
    paths = manifest_image_paths(manifest, allow_absolute)
    if not paths:
        raise DataError(f"manifest {manifest} lists no images")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(len(paths), size, size))
        failed: dict[str, str] = {}

        def work(i: int) -> None:
            file = Path(paths[i]) if os.path.isabs(paths[i]) else manifest.parent / paths[i]
            try:
                images[i] = _square(load_image(file, max_side=size), size)
            except ImageDecodeError as err:
                failed[paths[i]] = str(err).replace(str(file), "").lstrip(": ") or "undecodable"

        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:  # decoders release the GIL
            list(tqdm(pool.map(work, range(len(paths))), total=len(paths), desc="caching images", disable=not progress))
        images.flush()
        del images
        index = {"format": FORMAT, "version": VERSION, "size": size, "manifest": manifest.name,
                 "manifest_mtime_ns": manifest.stat().st_mtime_ns, "n_images": len(paths),
                 "paths": paths, "failed": failed}
        (tmp / "index.json").write_text(json.dumps(index))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return index


class ImageCache:
    """Read side: ``cache.load(path_as_in_manifest) -> float32 (size, size) in [0, 1]``.

    The array is memory-mapped lazily (per process: DataLoader workers each open their own map).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        try:
            index = json.loads((self.folder / "index.json").read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise DataError(f"{self.folder} is not an image cache (index.json unreadable: {err}); "
                            "build one with `convirt data cache MANIFEST --out DIR`") from None
        if index.get("format") != FORMAT or index.get("version") != VERSION:
            raise DataError(f"{self.folder}: not a version-{VERSION} convirt image cache; rebuild it")
        self.size: int = index["size"]
        self.rows = {p: i for i, p in enumerate(index["paths"])}
        self.failed: dict[str, str] = index["failed"]
        self._array: np.ndarray | None = None

    def __contains__(self, path: str) -> bool:
        return os.path.normpath(path) in self.rows

    def load(self, path: str) -> np.ndarray:
        key = os.path.normpath(path)
        if key in self.failed:
            raise ImageDecodeError(f"{path}: {self.failed[key]} (recorded when the cache was built)")
        if key not in self.rows:
            raise ImageDecodeError(f"{path}: not in the image cache {self.folder} (rebuild it for this manifest)")
        if self._array is None:
            self._array = np.load(self.folder / "images.npy", mmap_mode="r")
        return self._array[self.rows[key]].astype(np.float32) / 255.0

    def __getstate__(self) -> dict:  # workers re-open the map instead of pickling it
        return {**self.__dict__, "_array": None}


class CachedImageLoader:
    """``load(path) -> array`` for :class:`convirt.data.pairs.PairDataset`: the cache's copy of an image
    under ``root`` (the manifest's folder), the file itself for images the cache does not hold (e.g.
    a validation manifest elsewhere). Picklable, so loader workers get it."""

    def __init__(self, cache: ImageCache, root: str | Path) -> None:
        self.cache, self.root = cache, Path(root)

    def __call__(self, path: str | Path) -> np.ndarray:
        rel = os.path.relpath(path, self.root)
        return self.cache.load(rel) if rel in self.cache else load_image(path)
