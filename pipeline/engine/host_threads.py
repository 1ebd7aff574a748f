"""How the pipeline's host-stage threads keep out of the train stage's way on a CPU with few cores.

On a machine with few cores, a pipelined run's train stage can run much slower than the same stage
run alone, even beside host stages that need no CPU at all (docs/pipeline-on-cpu.md has the
measurements, `scripts/interference.py` the experiment). The causes, and what each setting here does
about them:

- `train_in_caller`: torch runs OpenMP parallel regions in a team that belongs to the calling thread.
  A train stage in a thread of its own gets a second team beside the one that trained the sequential
  batches, and once a process has more OpenMP threads than cores, libgomp stops spinning between
  regions in every team: each of the train step's many short regions then pays a sleep and a wake-up.
  The train stage therefore runs in the calling thread, whose team trained the sequential batches.
- `one_openmp_thread`: for the same reason a host-stage thread must never start a team of its own: its
  OpenMP thread count is set to 1.
- `sched_idle`: the host-stage threads run under Linux's SCHED_IDLE, so they only take a core that the
  train stage leaves idle and are preempted as soon as a train-stage thread wakes up.
- `switch_interval_s`: a thread that waits for the GIL gets it only when the holder drops it, at the
  latest after Python's switch interval (5 ms by default). The train step re-acquires the GIL after
  every torch call; a shorter interval during the pipelined phase bounds each wait.

The train stage's own thread count is a choice too: on a machine shared with other jobs, every OpenMP
region waits at its barrier for a thread the kernel has descheduled, and fewer threads than cores run
faster (docs/pipeline-on-cpu.md). `thread_options` are the counts `pipeline.mode: auto` tries.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from threadpoolctl import threadpool_limits


@dataclass(frozen=True)
class HostThreadPolicy:
    """Where the train stage runs and how the host-stage threads are set up (see the module docstring).

    The defaults are what training uses; the benchmark turns them off one by one to measure each."""

    train_in_caller: bool = True
    one_openmp_thread: bool = True
    sched_idle: bool = True
    switch_interval_s: float | None = 0.0002


def keep_off_training(policy: HostThreadPolicy) -> None:
    """Apply `policy` to the calling host-stage thread (call it first thing in the thread)."""
    if policy.one_openmp_thread:
        torch.get_num_threads()  # torch's per-thread set-up runs now, so it cannot undo the limit below
        threadpool_limits(1, user_api="openmp")
    if policy.sched_idle and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))


def available_cores() -> int:
    """Cores this process may run on (respects CPU affinity, e.g. in containers)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def thread_options(threads: int) -> tuple[int, ...]:
    """The train stage's thread counts worth trying when `threads` is what the run started with: those
    and half as many (a shared machine's other jobs take cores away), largest first."""
    return tuple(sorted({threads, max(1, threads // 2)}, reverse=True))


def use_threads(threads: int | None) -> None:
    """Run torch's intra-op work in the calling thread (the train stage's) with `threads` threads; None
    leaves the count as it is."""
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def switch_interval(seconds: float | None) -> Iterator[None]:
    """Python's thread switch interval set to `seconds` for the block (None: unchanged), then restored."""
    if seconds is None:
        yield
        return
    previous = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)
