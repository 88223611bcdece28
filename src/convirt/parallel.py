"""Independent jobs (pretraining runs, fine-tuning runs) side by side on a CPU machine.

Small models use many CPU threads badly: on 2 cores a ConVIRT and a SimCLR pretraining run (demo
preset) take 0.73 and 0.99 s per step side by side with one thread each, against 0.52 and 0.71 s
one after another with both threads: the pair's work is done 1.4x sooner side by side
(docs/benchmark.md). torchvision's RoI Align (Faster R-CNN) runs on one thread whatever the setting. So ``convirt
benchmark`` runs its independent jobs in ``jobs`` spawned processes with ``threads`` torch threads
each. Jobs are module-level functions with picklable arguments; results come back by label.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from typing import Any

from convirt.errors import ConfigError

Job = tuple[str, Callable[..., Any], tuple]  # (label, function, arguments)


def cpu_count() -> int:
    """The cores this process may use (the affinity mask, e.g. a container's or taskset's limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def plan(jobs: int | str, n_jobs: int, cores: int | None = None, gpu: bool | None = None) -> tuple[int, int | None]:
    """(processes, torch threads per process) for ``n_jobs`` independent jobs.

    ``jobs="auto"``: one process per core (at most one per job) on a CPU-only machine, and one
    process with the default threads where a GPU is visible (the jobs would share it). An integer
    is taken as given; the cores are shared evenly between the processes. ``threads`` is None when
    everything runs in this process (its thread setting is left alone).
    """
    cores = cores or cpu_count()
    if jobs == "auto":
        if gpu is None:
            import torch

            gpu = torch.cuda.is_available()
        jobs = 1 if gpu else cores
    try:
        jobs = int(jobs)
    except (TypeError, ValueError):
        raise ConfigError(f"jobs must be 'auto' or a whole number >= 1, got {jobs!r}") from None
    if jobs < 1:
        raise ConfigError(f"jobs must be 'auto' or a whole number >= 1, got {jobs}")
    processes = max(1, min(jobs, n_jobs))
    return (1, None) if processes == 1 else (processes, max(1, cores // processes))


def _start_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_jobs(jobs: Sequence[Job], processes: int, threads: int | None, progress: bool = False,
             desc: str = "jobs") -> dict[str, Any]:
    """Run every job; results by label, in the order given. With one process they run here, one after
    another. Otherwise in spawned processes (safe with torch and Lightning, unlike fork); the first
    failure cancels the jobs not yet started, waits for the running ones and is raised here."""
    if processes <= 1:
        return {label: fn(*args) for label, fn, args in jobs}
    from tqdm.auto import tqdm

    results: dict[str, Any] = {}
    with ProcessPoolExecutor(processes, mp_context=mp.get_context("spawn"), initializer=_start_worker,
                             initargs=(threads or 1,)) as pool:
        pending = {pool.submit(fn, *args): label for label, fn, args in jobs}
        with tqdm(total=len(jobs), desc=f"{desc} ({processes} processes x {threads} threads)", disable=not progress,
                  unit="job") as bar:
            while pending:
                done, _ = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    label = pending.pop(future)
                    if future.exception() is not None:
                        for other in pending:
                            other.cancel()
                        raise future.exception()
                    results[label] = future.result()
                    bar.update()
                    bar.set_postfix_str(f"{label} done")
    return {label: results[label] for label, _, _ in jobs}
