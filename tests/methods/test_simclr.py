"""SimCLR: NT-Xent against an explicit loop, facts worked out by hand, the two-view data path, a
short run whose loss falls and whose run folder the evaluation code loads as an image encoder."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from convirt.config import load_config
from convirt.errors import ConfigError, ConvirtError
from convirt.losses.ssl import NTXentLoss, nt_xent
from convirt.training.run import pretrain
from tests.helpers import tiny_overrides, write_pair_manifest

# Two augmented views of one random-noise image at 32 px share almost nothing a network can find in
# a few dozen steps (measured: the loss only falls to chance, ln(2N - 1)). Images that differ in
# their mean gray level, with brightness/contrast jitter off, stay recognisable under crop, flip,
# affine and blur: a short run then learns to tell them apart (loss well below chance).
LEARNABLE = ["augment.brightness=[1,1]", "augment.contrast=[1,1]", "image.model=test_resnet", "ssl.proj_dim=32",
             "trainer.checkpoint_every_n_steps=1000", "trainer.val_every_n_steps=1000"]


def write_gray_levels(root, n_train, n_valid=4, noise=0.05, seed=0):
    """write_pair_manifest, with training image i at gray level 0.1 + 0.8 i / (n_train - 1) plus noise."""
    from PIL import Image

    manifest = write_pair_manifest(root, n_train=n_train, n_valid=n_valid)
    rng = np.random.default_rng(seed)
    for i, level in enumerate(np.resize(np.linspace(0.1, 0.9, n_train), n_train + n_valid)):
        pixels = np.clip(level + noise * rng.standard_normal((32, 32)), 0, 1)
        Image.fromarray((pixels * 255).astype(np.uint8)).save(root / "images" / f"{i}.png")
    return manifest


def nt_xent_loop(z1, z2, tau):
    """SimCLR Eq. 1 anchor by anchor: -log softmax of the positive among the 2N - 1 other views."""
    z = [F.normalize(v, dim=0) for v in torch.cat([z1, z2]).double()]
    n2, total = len(z), 0.0
    for a in range(n2):
        positive = (a + n2 // 2) % n2
        denominator = sum(math.exp(float(z[a] @ z[b]) / tau) for b in range(n2) if b != a)
        total += -math.log(math.exp(float(z[a] @ z[positive]) / tau) / denominator)
    return total / n2


@pytest.mark.parametrize("tau", [0.05, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("n", [2, 5, 16])
def test_nt_xent_equals_the_loop_reference(tau, n):
    g = torch.Generator().manual_seed(n)
    z1, z2 = torch.randn(n, 7, generator=g).double(), torch.randn(n, 7, generator=g).double()
    assert nt_xent(z1, z2, tau).item() == pytest.approx(nt_xent_loop(z1, z2, tau), rel=1e-10, abs=1e-12)
    assert NTXentLoss(tau)(z1, z2).item() == pytest.approx(nt_xent(z1, z2, tau).item(), rel=1e-12)  # not distributed


def test_hand_worked_values():
    # one image: each view's only other view is its positive -> probability 1, loss 0
    assert nt_xent(torch.randn(1, 4), torch.randn(1, 4), 0.1).item() == pytest.approx(0.0, abs=1e-6)
    # collapsed embeddings: every similarity is 1, the positive is one of 2N - 1 equal terms
    n = 6
    same = torch.ones(n, 3)
    assert nt_xent(same, same, 0.1).item() == pytest.approx(math.log(2 * n - 1), rel=1e-6)
    # identical views of orthogonal images: l = log(1 + (2N - 2) exp(-1/tau)) -> 0 as tau -> 0
    eye = torch.eye(n, dtype=torch.float64)
    for tau in (1.0, 0.5, 0.1, 0.02):
        assert nt_xent(eye, eye, tau).item() == pytest.approx(math.log1p((2 * n - 2) * math.exp(-1 / tau)), rel=1e-9)
    assert nt_xent(eye, eye, 0.02).item() < 1e-18


def test_invariances():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(8, 5, generator=g).double(), torch.randn(8, 5, generator=g).double()
    base = nt_xent(z1, z2, 0.2)
    perm = torch.randperm(8, generator=g)
    assert torch.allclose(nt_xent(z1[perm], z2[perm], 0.2), base)  # order of the images
    assert torch.allclose(nt_xent(z2, z1, 0.2), base)  # which view is "first"
    assert torch.allclose(nt_xent(3.0 * z1, 0.5 * z2, 0.2), base)  # cosine similarity: scale-free


def test_gradients_are_finite_in_bf16_and_temperature_is_checked():
    z1 = torch.randn(4, 8, dtype=torch.bfloat16, requires_grad=True)
    loss = nt_xent(z1, torch.randn(4, 8, dtype=torch.bfloat16), 0.01)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(z1.grad).all()
    with pytest.raises(ConfigError, match="temperature"):
        NTXentLoss(0.0)


def test_ssl_config_is_validated():
    assert load_config(overrides=["method=simclr"]).ssl.temperature is None  # None: the paper's value
    for bad, match in (("ssl.temperature=0", "ssl.temperature"), ("ssl.momentum=1.0", "ssl.momentum"),
                       ("ssl.proj_dim=0", "ssl.proj_dim"), ("ssl.queue_size=0", "ssl.queue_size"),
                       ("ssl.nope=1", "unknown key")):
        with pytest.raises(ConfigError, match=match):
            load_config(overrides=[bad])
    with pytest.raises(ConfigError, match="ssl.queue_size .*data.batch_size"):
        load_config(overrides=["method=mocov2", "ssl.queue_size=16", "data.batch_size=32"])


def test_two_views_are_seeded_per_sample(tmp_path):
    from convirt.data.manifest import read_manifest
    from convirt.data.pairs import PairCollator, PairDataset, pairs_from_manifest
    from convirt.data.transforms import train_transform

    manifest = write_pair_manifest(tmp_path, n_train=4, n_valid=0)
    pairs = pairs_from_manifest(read_manifest(manifest), tmp_path)
    data = PairDataset(pairs, train_transform(size=32), None, seed=3, views=2)
    a, b = data[(1, 10)], data[(1, 10)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["image2"], b["image2"])  # reproducible
    assert not torch.equal(a["image"], a["image2"])  # two different draws of T
    assert "text" not in a
    single = PairDataset(pairs, train_transform(size=32), lambda text, rng: text, seed=3)
    assert torch.equal(single[(1, 10)]["image"], a["image"])  # the first view is the one-view sample
    batch = PairCollator(None, 16)([data[(i, i)] for i in range(3)])
    assert batch["images"].shape == batch["images2"].shape == (3, 1, 32, 32) and "input_ids" not in batch


def test_image_only_methods_read_no_reports(tmp_path):
    from convirt.errors import DataError
    from convirt.training.datamodule import load_split_pairs

    manifest = write_pair_manifest(tmp_path, n_train=6, n_valid=2)
    df = pd.read_csv(manifest)
    df.loc[0, "text"] = "   "  # an empty report: a bad row for ConVIRT, nothing for SimCLR
    df.to_csv(manifest, index=False)
    cfg = load_config(overrides=tiny_overrides(manifest, tmp_path / "run") + ["method=simclr"])
    with pytest.raises(DataError, match="row 1"):
        load_split_pairs(cfg)
    train, val, skipped = load_split_pairs(cfg, require_text=False)
    assert (len(train), len(val), skipped) == (6, 2, 0)
    df.drop(columns="text").to_csv(manifest, index=False)  # no text column at all
    train, val, _ = load_split_pairs(cfg, require_text=False)
    assert (len(train), len(val)) == (6, 2)


@pytest.fixture(scope="module")
def simclr_run(tmp_path_factory):
    """Overfit 8 images (one batch of 8, 14 negatives per view) for 24 steps."""
    root = tmp_path_factory.mktemp("simclr")
    manifest = write_gray_levels(root / "data", n_train=8)
    overrides = tiny_overrides(manifest, root / "run", 24) + LEARNABLE + [
        "method=simclr", "data.batch_size=8", "text.model=emilyalsentzer/Bio_ClinicalBERT"]  # no text model is loaded
    return root / "run", pretrain(load_config(overrides=overrides))


def test_simclr_run_learns_and_exports_an_image_encoder(simclr_run):
    """The loss falls far below chance (ln 15 = 2.7); measured with seeds 0-2: from 1.3-2.2 at the
    first step to < 0.05 at the end."""
    run, summary = simclr_run
    assert summary["global_step"] == 24 and summary["skipped_steps"] == 0
    loss = pd.read_csv(run / "logs" / "metrics.csv")["train/loss"].dropna().to_numpy()
    assert len(loss) == 24
    first, last = loss[:4].mean(), loss[-4:].mean()
    assert last < 0.5 * first and last < 0.5 * math.log(15), (first, last)
    assert not (run / "tokenizer").exists()

    import convirt
    from convirt.evaluation.encoders import load_encoder

    encoder = load_encoder(str(run))
    assert encoder.dual is None and encoder.num_features == 96  # evaluated as an image-only encoder
    model = convirt.load(run / "model")
    assert model.meta["method"] == "simclr" and model.projection_cfg.dim == 32
    x = torch.randn(2, 1, 32, 32)
    assert torch.allclose(encoder.module(x), model.image_encoder(x))
    assert model.encode_images(x).shape == (2, 32)
    with pytest.raises(ConvirtError, match="no text encoder"):
        model.encode_text(["No effusion."])


def test_evaluate_takes_the_run_folder(simclr_run, tmp_path):
    """`convirt evaluate linear|retrieval --model RUN_DIR`: linear probe and image->image retrieval."""
    import json

    from convirt.cli.main import main
    from tests.helpers import write_labelled_manifest

    run, _ = simclr_run
    manifest = write_labelled_manifest(tmp_path, {"train": 12, "valid": 4, "test": 30})
    common = ["--model", str(run), "--data", str(manifest), "--cache", str(tmp_path / "c"), "--no-progress"]
    assert main(["evaluate", "linear", *common, "--labels", "bright", "--fractions", "1", "--seeds", "0", "--n-boot", "0",
                 "--out", str(tmp_path / "linear")]) == 0
    assert main(["evaluate", "retrieval", *common, "--labels", "kind", "--per-category", "4", "--queries-per-category", "1",
                 "--ks", "1", "3", "--out", str(tmp_path / "retrieval")]) == 0
    linear = json.loads((tmp_path / "linear" / "results.json").read_text())["models"]["run"]
    retrieval = json.loads((tmp_path / "retrieval" / "results.json").read_text())["models"]["run"]
    assert linear["runs"][0]["fraction"] == 1.0 and linear["model"]["timm_model"] == "test_resnet"
    assert retrieval["image_to_image"]["n_queries"] == 3 and "text_to_image" not in retrieval
