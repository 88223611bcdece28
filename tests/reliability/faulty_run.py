"""``convirt pretrain`` injecting one fault into itself; the reliability tests run it as a subprocess.

    python -m tests.reliability.faulty_run [--resume] [--delete FILE] [--log-level L] FAULT STEP -- KEY=VALUE ...

FAULT says how the process dies, at ``trainer.global_step == STEP``:

``sigkill``         SIGKILL while it computes the next step (after backward, before the update);
``sigterm``         SIGTERM at the same point to the whole process group (loader workers too), as
                    a scheduler pre-empting the job sends it;
``sigterm-in-val``  SIGTERM during the first validation batch after STEP;
``die-in-write``    SIGKILL half-way through writing the checkpoint of step STEP;
``none``            no fault.

``--delete FILE`` removes FILE once training starts (after the manifest check): a file that vanishes
while the run is going. ``--log-level DEBUG`` shows every log record.
"""

from __future__ import annotations

import argparse
import functools
import io
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import torch

from convirt.cli.main import main as main_cli
from convirt.training import run

FAULTS = ("sigkill", "sigterm", "sigterm-in-val", "die-in-write", "none")


class Fault(L.Callback):
    def __init__(self, fault: str, step: int, delete: list[str]) -> None:
        self.fault, self.step, self.delete = fault, step, delete

    def setup(self, trainer, pl_module, stage) -> None:
        for name in self.delete:
            Path(name).unlink()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step == self.step and self.fault == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        if trainer.global_step == self.step and self.fault == "sigterm":
            # from another process, as a scheduler sends it: loader workers exit quietly on a SIGTERM from their parent
            subprocess.run([sys.executable, "-c", "import os, signal, sys; os.killpg(int(sys.argv[1]), signal.SIGTERM)",
                            str(os.getpgid(0))], start_new_session=True, check=True)
            time.sleep(1)  # the signal reaches every process of the group before this one goes on

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.fault == "sigterm-in-val" and trainer.state.fn == "fit" and trainer.global_step == self.step and batch_idx == 0:
            os.kill(os.getpid(), signal.SIGTERM)


def die_half_way_through_writing(step: int) -> None:
    """``torch.save`` of checkpoint ``step=STEP`` writes half its bytes, makes them durable, and the process dies."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if f"step={step}.ckpt" not in str(getattr(f, "name", f)):
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        handle = open(f, "wb") if isinstance(f, (str, os.PathLike)) else f
        handle.write(data[: len(data) // 2])
        handle.flush()
        os.fsync(handle.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = save


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("fault", choices=FAULTS)
    p.add_argument("step", type=int)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--delete", action="append", default=[])
    p.add_argument("--log-level", help="configure Python logging at this level (default: as the CLI leaves it)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    if args.log_level:
        logging.basicConfig(level=args.log_level)
    if args.fault == "die-in-write":
        die_half_way_through_writing(args.step)
    # the real command line, with the fault added to the run's callbacks
    run.pretrain = functools.partial(run.pretrain, callbacks=[Fault(args.fault, args.step, args.delete)])
    return main_cli(["pretrain", *(["--resume"] if args.resume else []), *(a for o in args.overrides for a in ("--set", o))])


if __name__ == "__main__":
    sys.exit(main())
