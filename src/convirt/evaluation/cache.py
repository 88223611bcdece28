"""Embeddings computed once per (encoder weights, images, preprocessing) and kept on disk.

A suite scores several protocols, fractions and seeds on the same frozen features; embedding a
data set is the slow part on a CPU, so features are cached. The key is a sha256 of

* the encoder's weight fingerprint (not its name: re-trained weights never hit an old entry),
* the preprocessing (size, mean, std, the projection flag),
* the manifest's sha256 and, for every image, its path, size and modification time (a replaced
  file invalidates the entry).

Entries are ``KEY.npy`` plus a small ``KEY.json`` describing them, written atomically, so an
interrupted run never leaves a half-written array that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from convirt.atomic import atomic_path, atomic_write_text
from convirt.evaluation.embed import embed_images


def default_cache_dir() -> Path:
    """``$CONVIRT_CACHE`` or ``~/.cache/convirt``, plus ``/embeddings``."""
    return Path(os.environ.get("CONVIRT_CACHE", Path.home() / ".cache" / "convirt")) / "embeddings"


def _files_digest(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}\tmissing\n".encode())
    return h.hexdigest()


class EmbeddingCache:
    """``get(encoder, paths, ...)`` returns cached features or computes and stores them.

    ``root=None`` disables caching (always computes).
    """

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root) if root is not None else None
        self.hits = self.misses = 0

    def key(self, encoder, paths: Sequence[Path], manifest_sha256: str, projected: bool = False) -> str:
        parts = [encoder.fingerprint(), f"{encoder.size}/{encoder.mean!r}/{encoder.std!r}/projected={projected}",
                 manifest_sha256, _files_digest(paths)]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()

    def get(self, encoder, paths: Sequence[Path], manifest_sha256: str, batch_size: int = 64, num_workers: int = 0,
            progress: bool = True, desc: str = "embedding images", projected: bool = False) -> np.ndarray:
        """Features (n, D) of ``paths`` in order; ``projected`` applies the model's projection head g_v."""
        key = self.key(encoder, paths, manifest_sha256, projected) if self.root else None
        if key is not None and (self.root / f"{key}.npy").is_file():
            try:
                out = np.load(self.root / f"{key}.npy", allow_pickle=False)
                if out.shape[0] == len(paths):
                    self.hits += 1
                    return out
            except (OSError, ValueError):
                pass  # unreadable entry: recompute and overwrite
        self.misses += 1
        encode = _encode_fn(encoder, projected)
        out = embed_images(encode, paths, encoder.transform(), batch_size=batch_size, num_workers=num_workers,
                           progress=progress, desc=desc)
        if key is not None:
            self.root.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.root / f"{key}.npy") as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, out, allow_pickle=False)
            atomic_write_text(self.root / f"{key}.json", json.dumps(
                {"model": encoder.name, "spec": encoder.spec, "fingerprint": encoder.fingerprint(), "n": len(paths),
                 "dim": int(out.shape[1]), "projected": projected, "manifest_sha256": manifest_sha256}, indent=1))
        return out


def _encode_fn(encoder, projected: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    module = encoder.module.eval()
    if not projected:
        return module
    if encoder.dual is None:
        raise ValueError(f"{encoder.name} has no projection head (not a convirt model)")
    head = encoder.dual.image_head.eval()
    return lambda x: head(module(x))
