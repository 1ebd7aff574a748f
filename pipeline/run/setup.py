"""Builds everything a run needs from a validated config and an event stream: the split, the samplers,
the model, the optimizer, the memory store, the negatives and the stage functions for each split.

The world (pipeline/run/world.py: `LocalWorld`, the default, or `DistributedWorld`) decides what differs
when several processes train together: each process's share of every batch, the memory store, the module
the train stage calls and the learning rate."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from common.errors import DataError
from graph.events import EventStream, repeated_pairs
from graph.negatives import batch_seed, sample_negatives
from graph.dyglib import held_out_nodes
from graph.split import Split, chronological_split
from memory.store import MemoryStore
from models.tgnn import TemporalModel, build_model
from pipeline.stages.device import pins_host_memory
from pipeline.stages.features import feature_table
from pipeline.stages.mitigation import SimilarityTable
from pipeline.stages.link_prediction import GradientStep, LinkPredictionStages, Mitigation, Scoring, StreamTensors
from pipeline.run.config import RunConfig
from pipeline.run.evaluation import require_negative_pairs, split_negatives
from pipeline.run.sizes import StreamSizes, check_sizes
from pipeline.run.world import LocalWorld, World, local_batches
from sampler.tcsr import TCSR
from sampler.temporal import TemporalSampler


@dataclass
class RunSetup:
    """The long-lived objects of one training run."""

    cfg: RunConfig
    events: EventStream
    split: Split
    device: torch.device
    seed: int
    stream: StreamTensors
    train_sampler: TemporalSampler
    eval_sampler: TemporalSampler
    model: TemporalModel
    train_module: torch.nn.Module  # what the train stage calls: `model`, or `model` in DDP
    optimizer: torch.optim.Optimizer
    store: MemoryStore | None
    train_candidates: np.ndarray
    mitigation: Mitigation | None
    world: World
    _eval_negatives: dict[str, tuple[np.ndarray, np.ndarray | None]] = field(default_factory=dict)

    @property
    def train_batches(self) -> list[np.ndarray]:
        """The training events of this process's share of every global batch."""
        return local_batches(self.world, self.split.train, self.cfg.train.batch_size)

    def eval_negatives(self, split_name: str, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """`split_negatives` of a split, drawn once per run (they are fixed, and the historical ones take a
        pass over the stream)."""
        if split_name not in self._eval_negatives:
            self._eval_negatives[split_name] = split_negatives(self.cfg, self.events, self.split, self.seed,
                                                               split_name, indices)
        return self._eval_negatives[split_name]

    @cached_property
    def repeated_pairs(self) -> np.ndarray:
        """`repeated_pairs` of the stream, computed once per run (every evaluation reads it)."""
        return repeated_pairs(self.events)

    def eval_positions(self, num_events: int) -> list[np.ndarray]:
        """Positions in an evaluation split of `num_events` of this process's share of every batch."""
        return local_batches(self.world, np.arange(num_events), self.cfg.eval.batch_size)


def _sampler(events: EventStream, indices: np.ndarray, cfg: RunConfig, seed: int) -> TemporalSampler:
    """A sampler over the events `indices`: a prepared stream's own index when they are the whole stream,
    else an index built (in linear time) over them."""
    if events.index is not None and len(indices) == events.num_events and cfg.sampler.add_reverse:
        tcsr = TCSR.from_arrays(events.index)
    else:
        tcsr = TCSR.from_events(
            events.src[indices], events.dst[indices], events.t[indices], events.num_nodes,
            eid=indices.astype(np.int64), add_reverse=cfg.sampler.add_reverse,
        )
    return TemporalSampler(tcsr, list(cfg.sampler.fanouts), cfg.sampler.strategy, seed=seed)


def adam_kernel(device: torch.device) -> dict[str, bool]:
    """Adam's fastest exact update on `device`: one fused kernel on CUDA (no per-parameter launches or reads
    of the step count), else the multi-tensor (`foreach`) update, which torch picks by default on CUDA only."""
    return {"fused": True} if device.type == "cuda" else {"foreach": True}


def build_setup(cfg: RunConfig, events: EventStream, device: torch.device, seed: int,
                world: World | None = None) -> RunSetup:
    """Create the run's objects; training sees only training events, evaluation sees the whole stream.

    `world` (default: a single process) says how this process takes part in a data-parallel run.
    """
    world = world if world is not None else LocalWorld()
    check_sizes(cfg, "the config", StreamSizes.of(events))  # before anything of the sizes it sets is allocated
    torch.manual_seed(seed)
    split = run_split(cfg, events, seed)
    require_every_part(events, split)
    require_negative_pairs(cfg, events, {"train": split.train, "val": split.val, "test": split.test})
    readers = cfg.pipeline.feature_readers
    stream = StreamTensors(
        src=events.src, dst=events.dst, t=events.t,  # recent neighbours' rows sit close together in the file
        edge_feat=feature_table(events.edge_feat, device, readers, scattered=cfg.sampler.strategy != "recent"),
        node_feat=feature_table(events.node_feat, device, readers, scattered=True),
    )
    model = build_model(cfg, events.dim_node_feat, events.dim_edge_feat).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=world.learning_rate(cfg.train.lr),
                                 weight_decay=cfg.train.weight_decay, **adam_kernel(device))
    store = None
    if model.uses_memory:
        store = world.memory_store(events.num_nodes, model.dim_memory, model.dim_mail, model.mailbox_size,
                                   pin_memory=pins_host_memory(device), history_dim=model.history_dim,
                                   history_rates=model.history_rates)
    mitigation = None
    mit_cfg = cfg.pipeline.mitigation
    if mit_cfg.enabled and store is not None:
        mitigation = Mitigation(
            table=SimilarityTable(events.num_nodes, mit_cfg.top_k, measure=mit_cfg.similarity),
            quantile=mit_cfg.quantile, gamma=mit_cfg.gamma, refresh_every=mit_cfg.refresh_every,
        )
    return RunSetup(
        cfg=cfg, events=events, split=split, device=device, seed=seed, stream=stream,
        train_sampler=_sampler(events, split.train, cfg, seed),
        eval_sampler=_sampler(events, np.arange(events.num_events), cfg, seed),
        model=model, train_module=world.train_module(model), optimizer=optimizer, store=store,
        train_candidates=np.unique(events.dst[split.train]),
        mitigation=mitigation, world=world,
    )


def run_split(cfg: RunConfig, events: EventStream, seed: int) -> Split:
    """The run's chronological split; its held-out nodes are drawn with `seed`, or as DyGLib draws them
    under `eval.protocol: dyglib` (the same for every seed). Under `eval.protocol: tgb`, TGB's split: by the
    time quantiles alone (never a file's ext_roll), no node held out (pipeline/run/tgb.py)."""
    tgb = cfg.eval.protocol == "tgb"
    return chronological_split(events, val_ratio=cfg.eval.val_ratio, test_ratio=cfg.eval.test_ratio,
                               inductive_ratio=0.0 if tgb else cfg.eval.inductive_ratio, seed=seed,
                               by_ext_roll=False if tgb else None,
                               draw_held_out=held_out_nodes if cfg.eval.protocol == "dyglib" else None)


def require_every_part(events: EventStream, split: Split) -> None:
    """Training, validation and test each need at least one event; a stream too short for that is a data error."""
    sizes = {"training": len(split.train), "validation": len(split.val), "test": len(split.test)}
    if min(sizes.values()) == 0:
        parts = ", ".join(f"{count} {name}" for name, count in sizes.items())
        raise DataError(f"{events.origin}: its {events.num_events} events split by time into {parts} events; training, "
                        "validation and test each need at least one event (more events, or other eval.val_ratio, "
                        "eval.test_ratio, eval.inductive_ratio)")


def training_stages(setup: RunSetup, epoch: int) -> LinkPredictionStages:
    """Stage functions for one training epoch; negatives and uniform draws are seeded per global batch,
    and a process takes the negatives of its share, so they do not depend on the number of processes."""
    world = setup.world
    global_batches = world.global_batches(setup.split.train, setup.cfg.train.batch_size)
    batches = setup.train_batches
    num_neg = setup.cfg.train.num_neg

    def negatives(i: int, events: np.ndarray) -> tuple[np.ndarray, None]:
        size = len(global_batches[i])
        drawn = sample_negatives(setup.train_candidates, (num_neg, size), batch_seed(setup.seed, epoch, i))
        return drawn[:, world.share(size)].reshape(-1), None

    return LinkPredictionStages(
        batches=batches, stream=setup.stream, sampler=setup.train_sampler, negatives=negatives,
        num_neg=num_neg, model=setup.train_module, store=setup.store, device=setup.device,
        step=GradientStep(setup.optimizer), sample_seed=lambda i: batch_seed(setup.seed + 1, epoch, i),
        mitigation=setup.mitigation, query_time=setup.cfg.embedding.query_time,
    )


def evaluation_stages(setup: RunSetup, split_name: str, indices: np.ndarray, version_offset: int) -> LinkPredictionStages:
    """Stage functions that score a split against its fixed negatives (`split_negatives`)."""
    neg_dst, neg_src = setup.eval_negatives(split_name, indices)
    positions = setup.eval_positions(len(indices))
    batches = [indices[p] for p in positions]

    def negatives(i: int, events: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        rows = positions[i]
        return neg_dst[rows].T.reshape(-1), None if neg_src is None else neg_src[rows].T.reshape(-1)

    return LinkPredictionStages(
        batches=batches, stream=setup.stream, sampler=setup.eval_sampler, negatives=negatives,
        num_neg=neg_dst.shape[1], model=setup.model, store=setup.store, device=setup.device,
        step=Scoring(), version_offset=version_offset, sample_seed=lambda i: batch_seed(setup.seed + 2, 0, i),
        query_time=setup.cfg.embedding.query_time,
    )
