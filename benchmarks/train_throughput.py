"""Training pairs/s of convirt and open_clip on the same towers and the same data, side by side.

    python benchmarks/train_throughput.py --quick                  # S and M, few steps (~5 min on 2 cores)
    python benchmarks/train_throughput.py --sizes L --repeats 2    # ResNet-50 + BERT-base at 224 px
    python benchmarks/train_throughput.py --levers S,M             # what each convirt option is worth

Needs open_clip (``pip install -e '.[bench]'``); nothing is downloaded: both models are built from
configs, open_clip from a local folder (``benchmarks/_openclip.py``).

For every size the script first checks that the two models are the same model: equal parameter
counts, equal trainable parameter counts (the frozen text layers), and the same loss on the same
batch (weights copied from convirt to open_clip; in eval mode with each library's own tokenisation,
and in train mode, dropout included, on identical inputs). The comparison uses the loss both
libraries share: ConVIRT's with lambda = 0.5 and a learned temperature is open_clip's ``ClipLoss``.

Then both train, alternating in one process (convirt block, open_clip block, repeated; the median
of the per-block ratios is reported), each through its own training loop:

* convirt: the Lightning loop of ``convirt pretrain`` (the ``ConVIRT`` LightningModule, its
  optimiser, precision plugin and non-finite checks), its ``PairDataModule`` for files;
* open_clip: ``open_clip_train.train.train_one_epoch`` with ``open_clip_train.data.CsvDataset``,
  its optimiser set up as ``open_clip_train.main`` does (AdamW, no weight decay on gains and biases).

Two data sources: ``memory`` (pre-made batches: the model and loop alone) and ``files`` (end to end:
decode PNGs, ConVIRT's augmentations, tokenisation, in ``--workers`` loader processes; the same
decoder and the same transform on both sides, each library's own dataset, tokeniser and loader).
Each library runs at its fastest CPU setting: bf16 autocast on both (open_clip ``amp_bf16``), plus
what convirt adds (channels-last, per-batch padding, the padding-free text forward, fused Adam). Throughput is steady state: the
first ``warmup`` steps of every block are not timed. Peak memory is the main process' resident set
above the built model, measured in a fresh subprocess per library (training on memory batches).

``--levers`` measures convirt's own options one at a time on the same model (steps of all variants
interleaved, so load from other processes hits them alike).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from _machine import machine  # noqa: E402
from _openclip import count_params, openclip_twin, require_open_clip  # noqa: E402

# name: (timm model, image px, text layers, text hidden, frozen text layers, batch)
SIZES = {
    "S": ("resnet18", 128, 2, 128, 0, 32),
    "M": ("resnet50", 128, 6, 256, 3, 32),
    "L": ("resnet50", 224, 12, 768, 6, 16),
}
PRECISIONS = {"bf16": ("bf16-mixed", "amp_bf16"), "fp32": ("32-true", "fp32")}


def describe(size: str) -> str:
    model, px, layers, hidden, frozen, batch = SIZES[size]
    return f"{model} {px}px + BERT {layers}x{hidden} ({frozen} frozen), batch {batch}"


# ---------------------------------------------------------------------------------------------- data
def synthetic_data(root: Path, n: int, side: int) -> Path:
    """Generated radiographs with reports (``convirt data synth``), reused when already there."""
    manifest = root / "manifest.csv"
    if manifest.is_file():
        import pandas as pd

        if len(pd.read_csv(manifest)) >= n:
            return manifest
    from convirt.data.synthetic import generate

    print(f"generating {n} synthetic {side}px studies in {root} (once) ...", flush=True)
    return generate(root, n=n, seed=0, size=side, progress=False)


def report_texts(manifest: Path) -> tuple[list[Path], list[str]]:
    """Image paths and the text view both libraries read: the extracted report (``text.sampling: report``)."""
    import pandas as pd

    from convirt.data.reports import SentenceSampler

    df = pd.read_csv(manifest)
    df = df[df["split"] == "train"]
    sampler = SentenceSampler(mode="report")
    return [manifest.parent / p for p in df["image"]], [sampler(t, random.Random(0)) for t in df["text"]]


# ---------------------------------------------------------------------------------------------- models
def convirt_config(size: str, manifest: Path | None, precision: str, workers: int, extra: list[str] = ()):
    from convirt.config import load_config

    model, px, layers, hidden, frozen, batch = SIZES[size]
    overrides = [
        f"image.model={model}", "image.pretrained=false", f"image.size={px}", "text.model=scratch",
        f"text.freeze_layers={frozen}", "text.max_length=128", "text.sampling=report", "text.scratch.vocab_size=4000",
        f"text.scratch.hidden={hidden}", f"text.scratch.layers={layers}", f"text.scratch.heads={max(2, hidden // 64)}",
        "loss.learn_temperature=true", "loss.temperature=0.1", "loss.image_weight=0.5",  # = open_clip's ClipLoss
        "optim.optimizer=adamw", "optim.lr=1e-5", "optim.weight_decay=0.0", "optim.scheduler=none",
        "optim.early_stopping_patience=null", f"data.batch_size={batch}", f"data.num_workers={workers}",
        "data.check_images=false", f"trainer.precision={precision}", "trainer.progress_bar=false",
    ]
    if manifest is not None:
        overrides.append(f"data.train={manifest}")
    return load_config(overrides=overrides + list(extra))


def build_pair(size: str, texts: list[str], precision: str, workdir: Path, manifest: Path | None = None,
               workers: int = 0, extra: list[str] = ()):
    """(convirt ConVIRT method, open_clip twin with the same weights, open_clip tokenizer)."""
    from convirt.methods import METHODS
    from convirt.models.dual_encoder import DualEncoder

    cfg = convirt_config(size, manifest, precision, workers, extra)
    torch.manual_seed(0)
    model = DualEncoder.build(cfg.image, cfg.text, cfg.projection, corpus=texts)
    method = METHODS["convirt"](cfg, model)
    clip, tokenizer = openclip_twin(method, workdir / f"openclip-{size}")
    return method, clip, tokenizer


def memory_batches(method, tokenizer, texts: list[str], size: str, n: int = 4):
    """``n`` pre-made batches, each as convirt's collator and as open_clip's loader make it."""
    _, px, *_, batch = SIZES[size]
    g = torch.Generator().manual_seed(0)
    ours, theirs = [], []
    for i in range(n):
        chunk = [texts[(i * batch + j) % len(texts)] for j in range(batch)]
        images = torch.randn(batch, 1, px, px, generator=g)
        tok = method.model.tokenize(chunk)
        ours.append({"images": images, "input_ids": tok["input_ids"], "attention_mask": tok["attention_mask"],
                     "rows": torch.arange(batch), "replaced": torch.tensor(0)})
        theirs.append((images, tokenizer(chunk)))
    return ours, theirs


def check_equivalence(method, clip, tokenizer, texts: list[str], size: str) -> dict:
    """Same parameter counts, same trainable counts, same loss on the same batch; raises otherwise."""
    from open_clip.loss import ClipLoss

    ours, theirs = memory_batches(method, tokenizer, texts, size, n=1)
    (n_a, t_a), (n_b, t_b) = count_params(method), count_params(clip)
    loss_fn = ClipLoss()
    states = copy.deepcopy(method.state_dict()), copy.deepcopy(clip.state_dict())
    with torch.no_grad():
        method.eval(), clip.eval()
        eval_a = float(method.compute_loss(ours[0]))  # convirt pads to the batch's longest report
        eval_b = float(loss_fn(**clip(*theirs[0])))  # open_clip pads to context_length
        method.train(), clip.train()
        ids = theirs[0][1]
        same = {**ours[0], "input_ids": ids, "attention_mask": (ids != 0).long()}
        # the same dropout draws need the same tensor shapes: convirt's padded forward here (text.unpad draws
        # over real tokens only); the eval-mode loss above is the padding-free one
        text, unpad = method.model.text_encoder, method.model.text_encoder.unpad
        text.unpad = False
        torch.manual_seed(1)
        train_a = float(method.compute_loss(same))
        text.unpad = unpad
        torch.manual_seed(1)
        train_b = float(loss_fn(**clip(*theirs[0])))
    method.load_state_dict(states[0]), clip.load_state_dict(states[1])  # batch-norm statistics as before
    out = {"params": [n_a, n_b], "trainable": [t_a, t_b], "loss_eval": [eval_a, eval_b], "loss_train": [train_a, train_b],
           "padded_lengths": [int(ours[0]["input_ids"].shape[1]), int(ids.shape[1])]}
    problems = []
    if n_a != n_b:
        problems.append(f"parameter counts differ: convirt {n_a:,}, open_clip {n_b:,}")
    if t_a != t_b:
        problems.append(f"trainable parameter counts differ: convirt {t_a:,}, open_clip {t_b:,}")
    for name, (a, b) in (("eval", (eval_a, eval_b)), ("train", (train_a, train_b))):
        if not math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-5):
            problems.append(f"{name}-mode losses differ: convirt {a:.7f}, open_clip {b:.7f}")
    if problems:
        raise SystemExit(f"size {size}: the two models are not the same model: " + "; ".join(problems))
    return out


# ---------------------------------------------------------------------------------------------- loops
class StepClock:
    """Wall-clock time at the start of every step (batch in hand) and at the end of the last one."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.end = 0.0

    def pairs_per_s(self, warmup: int, batch: int) -> float:
        timed = len(self.starts) - warmup
        return timed * batch / (self.end - self.starts[warmup])


def _lightning_clock(clock: StepClock):
    import lightning as L

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            clock.starts.append(time.perf_counter())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.end = time.perf_counter()

    return Clock()


def run_convirt(method, steps: int, batches=None, datamodule=None) -> StepClock:
    """``steps`` optimiser steps through the Lightning loop ``convirt pretrain`` uses."""
    import lightning as L
    from torch.utils.data import DataLoader

    clock = StepClock()
    t = method.cfg.trainer
    trainer = L.Trainer(accelerator="cpu", devices=1, precision=t.precision, max_steps=steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[_lightning_clock(clock)],
                        use_distributed_sampler=False, deterministic=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if datamodule is not None:
            trainer.fit(method, datamodule=datamodule)
        else:
            loader = DataLoader([batches[i % len(batches)] for i in range(steps)], batch_size=None)
            trainer.fit(method, train_dataloaders=loader)
    return clock


def openclip_args(precision: str, batch: int, workers: int = 0, csv: Path | None = None):
    from argparse import Namespace

    return Namespace(device="cpu", precision=precision, distill=False, accum_freq=1, skip_scheduler=False,
                     grad_clip_norm=None, horovod=False, log_every_n_steps=10**9, batch_size=batch, world_size=1,
                     rank=0, local_rank=0, wandb=False, save_logs=False, distributed=False, train_data=str(csv),
                     csv_img_key="filepath", csv_caption_key="title", csv_separator="\t", workers=workers)


def openclip_optimizer(clip, lr: float = 1e-5, wd: float = 0.0):
    """As ``open_clip_train.main``: AdamW, gains/biases/logit scale without weight decay."""
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    named = [(n, p) for n, p in clip.named_parameters() if p.requires_grad]
    return torch.optim.AdamW([{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
                              {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": wd}],
                             lr=lr, betas=(0.9, 0.98), eps=1e-6)


def run_openclip(clip, args, steps: int, batches=None, dataloader=None) -> StepClock:
    """``steps`` steps of ``open_clip_train.train.train_one_epoch`` (one epoch of exactly that many batches)."""
    from open_clip.loss import ClipLoss
    from open_clip_train.data import DataInfo
    from open_clip_train.train import train_one_epoch
    from torch.utils.data import DataLoader

    clock = StepClock()
    if dataloader is None:
        dataloader = DataLoader([batches[i % len(batches)] for i in range(steps)], batch_size=None)
        dataloader.num_samples, dataloader.num_batches = steps * args.batch_size, steps
    optimizer = openclip_optimizer(clip)
    train_one_epoch(clip, {"train": DataInfo(dataloader)}, ClipLoss(), 0, optimizer, None,
                    lambda step: clock.starts.append(time.perf_counter()), None, args)
    clock.end = time.perf_counter()
    return clock


# ---------------------------------------------------------------------------------------------- files
def convirt_datamodule(method, manifest: Path):
    from convirt.training.datamodule import PairDataModule, load_split_pairs

    train, val, _ = load_split_pairs(method.cfg)
    return PairDataModule(method.cfg, train, val, method.model.tokenizer)


class FirstBatches:
    """The first ``n`` batches of a longer loader, as ``train_one_epoch`` expects an epoch. The loader
    holds more batches than are taken, so its workers keep working through the timed steps (an epoch
    of exactly ``n`` batches would be read ahead before the end and time the model alone)."""

    def __init__(self, loader, n: int) -> None:
        self.loader, self.num_batches = loader, n
        self.num_samples = n * loader.batch_size

    def __iter__(self):
        it = iter(self.loader)
        for _ in range(self.num_batches):
            yield next(it)
        del it  # stop the workers now rather than at garbage collection


def openclip_file_loader(args, tokenizer, images: list[Path], texts: list[str], steps: int, workdir: Path, transform):
    """open_clip's own CSV dataset and loader over the same files and texts; ``steps`` batches are taken."""
    import pandas as pd
    from open_clip_train.data import get_csv_dataset

    n = (steps + 4 * max(1, args.workers) + 4) * args.batch_size
    order = [i % len(images) for i in range(n)]
    csv = workdir / f"openclip-train-{n}.tsv"
    pd.DataFrame({"filepath": [str(images[i]) for i in order], "title": [texts[i] for i in order]}).to_csv(
        csv, sep="\t", index=False)
    args.train_data = str(csv)
    return FirstBatches(get_csv_dataset(args, transform, is_train=True, tokenizer=tokenizer).dataloader, steps)


def torchvision_train_transform(cfg):
    """ConVIRT's training transform T as torchvision ships it: convirt's, with its separable Gaussian blur
    replaced by ``v2.GaussianBlur`` (same draws, same images to 1e-6, ~9x slower). What an open_clip
    user writing ConVIRT's augmentations gets."""
    from torchvision.transforms import v2

    from convirt.data.transforms import SeparableGaussianBlur, build_transforms

    t = build_transforms(cfg, train=True)
    return v2.Compose([v2.GaussianBlur(list(x.kernel_size), list(x.sigma)) if isinstance(x, SeparableGaussianBlur) else x
                       for x in t.transforms])


class PILToConvirt:
    """open_clip hands its transform a PIL image: decode it as convirt does (8-bit gray to [0, 1]) and
    apply convirt's training transform, so both pipelines do the same work."""

    def __init__(self, transform) -> None:
        self.transform = transform

    def __call__(self, image):
        import numpy as np

        from convirt.data.images import to_tensor

        return self.transform(to_tensor(np.asarray(image.convert("L"), dtype=np.float32) / 255.0))


# ---------------------------------------------------------------------------------------------- memory probe
def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    def __init__(self) -> None:
        self.base = _rss_mb()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mb())
            time.sleep(0.002)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak - self.base


def probe_memory(spec: dict) -> dict:
    """In a fresh process: resident memory above the built model while training ``steps`` steps."""
    manifest, size, lib, precision = Path(spec["manifest"]), spec["size"], spec["lib"], spec["precision"]
    _, texts = report_texts(manifest)
    work = Path(tempfile.mkdtemp(prefix="convirt-probe-"))
    method, clip, tok = build_pair(size, texts, PRECISIONS[precision][0], work, extra=spec.get("extra", []))
    ours, theirs = memory_batches(method, tok, texts, size)
    if lib == "openclip":
        del method, ours
    else:
        del clip, theirs
    gc.collect()
    peak = PeakRSS()
    if lib == "openclip":
        run_openclip(clip, openclip_args(PRECISIONS[precision][1], SIZES[size][5]), spec["steps"], batches=theirs)
    else:
        run_convirt(method, spec["steps"], batches=ours)
    return {"peak_mb_above_model": peak.stop(), "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure_memory(manifest: Path, size: str, lib: str, precision: str, steps: int = 3, extra: list[str] = ()) -> dict:
    spec = json.dumps({"manifest": str(manifest), "size": size, "lib": lib, "precision": precision, "steps": steps,
                       "extra": list(extra)})
    threads = ["--threads", str(torch.get_num_threads())]
    out = subprocess.run([sys.executable, __file__, "--probe", spec, *threads], capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
        return {"error": (out.stderr or out.stdout)[-500:]}
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------------------- comparison
def compare(size: str, precision: str, source: str, method, clip, tokenizer, images, texts, manifest: Path,
            workdir: Path, warmup: int, steps: int, repeats: int, workers: int, openclip_transform: str = "torchvision") -> dict:
    """Alternating blocks: convirt then open_clip (order swapped every repeat); per-block ratios."""
    from convirt.data.transforms import build_transforms

    batch = SIZES[size][5]
    method.cfg.trainer.precision = PRECISIONS[precision][0]
    method.cfg.data.num_workers = workers
    args = openclip_args(PRECISIONS[precision][1], batch, workers)
    if source == "files":
        # reach steady state first: batches read ahead while the first steps ran (up to 4 per worker in
        # convirt's loader, 2 in open_clip's) would otherwise be timed as if free. Where a step takes far
        # longer than a batch takes to load (L), the queues are full at every step anyway.
        warmup += 4 * workers if size != "L" else 1
    n = warmup + steps
    if source == "memory":
        ours, theirs = memory_batches(method, tokenizer, texts, size)

        def ours_run():
            return run_convirt(method, n, batches=ours)

        def theirs_run():
            return run_openclip(clip, args, n, batches=theirs)
    else:
        dm = convirt_datamodule(method, manifest)
        transform = PILToConvirt(build_transforms(method.cfg, train=True) if openclip_transform == "convirt"
                                 else torchvision_train_transform(method.cfg))

        def ours_run():
            return run_convirt(method, n, datamodule=dm)

        def theirs_run():
            loader = openclip_file_loader(args, tokenizer, images, texts, n, workdir, transform)
            return run_openclip(clip, args, n, dataloader=loader)

    ours_run(), theirs_run()  # warm-up of the process (allocator, first-call costs), not timed
    a, b = [], []
    for r in range(repeats):
        for name in (("convirt", "openclip") if r % 2 == 0 else ("openclip", "convirt")):
            clock = ours_run() if name == "convirt" else theirs_run()
            (a if name == "convirt" else b).append(clock.pairs_per_s(warmup, batch))
            gc.collect()  # the block's loader and its worker processes
        print(f"  {size} {precision} {source} repeat {r + 1}: convirt {a[-1]:.1f}, open_clip {b[-1]:.1f} pairs/s "
              f"(load {os.getloadavg()[0]:.1f})", flush=True)
    ratios = [x / y for x, y in zip(a, b)]
    return {"convirt_pairs_per_s": a, "openclip_pairs_per_s": b, "ratios": ratios,
            "convirt_median": statistics.median(a), "openclip_median": statistics.median(b),
            "ratio_median": statistics.median(ratios), "ratio_of_medians": statistics.median(a) / statistics.median(b),
            "warmup": warmup, "steps": steps, "workers": workers,
            "openclip_transform": openclip_transform if source == "files" else None}


# ---------------------------------------------------------------------------------------------- levers
LEVERS = {
    # name: (description, config overrides, pad to max_length like open_clip)
    "fp32": ("fp32, contiguous, foreach Adam (no lever)", ["trainer.precision=32-true", "trainer.channels_last=false",
                                                           "optim.fused=false"], False),
    "fp32+cl": ("fp32 + channels_last", ["trainer.precision=32-true"], False),
    "bf16": ("bf16 autocast, contiguous", ["trainer.channels_last=false"], False),
    "bf16+cl": ("bf16 autocast + channels_last + fused Adam (reference)", [], False),
    "bf16+cl+fixedpad": ("... padding every caption to text.max_length, padded forward (as open_clip)",
                         ["text.unpad=false"], True),
    "bf16+cl+padded": ("... with Hugging Face's padded text forward (text.unpad=false)", ["text.unpad=false"], False),
    "bf16+cl+foreach": ("... with torch's foreach Adam instead of fused (optim.fused=false)", ["optim.fused=false"], False),
    "bf16+cl+ckpt": ("... + gradient checkpointing (trainer.gradient_checkpointing)",
                     ["trainer.gradient_checkpointing=true"], False),
    "bf16+cl+compile": ("... + torch.compile of both towers (trainer.compile)", ["trainer.compile=true"], False),
}


def lever_variants(names: list[str]) -> list[str]:
    unknown = [n for n in names if n not in LEVERS]
    if unknown:
        raise SystemExit(f"unknown lever(s) {unknown}; known: {', '.join(LEVERS)}")
    return names


def measure_levers(size: str, texts: list[str], workdir: Path, names: list[str], steps: int, warmup: int,
                   manifest: Path, memory: bool) -> list[dict]:
    """Every variant trains its own copy of the same model; their steps are interleaved (order reversed
    every step) and timed one by one; medians after ``warmup`` steps. The optimiser and autocast are
    those ``convirt pretrain`` builds from the config (``configure_optimizers``, Lightning's plugin)."""
    from convirt.methods import METHODS
    from convirt.methods.base import apply_speed_options

    base_method, _, _ = build_pair(size, texts, "bf16-mixed", workdir)
    batch = SIZES[size][5]
    tok = base_method.model.tokenizer
    g = torch.Generator().manual_seed(0)
    px = SIZES[size][1]
    chunks = [[texts[(i * batch + j) % len(texts)] for j in range(batch)] for i in range(4)]
    images = [torch.randn(batch, 1, px, px, generator=g) for _ in range(4)]
    variants = []
    for name in names:
        _, overrides, fixed = LEVERS[name]
        cfg = convirt_config(size, None, "bf16-mixed", 0, overrides)
        method = METHODS["convirt"](cfg, copy.deepcopy(base_method.model))
        method.load_state_dict(base_method.state_dict())
        method.model.text_encoder.unpad = cfg.text.unpad  # the copied encoder was built with the base config
        apply_speed_options(method)
        optimizer = method.configure_optimizers()
        optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
        pad = dict(padding="max_length") if fixed else dict(padding=True)
        batches = []
        for chunk, im in zip(chunks, images):
            t = tok(chunk, truncation=True, max_length=cfg.text.max_length, return_tensors="pt",
                    return_token_type_ids=False, **pad)
            batches.append({"images": im, "input_ids": t["input_ids"], "attention_mask": t["attention_mask"]})
        method.train()
        variants.append({"name": name, "method": method, "opt": optimizer, "batches": batches, "times": [],
                         "bf16": cfg.trainer.precision.startswith("bf16")})

    def step(v: dict, i: int) -> None:
        b = v["batches"][i % len(v["batches"])]
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=v["bf16"]):
            loss = v["method"].compute_loss(b)
        v["opt"].zero_grad()
        loss.backward()
        v["opt"].step()
        v["times"].append(time.perf_counter() - start)

    for i in range(warmup + steps):
        for v in (variants if i % 2 == 0 else variants[::-1]):
            step(v, i)
    ref = next((v for v in variants if v["name"] == "bf16+cl"), variants[0])
    ref_time = statistics.median(ref["times"][warmup:])
    rows = []
    for v in variants:
        med = statistics.median(v["times"][warmup:])
        row = {"size": size, "lever": v["name"], "description": LEVERS[v["name"]][0], "pairs_per_s": batch / med,
               "vs_reference": ref_time / med, "first_step_s": v["times"][0]}
        if memory and not LEVERS[v["name"]][2]:  # the probe trains from the config; padding is not one
            row["memory"] = measure_memory(manifest, size, "convirt", "bf16", extra=LEVERS[v["name"]][1])
        rows.append(row)
        print(f"  lever {size} {v['name']:20s} {row['pairs_per_s']:7.1f} pairs/s  x{row['vs_reference']:.2f}", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------- report
def markdown(results: dict) -> str:
    lines = [f"Machine: {results['machine']}; load average at start {results['load_start']}, at end {results['load_end']}.", ""]
    if results["equivalence"]:
        lines += ["Model equivalence (checked before timing):", "",
                  "| size | towers | parameters | trainable | loss eval (convirt / open_clip) | loss train | padded length |",
                  "|---|---|---|---|---|---|---|"]
        for size, e in results["equivalence"].items():
            lines.append(f"| {size} | {describe(size)} | {e['params'][0]:,} = {e['params'][1]:,} | "
                         f"{e['trainable'][0]:,} = {e['trainable'][1]:,} | {e['loss_eval'][0]:.6f} / {e['loss_eval'][1]:.6f} | "
                         f"{e['loss_train'][0]:.6f} / {e['loss_train'][1]:.6f} | {e['padded_lengths'][0]} / {e['padded_lengths'][1]} |")
        lines.append("")
    if results["comparisons"]:
        lines += ["| size | precision | data | convirt pairs/s | open_clip pairs/s | ratio (median of blocks) | ratios per block | "
                  "peak MB above model (convirt / open_clip) |", "|---|---|---|---|---|---|---|---|"]
        for c in results["comparisons"]:
            mem = results["memory"].get(f"{c['size']}/{c['precision']}", {})
            m = (f"{mem['convirt'].get('peak_mb_above_model', float('nan')):.0f} / "
                 f"{mem['openclip'].get('peak_mb_above_model', float('nan')):.0f}") if mem else "-"
            data = "memory" if c["source"] == "memory" else f"files, {c['workers']} workers"
            if c.get("openclip_transform") == "convirt":
                data += " (open_clip given convirt's transform)"
            lines.append(f"| {c['size']} | {c['precision']} | {data} | {c['convirt_median']:.1f} | {c['openclip_median']:.1f} | "
                         f"**{c['ratio_median']:.2f}x** | {', '.join(f'{r:.2f}' for r in c['ratios'])} | {m} |")
        lines.append("")
    if results["levers"]:
        lines += ["convirt options, one at a time (interleaved steps on copies of one model, memory batches):", "",
                  "| size | variant | pairs/s | vs bf16 + channels_last | peak MB above model |", "|---|---|---|---|---|"]
        for r in results["levers"]:
            mem = r.get("memory", {}).get("peak_mb_above_model")
            lines.append(f"| {r['size']} | {r['description']} | {r['pairs_per_s']:.1f} | {r['vs_reference']:.2f}x | "
                         f"{'-' if mem is None else f'{mem:.0f}'} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="S,M,L", help="comma-separated of " + ", ".join(f"{k} ({describe(k)})" for k in SIZES))
    p.add_argument("--precisions", default="bf16", help="bf16 and/or fp32 (default bf16: each library's fastest on CPU)")
    p.add_argument("--sources", default="memory,files", help="memory (model + loop) and/or files (end to end)")
    p.add_argument("--workers", type=int, default=2, help="loader processes for --sources files (default 2)")
    p.add_argument("--openclip-transform", default="torchvision", choices=("torchvision", "convirt"),
                   help="ConVIRT's augmentations on the open_clip side: as torchvision ships them (default), or "
                        "convirt's implementation (its separable blur), to separate data-pipeline from loop speed")
    p.add_argument("--repeats", type=int, default=3, help="alternating blocks per library (default 3)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per block (default: S 10, M 6, L 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of every block (default 2)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--levers", default="", help="sizes for the convirt-options table (e.g. S,M); empty: none")
    p.add_argument("--lever-variants", default="fp32,fp32+cl,bf16,bf16+cl,bf16+cl+padded,bf16+cl+fixedpad,bf16+cl+foreach,"
                                                "bf16+cl+ckpt")
    p.add_argument("--only-levers", action="store_true", help="skip the convirt/open_clip comparison")
    p.add_argument("--quick", action="store_true", help="S and M, 2 repeats, fewer steps (a few minutes)")
    p.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "convirt-bench-synth",
                   help="synthetic data folder (generated once, reused)")
    p.add_argument("--synthetic", type=int, default=640, help="studies to generate (default 640)")
    p.add_argument("--synthetic-side", type=int, default=512, help="side of generated images (default 512)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's, one per core). On a machine shared with other busy "
                        "processes, 1 avoids OpenMP threads waiting on each other (see benchmarks/RESULTS.md)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "train_throughput")
    p.add_argument("--probe", help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.threads:
        torch.set_num_threads(args.threads)
    require_open_clip()
    import logging

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)
    if args.probe:
        print(json.dumps(probe_memory(json.loads(args.probe))))
        return
    if args.quick:
        args.sizes = "S,M" if args.sizes == "S,M,L" else args.sizes
        args.repeats = min(args.repeats, 2)
    sizes = [s for s in args.sizes.split(",") if s]
    default_steps = {"S": 10, "M": 6, "L": 3} if not args.quick else {"S": 6, "M": 3, "L": 2}
    manifest = synthetic_data(args.data, args.synthetic, args.synthetic_side)
    images, texts = report_texts(manifest)
    work = Path(tempfile.mkdtemp(prefix="convirt-train-bench-"))
    results = {"machine": machine(), "load_start": [round(x, 2) for x in os.getloadavg()], "command": " ".join(sys.argv),
               "equivalence": {}, "comparisons": [], "memory": {}, "levers": [], "sizes": {k: describe(k) for k in sizes}}
    started = time.time()

    def save() -> str:
        results["load_end"] = [round(x, 2) for x in os.getloadavg()]
        results["seconds"] = round(time.time() - started)
        text = markdown(results)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.md").write_text(text + "\n")
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
        return text

    if not args.only_levers:
        for size in sizes:
            print(f"== {size}: {describe(size)}", flush=True)
            method, clip, tokenizer = build_pair(size, texts, "bf16-mixed", work, manifest)
            results["equivalence"][size] = check_equivalence(method, clip, tokenizer, texts, size)
            e = results["equivalence"][size]
            print(f"  same model: {e['params'][0]:,} parameters ({e['trainable'][0]:,} trainable), loss "
                  f"{e['loss_eval'][0]:.6f} / {e['loss_eval'][1]:.6f}", flush=True)
            steps = args.steps or default_steps[size]
            for precision in args.precisions.split(","):
                for source in args.sources.split(","):
                    c = compare(size, precision, source, method, clip, tokenizer, images, texts, manifest, work,
                                args.warmup, steps, args.repeats, args.workers, args.openclip_transform)
                    results["comparisons"].append({"size": size, "precision": precision, "source": source, **c})
                    save()
                if not args.no_memory:
                    results["memory"][f"{size}/{precision}"] = {
                        lib: measure_memory(manifest, size, lib, precision) for lib in ("convirt", "openclip")}
                    save()
            del method, clip
            gc.collect()
    for size in [s for s in args.levers.split(",") if s]:
        print(f"== levers {size}: {describe(size)}", flush=True)
        steps = args.steps or (8 if size == "S" else 4)
        results["levers"] += measure_levers(size, texts, work, lever_variants(args.lever_variants.split(",")), steps,
                                            args.warmup, manifest, memory=not args.no_memory)
        save()
    print(save())


if __name__ == "__main__":
    main()
