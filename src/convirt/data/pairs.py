"""Image-report pairs for pretraining: the dataset, its deterministic sample stream, and batching.

Reproducibility is built into the data order rather than bolted on. Training reads an endless
stream of positions; position ``p`` is row ``perm(epoch=p // n)[p % n]``, and every random choice
for that sample (view, augmentation, sentence) is seeded from ``(seed, p)``. So the batches do not
depend on the number of workers, a resumed run continues with exactly the batches it would have
seen, and a global batch is the same whether it is computed on one device or split over many.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from convirt.data.images import load_image, to_tensor
from convirt.data.manifest import resolve_image_paths
from convirt.errors import DataError

log = logging.getLogger(__name__)


def sample_seed(seed: int, position: int) -> int:
    """A 63-bit seed for one sample, from the run seed and the sample's stream position."""
    return int(np.random.SeedSequence([seed, position]).generate_state(2, np.uint64)[0] >> np.uint64(1))


@dataclass(frozen=True)
class Pair:
    image_paths: tuple[Path, ...]
    text: str
    row: int  # 1-based data row of the manifest, the id used in logs (never the report text)


class PairDataset(Dataset):
    """Rows of a manifest -> ``{"image": (1,H,W) tensor, "text": str, "row": int, "replaced": 0|1}``.

    Indexed with ``(index, position)`` tuples from :class:`StreamBatchSampler` (or a plain index,
    then position = index). A sample that fails to load at run time is logged by row number and
    replaced by the next row, and flagged so the run can count replacements.

    Image-only methods (SimCLR, MoCo) ask for ``views=2``: ``"image2"`` is a second draw of the
    transform of the same file, from the same per-sample seed, so resuming stays exact; with
    ``text_transform=None`` the text is neither read nor required.
    """

    def __init__(self, pairs: Sequence[Pair], image_transform: Callable,
                 text_transform: Callable[[str, random.Random], str] | None, seed: int = 0, max_replacements: int = 50,
                 views: int = 1, load: Callable[[Path], np.ndarray] = load_image) -> None:
        if not pairs:
            raise DataError("no usable image-text pairs")
        if views not in (1, 2):
            raise ValueError(f"views must be 1 or 2; got {views}")
        self.pairs, self.image_transform, self.text_transform = list(pairs), image_transform, text_transform
        self.seed, self.max_replacements, self.views = seed, max_replacements, views
        self.load = load  # load_image, or a preprocessing cache (convirt.data.cache.CachedImageLoader)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, position = key if isinstance(key, tuple) else (key, key)
        for attempt in range(self.max_replacements + 1):
            pair = self.pairs[(index + attempt) % len(self.pairs)]
            try:
                sample = self._load(pair, sample_seed(self.seed, position))
            except (DataError, OSError, ValueError) as err:
                log.warning("skipping manifest row %d: %s", pair.row, type(err).__name__ + ": " + _safe_reason(err))
                continue
            sample["replaced"] = int(attempt > 0)
            return sample
        raise DataError(f"{self.max_replacements + 1} consecutive samples failed to load, starting at row {self.pairs[index].row}; "
                        "run `convirt data check` on the manifest")

    def _load(self, pair: Pair, seed: int) -> dict:
        rng = random.Random(seed)
        path = pair.image_paths[rng.randrange(len(pair.image_paths))]  # one view of a multi-view study
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            pixels = to_tensor(self.load(path))
            image = self.image_transform(pixels)
            second = self.image_transform(pixels) if self.views == 2 else None  # continues the same seeded stream
        sample = {"image": image, "row": pair.row}
        if second is not None:
            sample["image2"] = second
        if self.text_transform is not None:
            text = self.text_transform(pair.text, rng)
            if not text.strip():
                raise DataError("empty report")
            sample["text"] = text
        return sample


def _safe_reason(err: Exception) -> str:
    """The error message, cut short; data errors never carry report text by construction."""
    return str(err)[:300]


def pairs_from_manifest(df, root: Path, rows: Sequence[int] | None = None, allow_absolute: bool = False) -> list[Pair]:
    """Pairs for the given 0-based data-frame positions (all when None)."""
    positions = range(len(df)) if rows is None else rows
    images = df["image"].tolist()
    texts = df["text"].tolist() if "text" in df.columns else [""] * len(df)  # image-only methods need no reports
    return [Pair(tuple(resolve_image_paths(images[i], root, allow_absolute)), str(texts[i]), i + 1) for i in positions]


class StreamBatchSampler:
    """Endless batches of ``(index, position)`` for one rank, starting at global batch ``start_batch``.

    Global batch ``b`` covers stream positions ``[b*B*W, (b+1)*B*W)``; rank ``r`` takes the ``r``-th
    slice of ``B``. Epoch ``e`` is the permutation drawn from ``(seed, e)``.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start_batch: int = 0, shuffle: bool = True) -> None:
        self.n, self.batch_size, self.seed, self.rank, self.world_size = n, batch_size, seed, rank, world_size
        self.start_batch, self.shuffle = start_batch, shuffle
        self._epoch, self._perm = -1, np.arange(n)

    def _row(self, position: int) -> int:
        epoch, offset = divmod(position, self.n)
        if epoch != self._epoch and self.shuffle:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        self._epoch = epoch
        return int(self._perm[offset])

    def batch(self, b: int) -> list[tuple[int, int]]:
        start = (b * self.world_size + self.rank) * self.batch_size
        return [(self._row(p), p) for p in range(start, start + self.batch_size)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        b = self.start_batch
        while True:
            yield self.batch(b)
            b += 1


class FixedBatchSampler:
    """The validation batches: rows in order, split into global batches, this rank's slice of each.

    Incomplete last global batches are dropped so that every rank contrasts equal-sized batches;
    a set smaller than one global batch becomes one batch of ``n // world_size`` per rank.
    """

    def __init__(self, n: int, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        per_rank = min(batch_size, n // world_size)
        if per_rank < 2:
            raise DataError(f"validation set of {n} rows is too small for {world_size} device(s): need >= 2 per device")
        step = per_rank * world_size
        self.batches = [
            [(i, i) for i in range(start + rank * per_rank, start + (rank + 1) * per_rank)]
            for start in range(0, n - step + 1, step)
        ]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches)


class PairCollator:
    """Stacks images and tokenises the sampled sentences in the loader workers, off the training thread.

    ``tokenizer=None`` (image-only methods): no text; a second view becomes ``"images2"``.
    """

    def __init__(self, tokenizer, max_length: int) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, samples: list[dict]) -> dict:
        batch = {"images": torch.stack([s["image"] for s in samples])}
        if "image2" in samples[0]:
            batch["images2"] = torch.stack([s["image2"] for s in samples])
        if self.tokenizer is not None:
            tokens = self.tokenizer([s["text"] for s in samples], padding=True, truncation=True, max_length=self.max_length,
                                    return_tensors="pt", return_token_type_ids=False)
            batch["input_ids"], batch["attention_mask"] = tokens["input_ids"], tokens["attention_mask"]
        batch["rows"] = torch.tensor([s["row"] for s in samples])
        batch["replaced"] = torch.tensor(sum(s["replaced"] for s in samples))
        return batch
