"""WebDataset shards: the cache's samples, split once over ranks x workers, seeded, resumable, checked."""

import json
from itertools import islice

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from convirt.data import shards as shards_module
from convirt.data.cache import ImageCache, build_cache
from convirt.data.images import load_image
from convirt.data.manifest import read_manifest
from convirt.data.pairs import PairDataset, pairs_from_manifest
from convirt.data.reports import SentenceSampler
from convirt.data.shards import ShardPairStream, ShardSet, _decode, write_shards
from convirt.data.transforms import eval_transform
from convirt.errors import ConvirtError, DataError
from tests.helpers import write_pair_manifest

N_TRAIN = 24


@pytest.fixture()
def manifest(tmp_path):
    """24 training rows of 40x48 images (one multi-view, one undecodable) and 4 validation rows."""
    path = write_pair_manifest(tmp_path, n_train=N_TRAIN, n_valid=4, size=40)
    rng = np.random.default_rng(1)
    for i in range(N_TRAIN + 4):  # not square: the resize and centre crop matter
        Image.fromarray(rng.integers(0, 256, (40, 48), dtype=np.uint8)).save(tmp_path / "images" / f"{i}.png")
    (tmp_path / "images" / "7.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df.loc[4, "image"] = "images/4.png|images/25.png"
    df.to_csv(path, index=False)
    return path


def epoch_samples(folder, slot=0, n_slots=1, seed=0, epoch=0, buffer=8):
    """(epoch, id, raw) of one stream over one epoch."""
    ss = ShardSet(folder)
    skip = sum(ss.epoch_length(seed, e, slot, n_slots) for e in range(epoch))
    return list(islice(ss.stream(seed, slot, n_slots, buffer, skip=skip), ss.epoch_length(seed, epoch, slot, n_slots)))


def stored(raw):
    """{(row, view, image bytes)} of one raw sample."""
    row = int(raw["__key__"])
    return {(row, int(k[3:].split(".")[0]), _decode(v, k, 32).tobytes()) for k, v in raw.items() if k.startswith("img")}


@pytest.mark.parametrize("encoding", ["npy", "png"])
def test_one_epoch_of_shards_is_the_cache(manifest, tmp_path, encoding):
    index = write_shards(manifest, tmp_path / "shards", size=32, samples_per_shard=5, encoding=encoding, workers=2,
                         progress=False)
    assert [s["n"] for s in index["shards"]] == [5, 5, 5, 5, 4] and index["n_samples"] == N_TRAIN
    assert index["failed"] == {"8": {"0": index["failed"]["8"]["0"]}} and "corrupt" in index["failed"]["8"]["0"]
    build_cache(manifest, tmp_path / "cache", size=32, progress=False)
    cache = ImageCache(tmp_path / "cache")
    df = read_manifest(manifest)
    expected = set()
    for i in range(N_TRAIN):  # the training rows, read from the cache
        for v, path in enumerate(df["image"][i].split("|")):
            if path not in cache.failed:
                expected.add((i + 1, v, np.rint(cache.load(path) * 255).astype(np.uint8).tobytes()))
    assert list(cache.failed) == ["images/7.png"]

    samples = epoch_samples(tmp_path / "shards")
    assert {e for e, _, _ in samples} == {0} and sorted(sid for _, sid, _ in samples) == list(range(N_TRAIN))
    assert set().union(*(stored(raw) for _, _, raw in samples)) == expected
    for _, _, raw in samples:  # reports and metadata as in the manifest
        row = int(raw["__key__"])
        assert raw["txt"].decode() == df["text"][row - 1]
        assert json.loads(raw["json"])["images"] == df["image"][row - 1].split("|")


@pytest.mark.parametrize("per_shard", [3, 10])  # 8 shards >= 4 streams: shard split; 3 shards: sample split
def test_every_sample_once_per_epoch_over_two_ranks_and_two_workers(manifest, tmp_path, per_shard):
    write_shards(manifest, tmp_path / "shards", size=16, samples_per_shard=per_shard, progress=False)
    ss = ShardSet(tmp_path / "shards")
    assert ss.shard_level(4) == (per_shard == 3)
    for epoch in (0, 1):
        ids = [sid for slot in range(4) for e, sid, _ in epoch_samples(tmp_path / "shards", slot, 4, epoch=epoch)]
        assert sorted(ids) == list(range(N_TRAIN))  # all, none twice
        if per_shard == 10:  # sample-level: streams differ by at most one sample
            assert {ss.epoch_length(0, epoch, s, 4) for s in range(4)} == {6}
    if per_shard == 3:  # shard-level: each stream opens only its own shards
        opened, real = [], ShardSet.read_shard

        def counting(self, k):
            opened.append(k)
            yield from real(self, k)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(ShardSet, "read_shard", counting)
            epoch_samples(tmp_path / "shards", slot=1, n_slots=4)
        assert opened == ss.plan(0, 0, 1, 4, 8)[0].tolist() and len(opened) == 2


def test_the_seed_fixes_the_order_and_each_epoch_differs(manifest, tmp_path):
    write_shards(manifest, tmp_path / "shards", size=16, samples_per_shard=4, progress=False)
    ss = ShardSet(tmp_path / "shards")

    def order(seed, epoch, slot=0, n_slots=2):
        return ss.plan(seed, epoch, slot, n_slots, buffer=6)[1].tolist()

    assert order(0, 0) == order(0, 0) == [sid for _, sid, _ in epoch_samples(tmp_path / "shards", 0, 2, buffer=6)]
    assert order(0, 1) != order(0, 0) and order(1, 0) != order(0, 0)
    assert sorted(order(0, 0) + order(0, 0, slot=1)) == sorted(order(0, 1) + order(0, 1, slot=1)) == list(range(N_TRAIN))
    # the buffer shuffles within shards too, not only the shard order
    shards = ss.plan(0, 0, 0, 2, buffer=6)[0]
    unshuffled = np.concatenate([ss.ids_of_shard[k] for k in shards]).tolist()
    assert sorted(order(0, 0)) == sorted(unshuffled) and order(0, 0) != unshuffled
    assert ss.plan(0, 0, 0, 2, buffer=1)[1].tolist() == unshuffled


def _stream(folder, manifest, start_batch=0, rank=0, world_size=1):
    pairs = pairs_from_manifest(read_manifest(manifest), manifest.parent, range(N_TRAIN))
    template = PairDataset(pairs, eval_transform(16), SentenceSampler(), seed=5)
    return ShardPairStream(ShardSet(folder, rows={p.row for p in pairs}), template, batch_size=4, seed=5, rank=rank,
                           world_size=world_size, start_batch=start_batch, buffer=8)


def _rank_batches(stream, workers, n):
    """The batches a DataLoader with ``workers`` workers gives: round robin over them."""
    its = [stream.batches(w, workers) for w in range(workers)]
    return [next(its[b % workers]) for b in range(n)]


def _key(batch):
    return [(s["row"], s["text"], s["replaced"], s["image"].numpy().tobytes()) for s in batch]


def test_a_resumed_stream_continues_with_the_unseen_samples(manifest, tmp_path):
    write_shards(manifest, tmp_path / "shards", size=16, samples_per_shard=3, progress=False)
    full = _rank_batches(_stream(tmp_path / "shards", manifest, rank=1, world_size=2), 2, 10)  # > 3 epochs of a stream
    resumed = _rank_batches(_stream(tmp_path / "shards", manifest, start_batch=3, rank=1, world_size=2), 2, 7)
    assert [_key(b) for b in resumed] == [_key(b) for b in full[3:]]


def test_the_dataloader_interleaves_its_workers_as_simulated(manifest, tmp_path):
    write_shards(manifest, tmp_path / "shards", size=16, samples_per_shard=3, progress=False)
    stream = _stream(tmp_path / "shards", manifest, start_batch=1)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, collate_fn=lambda x: x, num_workers=2)
    got = list(islice(iter(loader), 6))
    assert [_key(b) for b in got] == [_key(b) for b in _rank_batches(stream, 2, 6)]


def test_bad_samples_are_replaced_in_their_batch_and_counted(manifest, tmp_path):
    write_shards(manifest, tmp_path / "shards", size=16, samples_per_shard=5, progress=False)
    batches = list(islice(_stream(tmp_path / "shards", manifest).batches(), N_TRAIN // 4))  # one epoch, one stream
    samples = [s for b in batches for s in b]
    assert sum(s["replaced"] for s in samples) == 1 and 8 not in {s["row"] for s in samples}
    assert {s["row"] for s in samples} == set(range(1, N_TRAIN + 1)) - {8}
    assert all(s["image"].shape == (1, 16, 16) for s in samples)


def test_missing_or_damaged_sets_name_the_file_and_the_fix(manifest, tmp_path):
    folder = tmp_path / "shards"
    write_shards(manifest, folder, size=16, samples_per_shard=10, progress=False)
    (folder / "index.json").rename(tmp_path / "index.json")
    with pytest.raises(DataError, match=r"index.json is missing.*convirt data shard"):
        ShardSet(folder)
    (tmp_path / "index.json").rename(folder / "index.json")

    data = (folder / "train-000001.tar").read_bytes()
    (folder / "train-000001.tar").write_bytes(data[:-1024])
    with pytest.raises(DataError, match=r"train-000001.tar is \d+ bytes, the index says \d+ .*convirt data shard"):
        ShardSet(folder)
    (folder / "train-000001.tar").unlink()
    with pytest.raises(DataError, match=r"shard .*train-000001.tar is missing.*convirt data shard"):
        ShardSet(folder)
    (folder / "train-000001.tar").write_bytes(data)

    flipped = bytearray(data)  # same size, one byte of the first image's pixels changed
    flipped[512 + 200] ^= 0xFF
    (folder / "train-000001.tar").write_bytes(bytes(flipped))
    with pytest.raises(ConvirtError, match=r"train-000001.tar does not match its sha256.*convirt data shard"):
        list(ShardSet(folder).read_shard(1))
    flipped = bytearray(data)  # a damaged tar header
    flipped[0:100] = b"\x00" * 50 + b"\xff" * 50
    (folder / "train-000001.tar").write_bytes(bytes(flipped))
    with pytest.raises(ConvirtError, match=r"train-000001.tar is corrupt \(ReadError: bad checksum\).*convirt data shard"):
        list(ShardSet(folder).read_shard(1))


def test_training_refuses_shards_that_lack_training_rows(manifest, tmp_path):
    from convirt.config import load_config
    from convirt.training.datamodule import open_shards
    from tests.helpers import tiny_overrides

    write_shards(manifest, tmp_path / "valid", size=16, split="valid", progress=False)
    cfg = load_config(None, tiny_overrides(manifest, tmp_path / "run") + [f"data.shards={tmp_path / 'valid'}"])
    pairs = pairs_from_manifest(read_manifest(manifest), manifest.parent, range(N_TRAIN))
    with pytest.raises(DataError, match=r"lacks 24 training row\(s\) .*\(rows 1, 2, 3, .*convirt data shard"):
        open_shards(cfg, pairs)
    valid_rows = pairs_from_manifest(read_manifest(manifest), manifest.parent, range(N_TRAIN, N_TRAIN + 4))
    assert len(open_shards(cfg, valid_rows)) == 4  # rows the set holds: accepted


def test_an_interrupted_write_leaves_no_index_and_no_partial_shard(manifest, tmp_path, monkeypatch):
    folder = tmp_path / "shards"
    write_shards(manifest, folder, size=16, samples_per_shard=10, progress=False)
    calls = []

    def dying(path, **kw):
        calls.append(path)
        if len(calls) == 15:  # in the second shard
            raise KeyboardInterrupt
        return load_image(path, **kw)

    monkeypatch.setattr(shards_module, "load_image", dying)
    with pytest.raises(KeyboardInterrupt):
        write_shards(manifest, folder, size=24, samples_per_shard=10, workers=1, progress=False)
    assert sorted(p.name for p in folder.iterdir()) == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    with pytest.raises(DataError, match="index.json is missing"):
        ShardSet(folder)


def test_the_cli_writes_shards_and_an_index(manifest, tmp_path, capsys):
    from convirt.cli.main import main

    with pytest.raises(SystemExit) as exit_:
        main(["data", "shard", "--help"])
    helped = capsys.readouterr().out
    assert exit_.value.code == 0
    for flag in ("--out", "--size", "--samples-per-shard", "--split", "--encoding", "data.shards"):
        assert flag in helped
    assert main(["data", "shard", str(manifest), "--out", str(tmp_path / "val"), "--size", "16", "--split", "valid"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 4 valid rows in 1 shard(s)" in printed
    index = json.loads((tmp_path / "val" / "index.json").read_text())
    assert index["split"] == "valid" and index["shards"][0]["rows"] == [25, 26, 27, 28]
    assert index["preprocessing"]["size"] == 16 and len(index["manifest_sha256"]) == 64
    assert main(["data", "shard", str(manifest), "--out", str(tmp_path / "t"), "--size", "8"]) == 2
    assert "size must be >= 16" in capsys.readouterr().err


@pytest.mark.slow
def test_pretraining_from_shards_without_the_image_files_resumes_where_it_stopped(tmp_path):
    import lightning as L

    from convirt.config import load_config
    from convirt.errors import ConfigError
    from convirt.training.run import pretrain
    from tests.helpers import SimulatedCrash, crash_after, tiny_overrides

    class Rows(L.Callback):
        def __init__(self):
            self.seen = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.seen.append(batch["rows"].tolist())

    manifest = write_pair_manifest(tmp_path, n_train=16, n_valid=8, size=32)
    overrides = tiny_overrides(manifest, tmp_path / "run", max_steps=4) + [f"data.shards={tmp_path / 'shards'}"]
    with pytest.raises(ConfigError, match="data.shards"):
        load_config(None, overrides)
    write_shards(manifest, tmp_path / "shards", size=32, samples_per_shard=4, progress=False)
    for i in range(16):  # a node that has the shards but not the training images
        (tmp_path / "images" / f"{i}.png").unlink()
    cfg = load_config(None, overrides)
    first, second = Rows(), Rows()
    with pytest.raises(SimulatedCrash):
        pretrain(cfg, callbacks=[first, crash_after(3)])
    (tmp_path / "run" / "checkpoints" / "step=3.ckpt").unlink(missing_ok=True)  # resume from step 2
    summary = pretrain(cfg, resume=True, callbacks=[second])
    assert summary["global_step"] == 4 and summary["replaced_samples"] == 0 and summary["train_pairs"] == 16

    pairs = pairs_from_manifest(read_manifest(manifest), manifest.parent, range(16))
    expected = ShardPairStream(ShardSet(tmp_path / "shards"), PairDataset(pairs, eval_transform(32), SentenceSampler()),
                               batch_size=4, seed=0, buffer=cfg.data.shard_shuffle_buffer).batches()
    expected = [[s["row"] for s in b] for b in islice(expected, 4)]
    assert first.seen == expected[:3] and second.seen == expected[2:]  # the resumed run took the unseen samples
    assert sorted(sum(expected, [])) == list(range(1, 17))  # 4 batches of 4 = one epoch: every row once


def test_shards_stream_from_an_object_store_url_as_from_the_folder(manifest, tmp_path):
    """fsspec's in-memory file system stands in for s3:// / gs:// (same fsspec calls, nothing on the network)."""
    import fsspec

    from convirt.config import load_config

    folder = tmp_path / "shards"
    write_shards(manifest, folder, size=32, samples_per_shard=5, progress=False)
    fs = fsspec.filesystem("memory")
    url = f"memory://bucket-{tmp_path.name}/shards"
    try:
        for f in folder.iterdir():
            fs.pipe(f"{url}/{f.name}", f.read_bytes())
        local, remote = epoch_samples(folder, epoch=1), epoch_samples(url, epoch=1)
        assert [(e, i) for e, i, _ in remote] == [(e, i) for e, i, _ in local]
        assert [stored(r) for _, _, r in remote] == [stored(r) for _, _, r in local]
        cfg = load_config("demo", [f"data.train={manifest}", f"data.shards={url}"])  # a URL passes the local check
        assert cfg.data.shards == url

        fs.pipe(f"{url}/train-000001.tar", (folder / "train-000001.tar").read_bytes()[:-512])  # a truncated upload
        with pytest.raises(DataError, match=r"memory://.*/train-000001.tar is \d+ bytes, the index says"):
            ShardSet(url)
    finally:
        fs.rm(f"bucket-{tmp_path.name}", recursive=True)
    with pytest.raises(ConvirtError, match=r"cannot be opened.*pip install"):
        ShardSet("nosuchprotocol://bucket/shards")
