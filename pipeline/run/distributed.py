"""Data-parallel training across processes (docs/method.md §8): `torch.distributed` + DDP, launched by `torchrun`.

`DistributedWorld` is one rank of `torchrun --nproc_per_node=N ... --distributed`, a `World`
(pipeline/run/world.py) beside the single process's `LocalWorld`:

- batches: `train.batch_size` is the *global* batch; rank r takes events `r::N` of every global batch,
  in chronological order (`Shard`). A last global batch with fewer than N events is folded into the
  one before, so no rank ever gets an empty share;
- model: wrapped in DDP (gloo on CPU, NCCL on GPU; rank r uses `cuda:LOCAL_RANK`), the learning rate
  scaled by sqrt(N);
- memory: one store per machine in shared memory (`MachineMemoryStore`), written by local rank 0 and
  read by every local rank. Every update of batch i is all-gathered from all ranks and merged
  (`merge_updates`: per node the latest timestamp wins, ties go to the higher rank, then to the later
  row of that rank's update; history rows, which add up, are concatenated) before version i is
  committed, so the staleness bound covers every rank's updates and the stores of all machines stay
  identical. The gathers run on a gloo group of their own ("host group"), because the update stage
  calls them from its thread while the train stage's DDP all-reduce runs on the default group;
- scheduler: before each epoch the ranks' stage times are combined (max per stage, min observation
  count) and the epoch's scheduler sees only those, so every rank uses the same staleness bound k and
  warm-up length (`AgreedScheduler`);
- evaluation: every rank scores its share of each evaluation batch and the scores are all-gathered
  in split order, so AP/AUC/MRR are computed over the whole split, identically on every rank.

Collectives outside the pipeline (stage times, scores) run in the calling thread between runs of the
pipeline, on the host group, in the same order on every rank. Every group has a timeout, so a rank
whose peer died fails with an error instead of hanging.
"""
from __future__ import annotations

import math
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from common.errors import LaunchError
from memory.batch import MemoryUpdate
from memory.shared import SharedMemoryStore, shared_memory_root
from memory.store import MemoryStore
from graph.split import chronological_batches
from pipeline.engine.schedulers import Scheduler
from pipeline.engine.profiler import STAGES, StageProfiler, minimal_staleness
from pipeline.run.world import scatter_scores

DEFAULT_TIMEOUT_S = 60.0
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def agreed_stage_times(profiler: StageProfiler, world_size: int, group: dist.ProcessGroup) -> AgreedStageTimes:
    """Each stage's longest mean time over the ranks, and the fewest observations (a collective)."""
    gathered: list[tuple[dict[str, float], int] | None] = [None] * world_size
    dist.all_gather_object(gathered, (profiler.means(), profiler.observations()), group=group)
    taus = {stage: max(means[stage] for means, _ in gathered) for stage in STAGES}
    return AgreedStageTimes(taus, min(count for _, count in gathered))


def all_reduce_sum(totals: torch.Tensor) -> torch.Tensor:
    """`totals` summed over all ranks (a batch statistic that a model tracks, e.g. JODIE's time scale)."""
    totals = totals.clone()
    dist.all_reduce(totals)
    return totals


@dataclass(frozen=True)
class Shard:
    """Which interleaved share of every global batch this process trains on: events `rank::world`."""

    rank: int = 0
    world: int = 1

    def global_batches(self, indices: np.ndarray, batch_size: int) -> list[np.ndarray]:
        """Consecutive batches of `batch_size`; a last one shorter than `world` joins the one before."""
        batches = chronological_batches(indices, batch_size)
        if len(batches) > 1 and len(batches[-1]) < self.world:
            batches[-2:] = [np.concatenate(batches[-2:])]
        return batches

    def share(self, batch_len: int) -> np.ndarray:
        """Positions inside a global batch of `batch_len` events that this rank takes, in order."""
        return np.arange(self.rank, batch_len, self.world)


def merge_updates(updates: list[MemoryUpdate]) -> MemoryUpdate:
    """One update holding every row of `updates` (one per rank, in rank order) in the order a single process
    writes them, so `MemoryStore.update`'s last-occurrence rule keeps what a single process keeps.

    A rank's memory rows are its events' endpoints `[src_j, dst_j, ...]` (`write_back.memory_update`), and
    its local event `j` is event `rank + j * world` of the global batch (`Shard`): rows are put back in
    global event order, so of two writes at the same time the later event wins, whichever rank held it.
    Mails delivered to the roots themselves follow the same layout. Mails also delivered to neighbours
    (APAN) are laid out by time within a rank; they are merged by time, equal times in rank order.
    History contributions add up in any order, so the ranks' rows are concatenated (on the host).
    """
    updates = [u.to_host() for u in updates]
    nodes, mem, mem_ts = _by_event([u.nodes for u in updates], [u.mem for u in updates], [u.mem_ts for u in updates])
    mails = ([u.mail_nodes for u in updates], [u.mail for u in updates], [u.mail_ts for u in updates])
    if all(torch.equal(u.mail_nodes, u.nodes) for u in updates):
        mail_nodes, mail, mail_ts = _by_event(*mails)
    else:
        mail_nodes, mail, mail_ts = _by_time(*mails)
    return MemoryUpdate(nodes=nodes, mem=mem, mem_ts=mem_ts, mail_nodes=mail_nodes, mail=mail, mail_ts=mail_ts,
                        history_nodes=torch.cat([u.history_nodes for u in updates]),
                        history=torch.cat([u.history for u in updates]),
                        history_ts=torch.cat([u.history_ts for u in updates]))


def _by_event(nodes: list[torch.Tensor], rows: list[torch.Tensor],
              times: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Concatenate the ranks' endpoint rows and sort them by global event position, then endpoint."""
    world = len(nodes)
    keys = []
    for rank, part in enumerate(nodes):
        row = torch.arange(len(part))
        keys.append(2 * (rank + world * (row // 2)) + row % 2)
    order = torch.argsort(torch.cat(keys))
    return torch.cat(nodes)[order], torch.cat(rows)[order], torch.cat(times)[order]


def _by_time(nodes: list[torch.Tensor], rows: list[torch.Tensor],
             times: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Concatenate the parts and stably sort them by time (equal times keep list and row order)."""
    all_times = torch.cat(times)
    order = torch.sort(all_times, stable=True).indices
    return torch.cat(nodes)[order], torch.cat(rows)[order], all_times[order]


class MachineMemoryStore(SharedMemoryStore):
    """This machine's one memory store, shared by its ranks (memory/shared.py) and written by local rank 0.

    `update` all-gathers the batch's update from every rank of every machine; the writer merges them
    (`merge_updates`), writes and commits the version, while the other local ranks wait until it is
    committed. `reset` and `load_state_dict` (hence `restore`) are done by the writer alone between two
    barriers, so no rank reads a half-reset store; only the writer keeps a `snapshot`. Every rank must
    make these calls for the same batches in the same order (the trainer and the update stage do).
    """

    def __init__(self, path: Path, writer: bool, num_nodes: int, dim_memory: int, dim_mail: int,
                 mailbox_size: int, pin_memory: bool, group: dist.ProcessGroup, timeout_s: float,
                 history_dim: int = 0, history_rates: tuple[float, ...] = ()) -> None:
        super().__init__(path, writer, num_nodes, dim_memory, dim_mail, mailbox_size, pin_memory, history_dim,
                         history_rates)
        self.group = group
        self.timeout_s = timeout_s

    def update(self, version: int, update: MemoryUpdate) -> None:
        """Gather batch `version`'s updates of all ranks; the writer merges, writes and commits them."""
        local = update.to_host()
        gathered: list[MemoryUpdate | None] = [None] * dist.get_world_size(self.group)
        dist.all_gather_object(gathered, local, group=self.group)
        if not self.creator:
            self.wait_for_commit(version, self.timeout_s)
            return
        super().update(version, merge_updates(gathered))

    def reset(self) -> None:
        """Zero the store for a new epoch (writer), with all ranks waiting on both sides."""
        dist.barrier(group=self.group)
        if self.creator:
            super().reset()
        dist.barrier(group=self.group)

    def snapshot(self) -> dict:
        """The writer's copy of the store; other ranks keep nothing, since `restore` is the writer's job."""
        return super().snapshot() if self.creator else {}

    def load_state_dict(self, state: dict) -> None:
        """Put back a saved state (writer), with all ranks waiting on both sides."""
        dist.barrier(group=self.group)
        if self.creator:
            super().load_state_dict(state)
        dist.barrier(group=self.group)


class AgreedStageTimes:
    """Stage times all ranks agreed on, frozen for one epoch; read by a scheduler in place of its profiler."""

    def __init__(self, taus: dict[str, float], observations: int) -> None:
        self._taus = dict(taus)
        self._observations = observations

    def tau(self, stage: str) -> float:
        """The agreed average duration of `stage`."""
        return self._taus[stage]

    def means(self) -> dict[str, float]:
        """The agreed average duration of every stage."""
        return dict(self._taus)

    def observations(self) -> int:
        """How many times the least-observed stage was measured on the least-measured rank."""
        return self._observations

    def k_min(self, k_max: int) -> int:
        """The minimal staleness bound for the agreed stage times."""
        return minimal_staleness(self._taus, k_max)


class AgreedScheduler(Scheduler):
    """`inner` deciding warm-up and staleness bound from agreed stage times, so all ranks decide alike;
    when a memory fetch starts (a matter of local timing only) it still decides from the live profiler.

    Stage times agreed at the start of an epoch hold for the epoch. The first epoch starts with none: its
    warm-up batches run one after another on every rank, and at the first pipelined batch the ranks agree
    on what their warm-up measured (`agree`, a collective every rank calls at that same batch).
    """

    def __init__(self, inner: Scheduler, agreed: AgreedStageTimes,
                 agree: Callable[[StageProfiler], AgreedStageTimes] | None = None) -> None:
        self.inner = inner
        self.agreed = agreed
        self.agree = agree
        self._agree_after_warmup = False

    def sequential_batches(self, num_batches: int, profiler: StageProfiler) -> int:
        warmup = self.inner.sequential_batches(num_batches, self.agreed)
        self._agree_after_warmup = warmup > 0 and self.agreed.observations() == 0 and self.agree is not None
        return warmup

    def staleness_bound(self, batch: int, profiler: StageProfiler) -> int:
        if self._agree_after_warmup:
            self.agreed = self.agree(profiler)
            self._agree_after_warmup = False
        return self.inner.staleness_bound(batch, self.agreed)

    @property
    def max_in_flight(self) -> int:
        return self.inner.max_in_flight

    def memory_fetch_start(self, now: float, prev_train_start: float | None, prev_train_end: float | None,
                           profiler: StageProfiler) -> float:
        return self.inner.memory_fetch_start(now, prev_train_start, prev_train_end, profiler)


class DistributedWorld:
    """One rank of a data-parallel run (see the module docstring); made by `init_world`."""

    def __init__(self, rank: int, size: int, local_rank: int, node_rank: int, host_group: dist.ProcessGroup,
                 schedule_group: dist.ProcessGroup, timeout_s: float) -> None:
        self.shard = Shard(rank, size)
        self.local_rank = local_rank
        self.node_rank = node_rank
        self.host_group = host_group
        self.schedule_group = schedule_group
        self.timeout_s = timeout_s
        self._stores: list[MachineMemoryStore] = []

    @property
    def rank(self) -> int:
        return self.shard.rank

    @property
    def size(self) -> int:
        return self.shard.world

    def place(self, device: torch.device) -> torch.device:
        return torch.device("cuda", self.local_rank) if device.type == "cuda" else device

    def learning_rate(self, lr: float) -> float:
        """`lr` scaled by the square root of the number of processes (the global batch grows with it)."""
        return lr * math.sqrt(self.size)

    def global_batches(self, indices: np.ndarray, batch_size: int) -> list[np.ndarray]:
        return self.shard.global_batches(indices, batch_size)

    def share(self, batch_len: int) -> np.ndarray:
        return self.shard.share(batch_len)

    def memory_store(self, num_nodes: int, dim_memory: int, dim_mail: int, mailbox_size: int,
                     pin_memory: bool, history_dim: int = 0, history_rates: tuple[float, ...] = ()) -> MemoryStore:
        """This machine's shared store: local rank 0 creates it, then the other local ranks attach and the
        table files are unlinked (the memory stays mapped; a crash leaves nothing in /dev/shm)."""
        token: list[str | None] = [uuid.uuid4().hex if self.rank == 0 else None]
        dist.broadcast_object_list(token, src=0, group=self.host_group)
        path = shared_memory_root() / f"mspipe-{token[0]}-node{self.node_rank}"
        writer = self.local_rank == 0

        def open_store() -> MachineMemoryStore:
            return MachineMemoryStore(path, writer, num_nodes, dim_memory, dim_mail, mailbox_size, pin_memory,
                                      self.host_group, self.timeout_s, history_dim, history_rates)

        store = open_store() if writer else None
        dist.barrier(group=self.host_group)
        store = store or open_store()
        dist.barrier(group=self.host_group)
        if writer:
            store.unlink_tables()
        self._stores.append(store)
        return store

    def train_module(self, model: nn.Module) -> nn.Module:
        """`model` in DDP (parameters broadcast from rank 0 now; gradients averaged at every step).

        Parameters that a batch leaves without gradient (e.g. used only by the detached write-back) are
        allowed, since models and plugins differ in which parts each loss reaches.
        """
        device = next(model.parameters()).device
        for module in model.modules():
            if hasattr(module, "sum_across_processes"):
                module.sum_across_processes = all_reduce_sum
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                       broadcast_buffers=False, find_unused_parameters=True)

    def split_scores(self, positions: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All ranks' scored rows gathered and put in split order (the same arrays on every rank)."""
        gathered: list[tuple[np.ndarray, np.ndarray, np.ndarray] | None] = [None] * self.size
        dist.all_gather_object(gathered, (positions, pos, neg), group=self.host_group)
        return scatter_scores(*(np.concatenate(part) for part in zip(*gathered)))

    def agreed_scheduler(self, scheduler: Scheduler, profiler: StageProfiler) -> Scheduler:
        """`scheduler` reading each stage's longest time over the ranks and the fewest observations; in the first
        epoch, agreed again once the warm-up has measured them (on a group of its own, since the update
        stage's collectives run on the host group meanwhile)."""
        return AgreedScheduler(scheduler, agreed_stage_times(profiler, self.size, self.host_group),
                               agree=lambda measured: agreed_stage_times(measured, self.size, self.schedule_group))

    def close(self) -> None:
        """Remove this machine's shared stores (local rank 0) and leave the process groups."""
        for store in self._stores:
            store.close()
        dist.destroy_process_group()


def launch_environment() -> dict[str, str]:
    """The variables `torchrun` sets for each rank; raises LaunchError naming the first one missing."""
    missing = [name for name in LAUNCH_VARIABLES if name not in os.environ]
    if missing:
        raise LaunchError(f"--distributed: environment variable {missing[0]} is not set; "
                          "launch with torchrun --nproc_per_node=N scripts/train.py ... --distributed")
    return {name: os.environ[name] for name in LAUNCH_VARIABLES}


def init_world(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> DistributedWorld:
    """Join the run `torchrun` launched: NCCL for a CUDA `device` (this rank on cuda:LOCAL_RANK), gloo on
    the CPU, plus two gloo groups (the host group; the schedule group, for the first epoch's mid-epoch
    agreement on stage times); every collective fails after `timeout_s` instead of hanging."""
    env = launch_environment()
    local_rank = int(env["LOCAL_RANK"])
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    timeout = timedelta(seconds=timeout_s)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    host_group = dist.new_group(backend="gloo", timeout=timeout)
    schedule_group = dist.new_group(backend="gloo", timeout=timeout)
    node_rank = int(os.environ.get("GROUP_RANK", "0"))
    return DistributedWorld(dist.get_rank(), dist.get_world_size(), local_rank, node_rank, host_group,
                            schedule_group, timeout_s)
