"""A PyTorch Geometric TGN, written after PyG's own `examples/tgn.py`, as the outside reference that
`scripts/benchmark.py compare` measures this project's TGN against.

It trains on this project's `EventStream` and `Split`, with the same training negatives (seeded per epoch
and batch) and the same fixed evaluation negatives as `pipeline.run.trainer.train`, so the two systems see
exactly the same events and differ only in their implementation. torch_geometric is an optional
dependency (`pip install -e .[bench]`), imported only when the reference runs.
"""
from __future__ import annotations

import time
from types import ModuleType

import numpy as np
import torch

from common.errors import UserError, one_line
from graph.events import EventStream
from graph.negatives import batch_seed, eval_negatives, sample_negatives
from graph.split import Split
from graph.split import chronological_batches
from pipeline.stages.link_prediction import link_prediction_loss
from pipeline.run.evaluation import ranking_metrics

PYG_VERSION = "2.8.1"  # the version the comparison was written and measured with (pyproject's `bench` extra)
INSTALL_HINT = f"pip install torch_geometric=={PYG_VERSION} (or pip install -e .[bench])"


def import_pyg() -> ModuleType:
    """Import torch_geometric with its TGN module; the one place it is imported, so tests can fake its absence."""
    import torch_geometric
    import torch_geometric.nn.models.tgn  # noqa: F401  (binds torch_geometric.nn.models.tgn)
    return torch_geometric


def require_pyg() -> ModuleType:
    """torch_geometric, or a one-line `UserError` that says how to install it."""
    try:
        return import_pyg()
    except ImportError as error:
        raise UserError(f"the PyG reference needs torch_geometric, which cannot be imported ({one_line(error)}); "
                        f"install it: {INSTALL_HINT}") from None


class GraphAttentionEmbedding(torch.nn.Module):
    """PyG example's embedding: graph attention (a TransformerConv) over the most recent neighbours, with the
    time since each neighbour's last memory update, encoded by the memory's time encoder, on every edge."""

    def __init__(self, conv: torch.nn.Module, time_enc: torch.nn.Module) -> None:
        super().__init__()
        self.conv = conv
        self.time_enc = time_enc

    def forward(self, x: torch.Tensor, last_update: torch.Tensor, edge_index: torch.Tensor, t: torch.Tensor,
                msg: torch.Tensor) -> torch.Tensor:
        rel_t = last_update[edge_index[0]] - t
        edge_attr = torch.cat([self.time_enc(rel_t.to(x.dtype)), msg], dim=-1)
        return self.conv(x, edge_index, edge_attr)


class LinkPredictor(torch.nn.Module):
    """PyG example's link predictor: the logit of an edge from its endpoints' embeddings."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.lin_src = torch.nn.Linear(channels, channels)
        self.lin_dst = torch.nn.Linear(channels, channels)
        self.lin_final = torch.nn.Linear(channels, 1)

    def forward(self, z_src: torch.Tensor, z_dst: torch.Tensor) -> torch.Tensor:
        return self.lin_final((self.lin_src(z_src) + self.lin_dst(z_dst)).relu())


class PygTGN:
    """TGN memory, neighbour loader, embedding and predictor of PyG's example, stepping over event batches.

    The neighbour loader numbers events in insertion order, so `inserted` (the stream's event indices in the
    order they are inserted: training, then validation, then test) maps its edge ids back to times and
    messages.
    """

    def __init__(self, pyg: ModuleType, events: EventStream, inserted: np.ndarray, *, memory_dim: int,
                 time_dim: int, embedding_dim: int, neighbours: int) -> None:
        tgn = pyg.nn.models.tgn
        # PyG keeps times as int64 (TGNMemory.last_update): whole units, counted from the stream's start.
        self.t = torch.from_numpy(np.rint(events.t - events.t[0]).astype(np.int64))
        # No edge features: a 1-d zero message, as PyG needs a raw message of some width.
        self.msg = (torch.zeros(events.num_events, 1) if events.edge_feat is None
                    else torch.from_numpy(events.edge_feat))
        self.src, self.dst = torch.from_numpy(events.src), torch.from_numpy(events.dst)
        self.inserted_t, self.inserted_msg = self.t[inserted], self.msg[inserted]
        msg_dim = self.msg.shape[1]
        memory = tgn.TGNMemory(events.num_nodes, msg_dim, memory_dim, time_dim,
                               message_module=tgn.IdentityMessage(msg_dim, memory_dim, time_dim),
                               aggregator_module=tgn.LastAggregator())
        conv = pyg.nn.TransformerConv(memory_dim, embedding_dim // 2, heads=2, dropout=0.1,
                                      edge_dim=msg_dim + time_dim)
        self.model = torch.nn.ModuleDict({
            "memory": memory, "gnn": GraphAttentionEmbedding(conv, memory.time_enc),
            "link_pred": LinkPredictor(embedding_dim)})
        self.neighbour_loader = tgn.LastNeighborLoader(events.num_nodes, size=neighbours)
        self.assoc = torch.empty(events.num_nodes, dtype=torch.long)

    def reset_state(self) -> None:
        """Empty memory and neighbourhoods, as at the start of every epoch."""
        self.model["memory"].reset_state()
        self.neighbour_loader.reset_state()

    def step(self, batch: np.ndarray, neg_dst: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of the batch's events and of (src, negative dst); then the batch enters memory and the
        neighbour loader, as in PyG's example."""
        batch_t = torch.from_numpy(batch)
        src, dst, neg = self.src[batch_t], self.dst[batch_t], torch.from_numpy(neg_dst)
        n_id, edge_index, e_id = self.neighbour_loader(torch.cat([src, dst, neg]).unique())
        self.assoc[n_id] = torch.arange(n_id.size(0))
        memory = self.model["memory"]
        z, last_update = memory(n_id)
        z = self.model["gnn"](z, last_update, edge_index, self.inserted_t[e_id], self.inserted_msg[e_id])
        z_src = z[self.assoc[src]]
        pos_out = self.model["link_pred"](z_src, z[self.assoc[dst]])
        neg_out = self.model["link_pred"](z_src, z[self.assoc[neg]])
        memory.update_state(src, dst, self.t[batch_t], self.msg[batch_t])
        self.neighbour_loader.insert(src, dst)
        return pos_out, neg_out


def train_epoch(tgn: PygTGN, optimizer: torch.optim.Optimizer, train: np.ndarray, candidates: np.ndarray,
                batch_size: int, epoch: int, seed: int) -> float:
    """One epoch over the training events from empty memory; returns its training seconds."""
    tgn.model.train()
    tgn.reset_state()
    started = time.perf_counter()
    for i, batch in enumerate(chronological_batches(train, batch_size)):
        optimizer.zero_grad()
        pos_out, neg_out = tgn.step(batch, sample_negatives(candidates, len(batch), batch_seed(seed, epoch, i)))
        loss = link_prediction_loss(pos_out, neg_out)
        loss.backward()
        optimizer.step()
        tgn.model["memory"].detach()
    return time.perf_counter() - started


@torch.no_grad()
def evaluate(tgn: PygTGN, name: str, indices: np.ndarray, candidates: np.ndarray, batch_size: int,
             seed: int) -> float:
    """AP over the whole split against fixed negatives (this project's, one per event), memory continuing."""
    tgn.model.eval()
    negatives = eval_negatives(candidates, len(indices), 1, name, seed)[:, 0]
    pos, neg = [], []
    for batch, neg_dst in zip(chronological_batches(indices, batch_size), chronological_batches(negatives, batch_size)):
        pos_out, neg_out = tgn.step(batch, neg_dst)
        pos.append(pos_out.sigmoid().view(-1).numpy())
        neg.append(neg_out.sigmoid().view(-1).numpy())
    return ranking_metrics(np.concatenate(pos), np.concatenate(neg)[:, None])["ap"]


def train_pyg_tgn(events: EventStream, split: Split, *, batch_size: int, epochs: int, memory_dim: int = 100,
                  time_dim: int = 100, embedding_dim: int = 100, neighbours: int = 10, lr: float = 1e-4,
                  seed: int = 0) -> dict:
    """Train PyG's TGN on `split.train` for `epochs` (Adam, one negative per event), then score validation
    and test after the last epoch; return training throughput (training batches only), AP and versions."""
    pyg = require_pyg()
    torch.manual_seed(seed)
    inserted = np.concatenate([split.train, split.val, split.test])
    tgn = PygTGN(pyg, events, inserted, memory_dim=memory_dim, time_dim=time_dim, embedding_dim=embedding_dim,
                 neighbours=neighbours)
    optimizer = torch.optim.Adam(tgn.model.parameters(), lr=lr)
    train_candidates = np.unique(events.dst[split.train])
    epoch_time_s = [train_epoch(tgn, optimizer, split.train, train_candidates, batch_size, epoch, seed)
                    for epoch in range(epochs)]
    all_destinations = np.unique(events.dst)
    val_ap = evaluate(tgn, "val", split.val, all_destinations, batch_size, seed)
    test_ap = evaluate(tgn, "test", split.test, all_destinations, batch_size, seed)
    return {
        "train_events_per_s": len(split.train) * epochs / sum(epoch_time_s),
        "epoch_time_s": epoch_time_s,
        "val_ap": val_ap,
        "test_ap": test_ap,
        "torch_version": torch.__version__,
        "pyg_version": pyg.__version__,
    }
