"""WebDataset shards: a manifest's preprocessed images and reports in tar files, streamed in training.

``convirt data shard MANIFEST --out DIR`` writes the rows of one split into ``DIR/<split>-NNNNNN.tar``
(standard WebDataset tars, written with the ``webdataset`` library) and ``DIR/index.json``. Each
sample (key: the 9-digit manifest data row) holds

* ``img0.npy`` (``img1.npy`` ... for a multi-view study): the image exactly as the preprocessing
  cache stores it (:mod:`convirt.data.cache`: decoded, windowed, shorter side resized to ``size``,
  centre square, uint8), as a NumPy ``.npy`` file, or as a lossless 8-bit PNG with ``--encoding png``;
* ``txt``: the report (UTF-8); ``json``: the row, the image paths as written in the manifest, the
  patient id when there is one, and the reason of any view that failed to decode (no image member).

``index.json`` (format ``convirt.shards``) lists the shards with their sample counts, rows, byte
sizes and sha256, the preprocessing parameters and the manifest's sha256. Every shard is written
under a temporary name and renamed when complete, and the index is written last (the old one is
removed first): a killed ``convirt data shard`` leaves no index, which readers refuse, so a
half-written set is never read.

Reading (``data.shards`` in the training config, :class:`ShardPairStream`) is a deterministic
stream; see :meth:`ShardSet.plan` for the split and shuffle and :class:`ShardPairStream` for how
batches are formed and how a resumed run skips what it has already seen. ``data.shards`` is a local
folder or any URL fsspec opens (``s3://bucket/shards``, ``gs://...``, ``https://host/shards``, with
that protocol's fsspec package installed, e.g. ``s3fs``): every node streams the shards it is given
from the object store, checked against the index as they arrive.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import os
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info
from tqdm.auto import tqdm

from convirt.atomic import atomic_path, atomic_write_text
from convirt.data.cache import _square
from convirt.data.images import load_image
from convirt.data.manifest import VIEW_SEPARATOR, file_sha256, read_manifest, resolve_image_paths
from convirt.data.pairs import Pair, PairDataset
from convirt.errors import ConfigError, DataError, ImageDecodeError

log = logging.getLogger(__name__)

FORMAT = "convirt.shards"
VERSION = 1
ENCODINGS = ("npy", "png")
SPLITS = {"train": ("train",), "valid": ("valid", "val", "validation"), "test": ("test",)}
_REWRITE = "rewrite the shard set with `convirt data shard MANIFEST --out DIR`"


def is_url(location: str | Path) -> bool:
    """``s3://...``, ``memory://...``, ``https://...``: a location fsspec opens, not a local path."""
    return "://" in str(location)


def open_location(location: str):
    """(fsspec file system, root path inside it) of a local folder or a URL; a clear error when the
    protocol's fsspec package (s3fs, gcsfs, adlfs ...) is not installed."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(location)
    except (ImportError, ValueError) as err:
        raise ConfigError(f"data.shards {location!r} cannot be opened: {err}. Install the fsspec package of that "
                          "protocol (e.g. `pip install s3fs` for s3://, `gcsfs` for gs://) or give a local folder") from None


# --- writing ---------------------------------------------------------------------------------


def _encode(array: np.ndarray, encoding: str) -> bytes:
    buf = io.BytesIO()
    if encoding == "npy":
        np.save(buf, array, allow_pickle=False)
    else:
        from PIL import Image

        Image.fromarray(array, mode="L").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _decode(data: bytes, suffix: str, size: int) -> np.ndarray:
    """Stored bytes -> uint8 (size, size); ValueError when they are not such an image."""
    if suffix.endswith(".npy"):
        array = np.load(io.BytesIO(data), allow_pickle=False)
    else:
        from PIL import Image

        array = np.asarray(Image.open(io.BytesIO(data)))
    if array.dtype != np.uint8 or array.shape != (size, size):
        raise ValueError(f"stored image is {array.dtype} {array.shape}, expected uint8 ({size}, {size})")
    return array


def select_rows(df, split: str) -> list[int]:
    """0-based positions of the rows of ``split`` ('all', or train/valid/test by the ``split`` column).

    Without a ``split`` column every row is a training row, as in training (``data.train``)."""
    if split == "all":
        return list(range(len(df)))
    if split not in SPLITS:
        raise ConfigError(f"--split must be one of all, {', '.join(SPLITS)}; got {split!r}")
    if "split" not in df.columns:
        if split == "train":
            return list(range(len(df)))
        raise DataError(f"the manifest has no 'split' column, so it has no {split!r} rows (use --split train or all)")
    values = df["split"].astype(str).str.lower().tolist()
    return [i for i, v in enumerate(values) if v in SPLITS[split]]


def write_shards(manifest: str | Path, out: str | Path, size: int = 256, samples_per_shard: int = 1000,
                 split: str = "train", encoding: str = "npy", workers: int | None = None,
                 allow_absolute: bool = False, progress: bool = True) -> dict:
    """Write the rows of ``split`` of ``manifest`` as WebDataset shards into ``out``; returns the index."""
    if size < 16:
        raise ConfigError(f"shard image size must be >= 16 px, got {size}")
    if samples_per_shard < 1:
        raise ConfigError(f"--samples-per-shard must be >= 1, got {samples_per_shard}")
    if encoding not in ENCODINGS:
        raise ConfigError(f"--encoding must be one of {', '.join(ENCODINGS)}; got {encoding!r}")
    import webdataset as wds

    manifest, out = Path(manifest), Path(out)
    df = read_manifest(manifest)
    if "image" not in df.columns:
        raise DataError(f"manifest {manifest} has no 'image' column")
    positions = select_rows(df, split)
    if not positions:
        raise DataError(f"manifest {manifest} has no {split!r} rows")
    images = df["image"].tolist()
    texts = df["text"].tolist() if "text" in df.columns else [""] * len(df)
    patients = df["patient_id"].tolist() if "patient_id" in df.columns else None
    files: dict[int, list[Path]] = {}
    for i in positions:
        try:
            files[i] = resolve_image_paths(images[i], manifest.parent, allow_absolute)
        except DataError as err:
            raise DataError(f"manifest {manifest}, row {i + 1}: {err}") from None

    def sample(i: int) -> tuple[dict, dict[str, str]]:
        row = i + 1
        meta = {"row": row, "images": [p.strip() for p in images[i].split(VIEW_SEPARATOR)], "failed": {}}
        if patients is not None:
            meta["patient_id"] = str(patients[i])
        record = {"__key__": f"{row:09d}", "txt": str(texts[i]).encode("utf-8")}
        for v, file in enumerate(files[i]):
            try:
                record[f"img{v}.{encoding}"] = _encode(_square(load_image(file, max_side=size), size), encoding)
            except ImageDecodeError as err:
                meta["failed"][str(v)] = str(err).replace(str(file), "").lstrip(": ") or "undecodable"
        record["json"] = json.dumps(meta).encode("utf-8")
        return record, meta["failed"]

    out.mkdir(parents=True, exist_ok=True)
    (out / "index.json").unlink(missing_ok=True)  # the set is invalid until the new index is written
    name_of = f"{split}-{{:06d}}.tar".format
    shards, failed = [], {}
    chunks = [positions[s:s + samples_per_shard] for s in range(0, len(positions), samples_per_shard)]
    bar = tqdm(total=len(positions), desc="writing shards", unit="row", disable=not progress)
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:  # decoders release the GIL
        for k, chunk in enumerate(chunks):
            records = list(pool.map(sample, chunk))
            target = out / name_of(k)
            with atomic_path(target) as tmp:
                with open(tmp, "wb") as f:
                    with wds.TarWriter(f, encoder=False, mtime=0, user="convirt", group="convirt") as writer:
                        for record, bad in records:
                            writer.write(record)
                            if bad:
                                failed[str(int(record["__key__"]))] = bad
                digest, nbytes = file_sha256(tmp), tmp.stat().st_size
            shards.append({"name": target.name, "n": len(chunk), "bytes": nbytes, "sha256": digest,
                           "rows": [i + 1 for i in chunk]})
            bar.update(len(chunk))
    bar.close()
    keep = {s["name"] for s in shards}
    for stale in out.glob(f"{split}-*.tar"):  # left by an earlier, larger set of the same split
        if re.fullmatch(rf"{re.escape(split)}-\d{{6}}\.tar", stale.name) and stale.name not in keep:
            stale.unlink()
    index = {
        "format": FORMAT, "version": VERSION, "split": split, "n_samples": len(positions),
        "samples_per_shard": samples_per_shard, "manifest": manifest.name, "manifest_sha256": file_sha256(manifest),
        "preprocessing": {"size": size, "encoding": encoding, "dtype": "uint8", "decode": "convirt.data.images.load_image",
                          "resize": "shorter side to size, antialiased bilinear", "crop": "centre square"},
        "shards": shards, "failed": failed,
    }
    atomic_write_text(out / "index.json", json.dumps(index))
    return index


# --- reading ---------------------------------------------------------------------------------


class _HashingReader:
    """A file object that hashes what is read through it (the whole shard is checked at its end)."""

    def __init__(self, f) -> None:
        self.f, self.digest = f, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.digest.update(data)
        return data

    def finish(self) -> str:
        for block in iter(lambda: self.read(1 << 20), b""):
            pass
        return self.digest.hexdigest()


def buffer_shuffle(items: np.ndarray, buffer: int, rng: np.random.Generator) -> np.ndarray:
    """The order a ``buffer``-sample shuffle buffer emits ``items`` in (fill, then emit a random one
    per new item; shuffle the rest at the end). Output ``t`` is never read later than input
    ``t + buffer - 1``, so a reader holds at most ~``buffer`` samples. ``buffer=1``: unchanged."""
    if buffer <= 1 or len(items) <= 1:
        return np.asarray(items).copy()
    draws = rng.random(len(items))
    buf: list[int] = []
    out: list[int] = []
    for x, u in zip(items.tolist(), draws.tolist()):
        buf.append(x)
        if len(buf) >= buffer:
            i = int(u * len(buf))
            buf[i], buf[-1] = buf[-1], buf[i]
            out.append(buf.pop())
    rest = np.asarray(buf, dtype=np.int64)
    rng.shuffle(rest)
    return np.concatenate([np.asarray(out, dtype=np.int64), rest])


class ShardSet:
    """The read side of a shard folder: its index, checked, and the samples of each shard.

    ``rows`` restricts the set to those manifest rows (training passes the rows that survived
    ``convirt data check``); samples get ids ``0..n-1`` in shard order.
    """

    def __init__(self, folder: str | Path, rows: Iterable[int] | None = None) -> None:
        self.folder = str(folder).rstrip("/")
        self.fs, self._root = open_location(self.folder)
        index_file = self.path("index.json")
        if not self.fs.isfile(self._member("index.json")):
            raise DataError(f"{index_file} is missing: {self.folder} is not a complete shard set (an interrupted "
                            f"`convirt data shard` writes the index last); {_REWRITE}")
        try:
            with self.fs.open(self._member("index.json"), "rb") as f:
                index = json.loads(f.read().decode("utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"{index_file} is unreadable ({err}); {_REWRITE}") from None
        if index.get("format") != FORMAT or index.get("version") != VERSION:
            raise DataError(f"{index_file}: not a version-{VERSION} convirt shard index; {_REWRITE}")
        self.index = index
        self.size: int = index["preprocessing"]["size"]
        self.shards: list[dict] = index["shards"]
        self.failed: dict[str, dict[str, str]] = index["failed"]
        for shard in self.shards:  # cheap checks at start; the sha256 is checked as each shard is read
            path, member = self.path(shard["name"]), self._member(shard["name"])
            if not self.fs.isfile(member):
                raise DataError(f"shard {path} is missing (listed in {index_file}); {_REWRITE}")
            if (size := self.fs.size(member)) != shard["bytes"]:
                raise DataError(f"shard {path} is {size} bytes, the index says {shard['bytes']} "
                                f"(truncated or replaced); {_REWRITE}")
        keep = None if rows is None else set(rows)
        shard_of, member_of, row_of = [], [], []
        for k, shard in enumerate(self.shards):
            for j, row in enumerate(shard["rows"]):
                if keep is None or row in keep:
                    shard_of.append(k), member_of.append(j), row_of.append(row)
        self.shard_of = np.asarray(shard_of, dtype=np.int64)
        self.member_of = np.asarray(member_of, dtype=np.int64)
        self.row_of = np.asarray(row_of, dtype=np.int64)
        self.ids_of_shard = [np.flatnonzero(self.shard_of == k) for k in range(len(self.shards))]
        self.nonempty = np.asarray([k for k, ids in enumerate(self.ids_of_shard) if len(ids)], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.row_of)

    def path(self, name: str) -> str:
        """A member's location as the user wrote the set's (for messages)."""
        return f"{self.folder}/{name}"

    def _member(self, name: str) -> str:
        return f"{self._root}/{name}" if self._root else name

    @property
    def all_rows(self) -> set[int]:
        return {row for shard in self.shards for row in shard["rows"]}

    # -- the plan: which samples a stream reads in an epoch, in which order

    def shard_level(self, n_slots: int) -> bool:
        """Shards are split between streams when there are at least as many (non-empty) shards as
        streams; otherwise every stream reads every shard and keeps every ``n_slots``-th sample."""
        return len(self.nonempty) >= n_slots

    def plan(self, seed: int, epoch: int, slot: int, n_slots: int, buffer: int) -> tuple[np.ndarray, np.ndarray]:
        """(shards to read, in order; sample ids this stream emits, in order) for one epoch.

        Epoch ``e`` permutes the shards with ``(seed, e)``. Shard-level split: stream ``s`` of ``S``
        reads shards ``perm[s::S]`` and passes their samples through a shuffle buffer seeded with
        ``(seed, e, s)``. Sample-level split: every stream reads all shards in ``perm`` order through
        the same buffer seeded with ``(seed, e)`` and keeps samples ``s::S`` of its output. Either way
        the streams' samples of one epoch are every sample exactly once.
        """
        perm = self.nonempty[np.random.default_rng([seed, epoch]).permutation(len(self.nonempty))]
        if self.shard_level(n_slots):
            shards = perm[slot::n_slots]
            ids = np.concatenate([self.ids_of_shard[k] for k in shards])
            return shards, buffer_shuffle(ids, buffer, np.random.default_rng([seed, epoch, slot, 1]))
        ids = np.concatenate([self.ids_of_shard[k] for k in perm])
        return perm, buffer_shuffle(ids, buffer, np.random.default_rng([seed, epoch, 2]))[slot::n_slots]

    def epoch_length(self, seed: int, epoch: int, slot: int, n_slots: int) -> int:
        """How many samples stream ``slot`` emits in ``epoch`` (no shuffle computed)."""
        if not self.shard_level(n_slots):
            return len(range(slot, len(self), n_slots))
        perm = self.nonempty[np.random.default_rng([seed, epoch]).permutation(len(self.nonempty))]
        return int(sum(len(self.ids_of_shard[k]) for k in perm[slot::n_slots]))

    def stream(self, seed: int, slot: int, n_slots: int, buffer: int, skip: int = 0) -> Iterator[tuple[int, int, dict]]:
        """Endless ``(epoch, sample id, raw sample)`` of stream ``slot``, epoch after epoch, from its
        ``skip``-th sample on. Skipped samples are never decoded; whole shards they cover are not read."""
        if not len(self):
            raise DataError(f"the shard set {self.folder} holds none of the training rows; {_REWRITE}")
        epoch = 0
        while skip >= (n := self.epoch_length(seed, epoch, slot, n_slots)):
            skip, epoch = skip - n, epoch + 1
        while True:
            shards, order = self.plan(seed, epoch, slot, n_slots, buffer)
            for sid, raw in self._emit(shards, order[skip:]):
                yield epoch, sid, raw
            skip, epoch = 0, epoch + 1

    def _emit(self, shards: np.ndarray, order: np.ndarray) -> Iterator[tuple[int, dict]]:
        """Read ``shards`` in order and emit the samples ``order`` lists, holding those read early."""
        if not len(order):
            return
        order = order.tolist()
        wanted = set(order)
        needed_shards = set(self.shard_of[order].tolist())
        pending: dict[int, dict] = {}
        nxt = 0
        for k in shards.tolist():
            if k not in needed_shards:
                continue
            base = self.ids_of_shard[k]
            sid_of_member = dict(zip(self.member_of[base].tolist(), base.tolist()))
            for j, raw in self.read_shard(k):
                sid = sid_of_member.get(j)
                if sid is not None and sid in wanted:
                    pending[sid] = raw
                while nxt < len(order) and order[nxt] in pending:
                    yield order[nxt], pending.pop(order[nxt])
                    nxt += 1
        if nxt != len(order):  # cannot happen for an order drawn by plan(); a guard against silent loss
            raise RuntimeError(f"shard stream emitted {nxt} of {len(order)} planned samples")

    def read_shard(self, k: int) -> Iterator[tuple[int, dict]]:
        """``(member index, raw sample)`` of shard ``k``, checked against the index (rows, count, sha256)."""
        from webdataset.tariterators import group_by_keys, tar_file_expander

        shard = self.shards[k]
        path = self.path(shard["name"])
        try:
            f = self.fs.open(self._member(shard["name"]), "rb")
        except OSError as err:
            raise DataError(f"shard {path} cannot be read ({err.strerror or err}); {_REWRITE}") from None
        with f:
            reader = _HashingReader(f)
            j = 0
            try:
                for raw in group_by_keys(tar_file_expander([{"url": str(path), "stream": reader}])):
                    if j >= shard["n"] or raw["__key__"] != f"{shard['rows'][j]:09d}":
                        raise DataError(f"shard {path}: sample {j} is {raw['__key__']!r}, the index expects "
                                        f"row {shard['rows'][j] if j < shard['n'] else '(none)'}; {_REWRITE}")
                    yield j, raw
                    j += 1
                digest = reader.finish()
            except (tarfile.TarError, EOFError, OSError, ValueError, KeyError) as err:
                reason = err.args[0] if err.args and isinstance(err.args[0], str) else str(err)  # webdataset appends its stream
                raise DataError(f"shard {path} is corrupt ({type(err).__name__}: {reason[:200]}); {_REWRITE}") from None
        if j != shard["n"]:
            raise DataError(f"shard {path} holds {j} samples, the index says {shard['n']}; {_REWRITE}")
        if digest != shard["sha256"]:
            raise DataError(f"shard {path} does not match its sha256 in {self.path('index.json')} (corrupted); {_REWRITE}")


class _SampleImages:
    """``load(path)`` for :class:`PairDataset` over the samples of one batch: ``path`` is
    ``<key>/<view>``; the stored bytes are decoded only for the view drawn."""

    def __init__(self, raws: Sequence[dict], size: int, where: Callable[[dict], str]) -> None:
        self.raws = {raw["__key__"]: raw for raw in raws}
        self.size, self.where = size, where

    def __call__(self, path) -> np.ndarray:
        key, view = str(path).rsplit("/", 1)
        raw = self.raws[key]
        failed = json.loads(raw["json"])["failed"]
        if view in failed:
            raise ImageDecodeError(f"row {int(key)}, view {view}: {failed[view]} (recorded when the shards were written)")
        member = next((s for s in raw if s.startswith(f"img{view}.")), None)
        if member is None:
            raise ImageDecodeError(f"row {int(key)}, view {view}: no image in {self.where(raw)}")
        try:
            return _decode(raw[member], member, self.size).astype(np.float32) / 255.0
        except (ValueError, OSError) as err:
            raise ImageDecodeError(f"row {int(key)}, view {view}: unreadable image in {self.where(raw)} ({err})") from None


def _pair(raw: dict) -> Pair:
    key = raw["__key__"]
    views = json.loads(raw["json"])["images"]
    return Pair(tuple(Path(f"{key}/{v}") for v in range(len(views))), raw["txt"].decode("utf-8"), int(key))


class ShardPairStream(IterableDataset):
    """Training batches (lists of samples, for :class:`convirt.data.pairs.PairCollator`) from a shard set.

    * Streams: each loader worker of each rank is one stream, ``S = world_size x max(1, workers)``
      in all; worker ``w`` of rank ``r`` is stream ``r x W + (w + start_batch) mod W``.
    * Batches: a stream cuts its endless sample sequence into batches of ``batch_size``; the loader
      takes batches from its workers in turn, so a rank's batch ``b`` is batch ``b // W`` of its
      stream ``b mod W``. That makes the rank's batch sequence a function of (seed, world size,
      workers) only.
    * Resume: a run restarted at batch ``start_batch`` (``global_step x accumulate_grad_batches``)
      skips exactly the batches each stream already gave: training continues with the samples not
      yet seen in the current epoch, in the order an uninterrupted run would have used. That holds
      for the same world size and number of workers; with others the streams are cut differently.
    * Samples: the augmentation, sentence sampling and view of a sample come from
      :class:`PairDataset` with the seed of position ``epoch x n + id`` (``id``: the sample's place in
      the shard set), the same code as reading files or the cache. A sample that fails (an image
      that failed to decode when written, an empty report) is replaced by the next one of its batch
      and counted as replaced.
    """

    def __init__(self, shards: ShardSet, template: PairDataset, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, start_batch: int = 0, buffer: int = 1000) -> None:
        self.shards, self.template, self.batch_size, self.seed = shards, template, batch_size, seed
        self.rank, self.world_size, self.start_batch, self.buffer = rank, world_size, start_batch, buffer

    def __iter__(self) -> Iterator[list[dict]]:
        info = get_worker_info()
        return self.batches(*((info.id, info.num_workers) if info is not None else (0, 1)))

    def batches(self, worker: int = 0, num_workers: int = 1) -> Iterator[list[dict]]:
        """The batches worker ``worker`` of ``num_workers`` of this rank produces (tests call this directly)."""
        local = (self.start_batch + worker) % num_workers
        skip = (self.start_batch + worker) // num_workers * self.batch_size
        slot, n_slots = self.rank * num_workers + local, self.world_size * num_workers
        if len(self.shards) < n_slots:
            raise DataError(f"{len(self.shards)} training sample(s) in {self.shards.folder} for {n_slots} loader streams "
                            "(ranks x data.num_workers): use fewer workers or more data")
        if worker == 0 and self.rank == 0 and not self.shards.shard_level(n_slots):
            log.warning("%d shard(s) for %d loader streams (ranks x workers): every stream reads every shard and keeps "
                        "1/%d of it; write more, smaller shards (--samples-per-shard) to read each shard once",
                        len(self.shards.nonempty), n_slots, n_slots)
        stream = self.shards.stream(self.seed, slot, n_slots, self.buffer, skip=skip)
        n = len(self.shards)
        while True:
            chunk = list(islice(stream, self.batch_size))
            raws = [raw for _, _, raw in chunk]
            dataset = copy.copy(self.template)  # the same PairDataset code, over this batch's samples
            dataset.pairs = [_pair(raw) for raw in raws]
            dataset.load = _SampleImages(raws, self.shards.size, self._where)
            yield [dataset[(i, epoch * n + sid)] for i, (epoch, sid, _) in enumerate(chunk)]

    def _where(self, raw: dict) -> str:
        return f"{raw.get('__url__', self.shards.folder)} (sample {raw['__key__']})"
