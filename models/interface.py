"""What a temporal model consumes per batch (`ModelInputs`); what it hands back is the memory package's
`MemoryUpdate`. The only types the pipeline shares with the models."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import dgl
import torch
from torch import Tensor

from models.distinct import Groups

if TYPE_CHECKING:
    from memory.batch import MemoryBatch


@dataclass
class ModelInputs:
    """One batch, on the model's device.

    `blocks[-1]`'s destination nodes are the roots `[src (B), dst (B), negative dst (B * num_neg)]`, where
    negative `k * B + j` is scored against source `j`; with `negative_sources` (evaluation under DyGLib's
    historical or inductive negatives), `[negative src (B * num_neg)]` follow, and negative `i` is scored
    against negative source `i` instead. `memory` holds the rows of `blocks[0].srcdata["ID"]`.
    `input_states` groups the input slots whose node state is equal by construction (same memory row,
    same time); the model sets it for its embedding, which may compute per group instead of per slot.
    Under `embedding.query_time: batch`, `blocks[-1]`'s destinations are the batch's distinct nodes at its
    first event time instead: `root_rows[r]` is root `r`'s destination row and `root_ts` the roots' own
    event times (None, the default, where the destinations are the roots themselves).
    """

    blocks: list[dgl.DGLBlock]
    memory: MemoryBatch | None
    edge_feat: list[Tensor | None]
    node_feat: Tensor | None
    root_edge_feat: Tensor | None
    num_pos: int
    num_neg: int = 1
    negative_sources: bool = False
    input_states: Groups | None = None
    root_rows: Tensor | None = None
    root_ts: Tensor | None = None

    @property
    def num_roots(self) -> int:
        """Number of roots the embedding computes: `blocks[-1]`'s destinations (the roots scored in this batch,
        or their distinct nodes under `root_rows`)."""
        return self.blocks[-1].num_dst_nodes()

    def per_root(self, rows: Tensor) -> Tensor:
        """`rows` of `blocks[-1]`'s destinations (embeddings, say) for every root scored, in root order."""
        return rows if self.root_rows is None else rows.index_select(0, self.root_rows)

    def root_ids(self) -> Tensor:
        """Node ids of the roots scored, in root order."""
        return self.per_root(self.blocks[-1].dstdata["ID"])

    def root_times(self) -> Tensor:
        """Event times of the roots scored, in root order."""
        return self.blocks[-1].dstdata["ts"] if self.root_rows is None else self.root_ts

    @property
    def num_input_nodes(self) -> int:
        """Number of input nodes (source nodes of the input layer); the roots come first."""
        return self.blocks[0].num_src_nodes()

    def block_edge_feat(self, layer: int) -> Tensor:
        """Features of `blocks[layer]`'s edges; zero columns when the stream has none, so layers need no branch."""
        block = self.blocks[layer]
        return _or_zero_width(self.edge_feat[layer], block.num_edges(), block.device)

    def event_edge_feat(self) -> Tensor:
        """Features of the batch's positive events (B rows); zero columns when the stream has none."""
        return _or_zero_width(self.root_edge_feat, self.num_pos, self.blocks[-1].device)


def _or_zero_width(features: Tensor | None, rows: int, device: torch.device) -> Tensor:
    return features if features is not None else torch.zeros((rows, 0), device=device)
