"""Torch thread counts for a run: the thread-count policy of the whole pipeline, applied once at start-up."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from pipeline.engine.host_threads import available_cores

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ThreadPlan:
    """Torch thread counts for a pipelined run."""

    intra_op: int
    inter_op: int


def thread_plan(num_cores: int) -> ThreadPlan:
    """Thread counts for a machine with `num_cores` cores.

    The train stage is the only compute-bound stage, so its intra-op parallelism gets every core (on 2
    cores: 2). The other stages mostly wait on memory inside numpy/torch calls that release the GIL, so
    they overlap training without cores of their own. The pipeline's stage threads are the concurrency,
    so torch's inter-op pool gets one thread.
    """
    return ThreadPlan(intra_op=max(1, num_cores), inter_op=1)


def configure_threads(num_cores: int | None = None) -> ThreadPlan:
    """Apply `thread_plan` to torch for `num_cores` (default: the available cores); return the plan.

    Torch accepts the inter-op count only before its first inter-op parallel work; if that has already
    happened the existing pool is kept, which only affects `torch.jit.fork`-style work we do not use.
    """
    plan = thread_plan(num_cores if num_cores is not None else available_cores())
    torch.set_num_threads(plan.intra_op)
    if torch.get_num_interop_threads() != plan.inter_op:
        try:
            torch.set_num_interop_threads(plan.inter_op)
        except RuntimeError:
            logger.debug("torch inter-op pool already started; keeping %d threads", torch.get_num_interop_threads())
    return plan
