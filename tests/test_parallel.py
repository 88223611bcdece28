"""Jobs side by side: the process/thread plan, results by label, failures raised."""

import os

import pytest

from convirt.errors import ConfigError
from convirt.parallel import plan, run_jobs


def threads_and_pid(tag: str) -> tuple[str, int, int]:
    import torch

    return tag, torch.get_num_threads(), os.getpid()


def fails(message: str) -> None:
    raise ValueError(message)


def test_plan_shares_the_cores_and_keeps_gpu_jobs_in_turn():
    assert plan("auto", 5, cores=2, gpu=False) == (2, 1)
    assert plan("auto", 5, cores=16, gpu=False) == (5, 3)  # never more processes than jobs
    assert plan("auto", 5, cores=16, gpu=True) == (1, None)  # the jobs would share one GPU
    assert plan(1, 5, cores=2) == (1, None)  # here, with this process's threads
    assert plan("3", 5, cores=2) == (3, 1)  # as given (the CLI passes text), at least one thread each
    assert plan(4, 1, cores=8) == (1, None)
    for bad in (0, "many", -1):
        with pytest.raises(ConfigError, match="jobs must be"):
            plan(bad, 3, cores=2)


def test_jobs_in_this_process_run_in_order():
    found = run_jobs([("b", threads_and_pid, ("b",)), ("a", threads_and_pid, ("a",))], 1, None)
    assert list(found) == ["b", "a"] and {pid for _, _, pid in found.values()} == {os.getpid()}


def test_jobs_side_by_side_come_back_by_label_with_their_threads():
    jobs = [(label, threads_and_pid, (label,)) for label in ("x", "y", "z")]
    found = run_jobs(jobs, 2, 1)
    assert list(found) == ["x", "y", "z"] and all(found[k][0] == k for k in found)
    assert {threads for _, threads, _ in found.values()} == {1}
    pids = {pid for _, _, pid in found.values()}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2


def test_a_failing_job_is_raised_here():
    with pytest.raises(ValueError, match="bad row 7"):
        run_jobs([("ok", threads_and_pid, ("ok",)), ("bad", fails, ("bad row 7",))], 2, 1)
