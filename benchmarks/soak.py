"""Soak test: train on data with ~1% bad samples, SIGKILL the process K times at random moments,
resume each time, and compare with an uninterrupted run.

Reports: checkpoints lost (complete checkpoints that no longer load) and steps of work lost per
kill, the exact numbers of skipped rows and replaced samples (expected values computed here from
which rows are bad and how often the documented sample stream draws them), and whether the final
weights are bit-identical to those of the uninterrupted reference run.

Both runs are `convirt pretrain` subprocesses on one CPU thread (same arithmetic in every process).
The bad rows mix those the pre-training check catches (empty, whitespace-only and non-UTF-8
reports: skipped) with images that fail only when loaded (data.check_images: false: truncated JPEG,
0-byte file, DICOM without pixel data, 1x1 image: replaced by the next row at run time).

Example (about 6 minutes on 2 cores: two runs of about 2 minutes each, plus restarts):
    python benchmarks/soak.py --minutes 2 --kills 3 --out soak-out
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIGNALS = {"kill": "SIGKILL", "term": "SIGTERM", "mixed": "SIGKILL and SIGTERM alternating"}
RUNTIME_KINDS = ("truncated JPEG", "0-byte file", "DICOM without pixel data", "1x1 image")
CHECKED_KINDS = ("empty report", "whitespace-only report", "non-UTF-8 report")
SENTENCES = ["There is a small left pleural effusion.", "The heart size is normal.", "No pneumothorax is seen.",
             "Mild cardiomegaly is present.", "The lungs are clear.", "There is right basilar atelectasis."]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=2.0, help="training time of each run (default 2; the step count is sized to it)")
    p.add_argument("--kills", type=int, default=3, help="times the soak run is killed and resumed (default 3)")
    p.add_argument("--bad-fraction", type=float, default=0.01, help="fraction of bad training rows (default 0.01)")
    p.add_argument("--rows", type=int, default=600, help="usable training pairs (default 600; a multiple of --batch-size)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--checkpoint-every", type=int, default=25, help="steps between checkpoints (default 25)")
    p.add_argument("--image-model", default="resnet18", help="timm image encoder (default resnet18: 130 MB checkpoints)")
    p.add_argument("--signal", choices=["kill", "term", "mixed"], default="kill",
                   help="SIGKILL (default), SIGTERM as schedulers send it, or alternating")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the run and the kill times")
    p.add_argument("--out", type=Path, default=Path("soak-out"), help="output folder (data, runs, soak.json, soak.md)")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run `convirt pretrain`, writing progress here
    p.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rows % args.batch_size:
        p.error("--rows must be a multiple of --batch-size (whole epochs make the expected counts exact)")
    return args


# ---------------------------------------------------------------- worker: one `convirt pretrain` process
def worker(progress: str, overrides: list[str]) -> int:
    import lightning as L

    from convirt.cli.main import main
    from convirt.training import run

    class Progress(L.Callback):
        """"START DONE": the step this process started from and the steps finished, for the driver
        (when to kill, how much work a kill lost, where the next process must start)."""

        def on_train_start(self, trainer, *args) -> None:
            self.start = trainer.global_step
            self._write(trainer)

        def on_train_batch_end(self, trainer, *args) -> None:
            self._write(trainer)

        def _write(self, trainer) -> None:
            tmp = f"{progress}.{os.getpid()}"
            Path(tmp).write_text(f"{self.start} {trainer.global_step}")
            os.replace(tmp, progress)

    run.pretrain = functools.partial(run.pretrain, callbacks=[Progress()])
    return main(["pretrain", "--resume", *(a for o in overrides for a in ("--set", o))])


# ---------------------------------------------------------------- data with ~1% bad rows
def make_data(root: Path, rows: int, bad_fraction: float, seed: int) -> dict:
    """``rows`` usable training pairs (some fail to load at run time), rows the check skips, 32 valid rows."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    n_bad = max(1, round(bad_fraction * rows))
    kinds = [(RUNTIME_KINDS + CHECKED_KINDS)[i % 7] for i in range(n_bad)] if n_bad >= 7 else \
        [k for pair in zip(RUNTIME_KINDS, CHECKED_KINDS) for k in pair][:n_bad]
    n_checked = sum(k in CHECKED_KINDS for k in kinds)
    where = sorted(random.Random(seed).sample(range(0, rows + n_checked - 1, 2), n_bad))  # never adjacent
    bad_at = dict(zip(where, kinds))
    lines, runtime_pairs, pair = [], [], 0
    for i in range(rows + n_checked + 32):
        name, text = f"images/{i}.png", f"FINDINGS: {SENTENCES[i % 6]} {SENTENCES[(i * 7 + 1) % 6]}"
        kind = bad_at.get(i)
        if kind == "truncated JPEG":
            name = f"images/{i}.jpg"
            Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(root / name, quality=95)
            (root / name).write_bytes((root / name).read_bytes()[:1500])
        elif kind == "0-byte file":
            (root / name).write_bytes(b"")
        elif kind == "DICOM without pixel data":
            name = f"images/{i}.dcm"
            _dicom_without_pixels(root / name)
        elif kind == "1x1 image":
            Image.fromarray(np.zeros((1, 1), np.uint8)).save(root / name)
        else:
            Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(root / name)
        text = {"empty report": "", "whitespace-only report": "  \t ", "non-UTF-8 report": "@@BYTES@@"}.get(kind, text)
        split = "train" if i < rows + n_checked else "valid"
        lines.append(",".join([name, f'"{text}"', split]))
        if split == "train" and kind not in CHECKED_KINDS:
            if kind in RUNTIME_KINDS:
                runtime_pairs.append(pair)
            pair += 1
    body = ("image,text,split\n" + "\n".join(lines) + "\n").encode().replace(b"@@BYTES@@", b"Lung \xff\xfe opacity.")
    (root / "manifest.csv").write_bytes(body)
    assert pair == rows
    return {"manifest": root / "manifest.csv", "bad_rows": {i + 1: k for i, k in bad_at.items()},
            "runtime_bad_pairs": runtime_pairs, "n_checked_bad": n_checked}


def _dicom_without_pixels(path: Path) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # a structured report: no image
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "SR"
    ds.save_as(path, enforce_file_format=True)


def expected_draws(pairs: list[int], n: int, steps: int, batch: int, seed: int) -> int:
    """How often the stream draws ``pairs`` in ``steps`` batches: position p is pair perm(seed, p // n)[p % n]
    (the stream as documented in docs/guide.md, recomputed here rather than taken from convirt)."""
    import numpy as np

    bad, count = set(pairs), 0
    for epoch in range(-(-steps * batch // n)):
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        positions = range(epoch * n, min((epoch + 1) * n, steps * batch))
        count += sum(int(perm[p - epoch * n]) in bad for p in positions)
    return count


# ---------------------------------------------------------------- driver
class Run:
    """One run folder, driven through as many `convirt pretrain --resume` processes as it takes."""

    def __init__(self, out: Path, overrides: list[str], log) -> None:
        self.out, self.overrides, self.log = out, overrides, log
        self.progress = out.parent / f"{out.name}.progress"

    def read(self) -> tuple[int, int]:
        """(step the current process started from, steps done); -1 before training starts."""
        try:
            start, done = map(int, self.progress.read_text().split())
            return start, done
        except (FileNotFoundError, ValueError):
            return -1, -1

    def step(self) -> int:
        return self.read()[1]

    def start(self) -> subprocess.Popen:
        self.progress.unlink(missing_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(self.progress), "--", *self.overrides]
        return subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def follow(proc: subprocess.Popen, run: Run, bar, until=None) -> int | None:
    """Update ``bar`` until the process ends (returns its status) or ``until(step)`` is true (returns None)."""
    while proc.poll() is None:
        step = run.step()
        if step >= 0 and step != bar.n:  # (a resumed process goes back to its checkpoint)
            bar.n = step
            bar.refresh()
        if until is not None and until(step):
            return None
        time.sleep(0.02)
    return proc.returncode


def inspect_checkpoints(directory: Path) -> dict:
    """Every complete checkpoint must load; temporary files are writes a kill interrupted."""
    from convirt.errors import ConvirtError
    from convirt.training.checkpoint import checkpoint_step, load_checkpoint_file

    loadable, unloadable = [], []
    for path in sorted(directory.glob("*.ckpt")):
        try:
            state = load_checkpoint_file(path)
            assert state["global_step"] == checkpoint_step(path)
            loadable.append(checkpoint_step(path))
        except (ConvirtError, AssertionError, KeyError):
            unloadable.append(path.name)
    return {"loadable": sorted(loadable), "unloadable": unloadable, "interrupted_writes": len(list(directory.glob(".*.tmp")))}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args.worker, args.overrides)
    import torch
    from safetensors.torch import load_file
    from tqdm import tqdm

    started = time.time()
    out = args.out.resolve()
    if out.exists() and any(out.iterdir()):
        sys.exit(f"{out} is not empty: choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    data = make_data(out / "data", args.rows, args.bad_fraction, args.seed)
    log = open(out / "processes.log", "w")

    def overrides(name: str, steps: int) -> list[str]:
        return ["image.pretrained=false", f"image.model={args.image_model}", "image.size=32", "text.model=scratch",
                "text.freeze_layers=0", "text.max_length=32", "text.scratch.vocab_size=200", "text.scratch.hidden=32",
                "text.scratch.layers=2", "text.scratch.heads=2", "projection.dim=32", f"data.batch_size={args.batch_size}",
                f"data.train={data['manifest']}", "data.skip_bad_rows=true", "data.check_images=false",
                f"trainer.out_dir={out / name}", f"trainer.max_steps={steps}", f"trainer.seed={args.seed}",
                f"trainer.checkpoint_every_n_steps={args.checkpoint_every}", "trainer.progress_bar=false",
                "trainer.log_every_n_steps=10", "optim.lr=1e-3", "optim.scheduler=plateau", "optim.plateau_patience=1",
                "optim.early_stopping_patience=null"]

    # size the runs: time a short one, then whole epochs filling --minutes
    epoch_steps = args.rows // args.batch_size
    probe = Run(out / "calibration", overrides("calibration", 30), log)
    with tqdm(total=30, desc="calibrating", unit="step") as bar:
        assert follow(probe.start(), probe, bar) == 0, f"calibration run failed: see {out / 'processes.log'}"
    per_step = json.loads((out / "calibration" / "summary.json").read_text())["fit_seconds"] / 30
    steps = max(1, round(args.minutes * 60 / per_step / epoch_steps)) * epoch_steps

    reference = Run(out / "reference", overrides("reference", steps), log)
    t0 = time.time()
    with tqdm(total=steps, desc="reference (uninterrupted)", unit="step") as bar:
        assert follow(reference.start(), reference, bar) == 0, f"reference run failed: see {out / 'processes.log'}"
    reference_seconds = time.time() - t0

    soak = Run(out / "soak", overrides("soak", steps), log)
    targets = sorted(rng.sample(range(1, steps), args.kills))
    kills, status = [], None
    t0 = time.time()
    with tqdm(total=steps, desc=f"soak ({args.kills} kills)", unit="step") as bar:
        resumed_at = 0
        for i, target in enumerate(targets):
            proc = soak.start()
            status = follow(proc, soak, bar, until=lambda step: step >= max(target, resumed_at + 1))
            if status is not None:
                break  # finished before this kill
            started_from = soak.read()[0]
            time.sleep(rng.uniform(0, 1.5 * per_step))  # anywhere in a step: compute, checkpoint write, validation
            sig = signal.SIGKILL if args.signal == "kill" or (args.signal == "mixed" and i % 2 == 0) else signal.SIGTERM
            proc.send_signal(sig)
            proc.wait()
            killed_at = soak.step()
            state = inspect_checkpoints(out / "soak" / "checkpoints")
            newest = max(state["loadable"], default=0)
            kills.append({"signal": sig.name, "target_step": target, "process_exit": proc.returncode,
                          "process_started_from": started_from, "steps_done_at_kill": killed_at,
                          "resumes_from_step": newest, "steps_lost": killed_at - newest, **state})
            resumed_at = newest
        if status is None:
            proc = soak.start()
            status = follow(proc, soak, bar)
    soak_seconds = time.time() - t0
    assert status == 0, f"the soak run failed: see {out / 'processes.log'}"
    # every process started from the newest complete checkpoint its predecessor left
    starts = [k["process_started_from"] for k in kills] + [soak.read()[0]]
    resumed_right = starts == [0] + [k["resumes_from_step"] for k in kills][: len(starts) - 1]

    ref_summary = json.loads((out / "reference" / "summary.json").read_text())
    soak_summary = json.loads((out / "soak" / "summary.json").read_text())
    a, b = load_file(str(out / "reference" / "model" / "model.safetensors")), load_file(str(out / "soak" / "model" / "model.safetensors"))
    identical = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    expected_replaced = expected_draws(data["runtime_bad_pairs"], args.rows, steps, args.batch_size, args.seed)
    lost_checkpoints = sum(len(k["unloadable"]) for k in kills)
    results = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("worker", "overrides")},
        "steps": steps, "epochs": steps // epoch_steps, "seconds_per_step": round(per_step, 4),
        "bad_rows": {str(r): k for r, k in data["bad_rows"].items()},
        "reference_seconds": round(reference_seconds, 1), "soak_seconds": round(soak_seconds, 1),
        "kills": kills, "lost_checkpoints": lost_checkpoints, "resumed_from_newest_checkpoint": resumed_right,
        "max_steps_lost_per_kill": max((k["steps_lost"] for k in kills), default=0),
        "skipped_bad_rows": {"expected": data["n_checked_bad"], "reference": ref_summary["skipped_bad_rows"],
                             "soak": soak_summary["skipped_bad_rows"]},
        "replaced_samples": {"expected": expected_replaced, "reference": ref_summary["replaced_samples"],
                             "soak": soak_summary["replaced_samples"]},
        "global_step": {"expected": steps, "reference": ref_summary["global_step"], "soak": soak_summary["global_step"]},
        "identical_weights": identical, "wall_seconds": round(time.time() - started, 1),
    }
    ok = (identical and lost_checkpoints == 0 and results["max_steps_lost_per_kill"] <= args.checkpoint_every
          and all(len(set(results[k].values())) == 1 for k in ("skipped_bad_rows", "replaced_samples", "global_step"))
          and resumed_right)
    results["ok"] = ok
    (out / "soak.json").write_text(json.dumps(results, indent=2))
    table = markdown(results)
    (out / "soak.md").write_text(table)
    print(table)
    return 0 if ok else 1


def markdown(r: dict) -> str:
    s = r["settings"]
    lines = [
        f"Soak: {r['steps']} steps ({r['epochs']} epochs of {s['rows']} pairs, batch {s['batch_size']}, {s['image_model']}), "
        f"checkpoint every {s['checkpoint_every']} steps, {len(r['bad_rows'])} bad rows of {s['rows'] + r['skipped_bad_rows']['expected']} "
        f"({', '.join(sorted(set(r['bad_rows'].values())))}), {len(r['kills'])} kills ({SIGNALS[s['signal']]}) at random moments.",
        "",
        "| measure | expected | uninterrupted | killed + resumed |",
        "|---|---|---|---|",
        f"| optimiser steps | {r['global_step']['expected']} | {r['global_step']['reference']} | {r['global_step']['soak']} |",
        f"| rows skipped by the check | {r['skipped_bad_rows']['expected']} | {r['skipped_bad_rows']['reference']} | {r['skipped_bad_rows']['soak']} |",
        f"| samples replaced at run time | {r['replaced_samples']['expected']} | {r['replaced_samples']['reference']} | {r['replaced_samples']['soak']} |",
        f"| lost checkpoints | 0 | – | {r['lost_checkpoints']} |",
        f"| most steps lost by one kill | ≤ {s['checkpoint_every']} | – | {r['max_steps_lost_per_kill']} |",
        f"| every resume started at the newest complete checkpoint | yes | – | {'yes' if r['resumed_from_newest_checkpoint'] else 'NO'} |",
        f"| final weights identical | – | – | {'yes' if r['identical_weights'] else 'NO'} |",
        f"| training wall time | – | {r['reference_seconds']} s | {r['soak_seconds']} s |",
        "",
        "| kill | signal | steps done | newest checkpoint | steps lost | checkpoints | unloadable | interrupted writes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, k in enumerate(r["kills"], 1):
        lines.append(f"| {i} | {k['signal']} | {k['steps_done_at_kill']} | {k['resumes_from_step']} | {k['steps_lost']} | "
                     f"{len(k['loadable'])} | {len(k['unloadable'])} | {k['interrupted_writes']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
