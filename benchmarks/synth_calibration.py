"""Measure how hard the synthetic radiographs are, so their difficulty is calibrated, not guessed.

Two numbers per finding on the validation split (AUROC):
- supervised: a ResNet-18 (timm, in_chans=1, random init) trained with multi-label BCE for a few
  minutes of CPU. Every finding should be learnable (AUROC >= ~0.85) at the demo's size.
- random probe: logistic regression on the pooled features of a random-init ResNet-18 whose
  batch-norm statistics were recalibrated on the training images. This should stay clearly lower:
  the findings are not trivially visible to an untrained network.

Example (about 5 minutes on 2 cores):
    python benchmarks/synth_calibration.py --n 3000 --size 64 --minutes 4 --json calib64.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from convirt.data.synthetic import LESIONS, generate, make_study


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="/tmp/convirt-synth-calibration", help="folder for the generated set")
    p.add_argument("--n", type=int, default=3000, help="number of images (default 3000, the demo's)")
    p.add_argument("--seed", type=int, default=0, help="data and training seed")
    p.add_argument("--gen-size", type=int, default=128, help="size the images are generated at (default 128)")
    p.add_argument("--size", type=int, default=64, help="size the network sees (default 64)")
    p.add_argument("--strength", type=float, default=1.0, help="finding visibility passed to generate()")
    p.add_argument("--minutes", type=float, default=4.0, help="supervised training budget (wall clock)")
    p.add_argument("--max-images", type=int, default=40000,
                   help="stop earlier after this many training images (default 40000, about the demo's 600 steps x 64)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--skip-supervised", action="store_true", help="only the random-feature probe")
    p.add_argument("--json", help="write the results here as JSON")
    p.add_argument("--examples", help="only write a grid PNG of example images with their findings here, then exit")
    return p.parse_args(argv)


def load(manifest: Path, size: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """All images as a normalised (N, 1, size, size) tensor, labels (N, 8), split names."""
    df = pd.read_csv(manifest)
    arrays = np.stack([np.asarray(Image.open(manifest.parent / p)) for p in df["image"]])
    x = torch.from_numpy(arrays).float().div_(255).unsqueeze(1)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    x = (x - x.mean()) / x.std()
    return x.contiguous(memory_format=torch.channels_last), df[LESIONS].to_numpy(), df["split"].to_numpy()


def aurocs(y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    return {name: float(roc_auc_score(y[:, k], scores[:, k])) for k, name in enumerate(LESIONS)}


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch: int = 256) -> np.ndarray:
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return torch.cat([model(x[i:i + batch]).float() for i in range(0, len(x), batch)]).numpy()


def supervised(x: torch.Tensor, y: np.ndarray, split: np.ndarray, args: argparse.Namespace) -> dict:
    """Train a ResNet-18 until the time budget is spent; validation AUROC per finding."""
    import timm

    torch.manual_seed(args.seed)
    model = timm.create_model("resnet18", pretrained=False, in_chans=1, num_classes=len(LESIONS))
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    tr, va = np.flatnonzero(split == "train"), np.flatnonzero(split == "valid")
    yt = torch.from_numpy(y).float()
    rng = np.random.default_rng(args.seed)
    steps, seen, start, history = 0, 0, time.time(), []
    def done() -> bool:
        return time.time() - start > args.minutes * 60 or seen >= args.max_images

    while not done():
        model.train()
        order = rng.permutation(tr)
        for i in range(0, len(order) - args.batch_size + 1, args.batch_size):
            idx = order[i: i + args.batch_size]
            shift = tuple(int(s) for s in rng.integers(-3, 4, 2))  # small translation, the same for the batch
            xb = torch.roll(x[idx], shifts=shift, dims=(2, 3))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.binary_cross_entropy_with_logits(model(xb).float(), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps, seen = steps + 1, seen + len(idx)
            if done():
                break
        scores = aurocs(y[va], predict(model, x[va]))
        history.append({"epoch": len(history) + 1, "images_seen": seen, "loss": float(loss.detach()),
                        "macro_auroc": float(np.mean(list(scores.values()))), "elapsed_s": time.time() - start})
        print(json.dumps(history[-1]), flush=True)
    return {"auroc": scores, "steps": steps, "images_seen": seen, "train_s": time.time() - start, "history": history}


@torch.no_grad()
def random_probe(x: torch.Tensor, y: np.ndarray, split: np.ndarray, seed: int) -> dict:
    """Logistic regression on a random ResNet-18's pooled features, batch norm recalibrated on train."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model("resnet18", pretrained=False, in_chans=1, num_classes=0)
    model = model.to(memory_format=torch.channels_last)
    tr, va = np.flatnonzero(split == "train"), np.flatnonzero(split == "valid")
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: the exact mean over all batches
    model.train()
    for i in range(0, len(tr), 256):
        model(x[tr[i:i + 256]])
    features = predict(model, x)
    scaler = StandardScaler().fit(features[tr])
    ftr, fva = scaler.transform(features[tr]), scaler.transform(features[va])
    scores = np.stack([LogisticRegression(C=0.1, max_iter=3000).fit(ftr, y[tr, k]).decision_function(fva)
                       for k in range(len(LESIONS))], 1)
    return {"auroc": aurocs(y[va], scores)}


def table(results: dict) -> str:
    cols = [c for c in ("supervised", "random_probe") if c in results]
    lines = ["| finding | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name in [*LESIONS, "macro"]:
        vals = [results[c]["auroc"][name] for c in cols]
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
    return "\n".join(lines)


def example_grid(path: Path, seed: int, size: int, strength: float, count: int = 12) -> None:
    """Example images (top) with their findings outlined (bottom) and labelled, as one small PNG."""
    from PIL import ImageDraw

    tiles, picked, index = [], set(), 0
    while len(tiles) < count:  # pick studies so that every finding appears at least once
        study = make_study(seed, index, index, size, strength)
        index += 1
        names = {f.name for f in study.findings}
        if (names and not names <= picked) or (not names and "No Finding" not in picked) or index > 400:
            picked |= names or {"No Finding"}
            tiles.append(study)
    width, height = size + 4, 2 * size + 32
    sheet = Image.new("RGB", (width * 6, height * ((count + 5) // 6)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, st in enumerate(tiles):
        x0, y0 = (i % 6) * width, (i // 6) * height
        sheet.paste(Image.fromarray(st.image).convert("RGB"), (x0, y0))
        inside = st.mask > 0
        edge = inside & ~(np.roll(inside, 1, 0) & np.roll(inside, 1, 1) & np.roll(inside, -1, 0) & np.roll(inside, -1, 1))
        over = np.stack([st.image] * 3, -1)
        over[edge] = (255, 40, 40)
        sheet.paste(Image.fromarray(over), (x0, y0 + size + 1))
        labels = [f"{f.side + ' ' if f.side else ''}{f.name}" for f in st.findings] or ["No Finding"]
        for j, line in enumerate(labels[:3]):
            draw.text((x0 + 1, y0 + 2 * size + 1 + j * 10), line[:24], fill="black")
    sheet = sheet.quantize(colors=64)  # a palette keeps the PNG small
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.examples:
        example_grid(Path(args.examples), args.seed, args.gen_size, args.strength)
        return 0
    t0 = time.time()
    manifest = generate(args.data, n=args.n, seed=args.seed, size=args.gen_size, strength=args.strength)
    results: dict = {"args": vars(args), "generate_s": time.time() - t0}
    x, y, split = load(manifest, args.size)
    results["valid_positives"] = {name: int(v) for name, v in zip(LESIONS, y[split == "valid"].sum(0))}
    if not args.skip_supervised:
        results["supervised"] = supervised(x, y, split, args)
    t0 = time.time()
    results["random_probe"] = random_probe(x, y, split, args.seed) | {"seconds": time.time() - t0}
    for c in ("supervised", "random_probe"):
        if c in results:
            results[c]["auroc"]["macro"] = float(np.mean([results[c]["auroc"][n] for n in LESIONS]))
    print(f"\nvalidation AUROC, n={args.n}, {args.gen_size} px generated, {args.size} px seen, strength {args.strength}")
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
