"""The temporal model (memory updater -> embedding -> edge predictor) and its construction from a config.

TGN = GRU updater + temporal attention; JODIE = RNN updater + time projection; APAN = mailbox transformer +
identity embedding with mails delivered to sampled neighbours; DyRep = RNN updater whose mails carry the
other endpoint's embedding (models/dyrep.py) + temporal attention; TGAT = no memory + temporal attention.
The model knows nothing of threads or stores: it reads a `MemoryBatch` and returns the batch's `MemoryUpdate`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from common.errors import UserError
from memory.batch import MemoryBatch, MemoryUpdate
from models.config import UPDATE_TIMES, MemoryConfig, ModelSections
from models.distinct import Groups, group, group_pairs
from models.embedding import build_embedding
from models.interface import ModelInputs
from models.memory_updaters import MemoryRows, MemoryUpdater, build_updater, source_gap_scale
from models.common_neighbours import RootNeighbourhoods
from models.pair_history import RootHistories, history_contributions, neighbour_histories
from models.predictor import PREDICTORS, PredictorSpec
from models.write_back import memory_update, neighbour_deliveries

@dataclass(frozen=True)
class MemoryLayout:
    """Shape of the per-node state a model keeps in the memory store, and where its mails go; with a
    predictor of pair history, the width of a node's history row and its decay rates (else 0 and none)."""

    dim_memory: int
    dim_mail: int
    mailbox_size: int
    deliver_to_neighbours: bool
    history_dim: int = 0
    history_rates: tuple[float, ...] = ()


class TemporalModel(nn.Module):
    """A memory-based temporal GNN: `forward(inputs) -> (pos_logits, neg_logits, MemoryUpdate | None)`.

    The updater runs on the input nodes with mail (only the roots when the embedding ignores neighbours);
    its result, plus a projection of node features if any, is the node state the embedding reads. It
    brings each memory to `update_time`: "query" (TGL), the input slot's own time, so slots that read the
    same memory row at the same time share one state; "batch", the time of the batch's first event, so
    all slots of a memory row share one state. TGL's blocks repeat a node in every neighbourhood it is
    sampled into; the updater runs once per distinct state and the embedding reads the grouping.
    Without memory (`updater=None`) the node state is the node features, one state per node.
    """

    def __init__(self, embedding: nn.Module, predictor: nn.Module, updater: MemoryUpdater | None = None,
                 layout: MemoryLayout | None = None, node_feat_map: nn.Module | None = None,
                 update_time: str = MemoryConfig.update_time) -> None:
        super().__init__()
        if update_time not in UPDATE_TIMES:
            raise ValueError(f"update_time must be one of {UPDATE_TIMES}, got '{update_time}'")
        self.update_time = update_time
        self.embedding = embedding
        self.predictor = predictor
        self.updater = updater
        self.layout = layout
        self.node_feat_map = node_feat_map
        self.uses_memory = updater is not None
        self.reads_neighbourhoods = getattr(predictor, "reads_neighbourhoods", False)
        self.reads_histories = getattr(predictor, "reads_histories", False)
        self.reads_neighbour_histories = getattr(predictor, "reads_neighbour_histories", False)
        self.dim_memory = layout.dim_memory if layout else 0
        self.dim_mail = layout.dim_mail if layout else 0
        self.mailbox_size = layout.mailbox_size if layout else 0
        self.history_dim = layout.history_dim if layout else 0
        self.history_rates = layout.history_rates if layout else ()

    def forward(self, inputs: ModelInputs) -> tuple[Tensor, Tensor, MemoryUpdate | None]:
        """Logits `(B,)` of the positive events, `(B * num_neg,)` of the negatives, and the batch's write-back."""
        reads_neighbours = self.embedding.uses_neighbours or self.reads_neighbourhoods
        count = inputs.num_input_nodes if reads_neighbours else inputs.num_roots
        new_mem = None
        if self.updater is None:
            states = group(inputs.blocks[0].srcdata["ID"][:count])
        else:
            update_ts, states = self._update_times(inputs, count)
            new_mem = self._updated_memory(inputs.memory, update_ts, count, states, inputs.num_pos)
        state = self._node_state(new_mem, inputs.node_feat, count, inputs.blocks[0].device)
        embeddings = inputs.per_root(self.embedding(state, replace(inputs, input_states=states)))
        pos, neg = self._scores(embeddings, state, inputs)
        return pos, neg, None if new_mem is None else self._write_back(new_mem, embeddings, inputs)

    def node_states_at(self, memory: MemoryBatch | None, node_feat: Tensor | None, time: Tensor, num_sources: int,
                       count: int, device: torch.device) -> Tensor:
        """The node states `(count, dim_state)` the embedding reads for a memory read (or none, without memory)
        of `count` nodes whose first `num_sources` are a batch's sources, every memory brought to `time` (a
        0-d tensor): what `forward` computes per input slot under `update_time: batch`, where a state depends
        on the node alone (`pipeline/run/ranking.py` computes each node's state once per batch with it)."""
        new_mem = None
        if self.updater is not None:
            new_mem = self._updated_memory(memory, time.expand(count), count, group(memory.row[:count]), num_sources)
        return self._node_state(new_mem, node_feat, count, device)

    def _updated_memory(self, memory: MemoryBatch, update_ts: Tensor, count: int, states: Groups,
                        num_sources: int) -> Tensor:
        """The updater's new memory of the first `count` rows of `memory` at `update_ts`, computed once per
        group of `states`; the gap scale, for updaters that read one, is that of the first `num_sources` rows."""
        rows = MemoryRows.first(memory, update_ts, count)
        if self.updater.reads_gap_scale:
            rows = replace(rows, gap_scale=source_gap_scale(rows, num_sources))
        return self.updater(rows.select(states.first)).index_select(0, states.index)

    def _update_times(self, inputs: ModelInputs, count: int) -> tuple[Tensor, Groups]:
        """The time each of the first `count` input slots' memory is brought to, and the slots grouped by
        the state they get (equal memory row, and equal time under "query")."""
        slot_ts = inputs.blocks[0].srcdata["ts"][:count]
        rows = inputs.memory.row[:count]
        if self.update_time == "query":
            return slot_ts, group_pairs(rows, slot_ts)
        first_event = inputs.root_times()[:inputs.num_pos].min()
        return first_event.expand(count), group(rows)

    def _scores(self, embeddings: Tensor, state: Tensor, inputs: ModelInputs) -> tuple[Tensor, Tensor]:
        """The predictor's logits of the positives and the negatives (against their own sources, if given)."""
        neighbourhoods, histories, neighbours_histories = None, None, None
        if self.reads_neighbourhoods:
            neighbourhoods = RootNeighbourhoods.from_block(inputs.blocks[-1], state, self.predictor.width)
            if self.reads_neighbour_histories:
                neighbours_histories = neighbour_histories(neighbourhoods, inputs.memory,
                                                           inputs.blocks[-1].dstdata["ts"], self.history_rates)
        if self.reads_histories:
            histories = RootHistories.at(inputs.memory, inputs.root_ids(), inputs.root_times(), self.history_rates,
                                         inputs.root_rows)
        def per_root(read):  # the sampled neighbourhoods are those of blocks[-1]'s destinations
            return read if read is None or inputs.root_rows is None else read.select(inputs.root_rows)

        reads = [read for read in (per_root(neighbourhoods), histories, per_root(neighbours_histories))
                 if read is not None]
        if not inputs.negative_sources:
            return self._predict(embeddings, reads, inputs.num_pos, inputs.num_neg)
        num_pos, count = inputs.num_pos, inputs.num_pos * inputs.num_neg
        pos, _ = self._predict(embeddings, reads, num_pos, 0)  # reads only 2 * num_pos rows
        negatives = 2 * num_pos + torch.arange(2 * count, device=embeddings.device)
        neg, _ = self._predict(embeddings, reads, count, 0, torch.cat([negatives[count:], negatives[:count]]))
        return pos, neg

    def _predict(self, embeddings: Tensor, reads: list, num_pos: int, num_neg: int,
                 rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The predictor on the roots `rows` (all, in order, by default) laid out as it expects, with what it
        reads of them besides their embeddings (neighbourhoods, histories, the neighbours' histories) in the
        same order."""
        if rows is not None:
            embeddings, reads = embeddings[rows], [read.select(rows) for read in reads]
        return self.predictor(embeddings, num_pos, num_neg, *reads)

    def predict(self, embeddings: Tensor, neighbourhoods: RootNeighbourhoods | None, num_pos: int,
                num_neg: int, pair_features: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The predictor's logits of roots laid out `[src (B), dst (B), negative dst (B * num_neg)]`, with their
        neighbourhoods in the same order if the predictor reads them (else None) and, for a predictor of pair
        history, the features of every scored pair in `pair_rows` order (`models/pair_history.py`)."""
        if self.reads_histories:
            return self.predictor.scores_with(embeddings, num_pos, num_neg, neighbourhoods, pair_features)
        return self._predict(embeddings, [] if neighbourhoods is None else [neighbourhoods], num_pos, num_neg)

    def _node_state(self, new_mem: Tensor | None, node_feat: Tensor | None, count: int, device: torch.device) -> Tensor:
        if node_feat is None:
            if new_mem is None:
                return torch.zeros((count, 0), device=device)
            return new_mem
        features = node_feat[:count]
        return features if new_mem is None else new_mem + self.node_feat_map(features)

    def _write_back(self, new_mem: Tensor, embeddings: Tensor, inputs: ModelInputs) -> MemoryUpdate:
        positives = 2 * inputs.num_pos
        ids, ts = inputs.root_ids()[:positives], inputs.root_times()[:positives]
        deliveries = None
        if self.layout.deliver_to_neighbours:
            deliveries = neighbour_deliveries(inputs.blocks[-1], positives)
        partner = embeddings[:positives] if self.updater.mails_carry_embedding else None
        update = memory_update(inputs.per_root(new_mem)[:positives], ids, ts, inputs.event_edge_feat(), deliveries,
                               partner)
        if not self.history_dim:
            return update
        src, dst = ids.chunk(2)
        nodes, history, history_ts = history_contributions(src, dst, ts[:inputs.num_pos], self.history_dim // 2)
        return replace(update, history_nodes=nodes, history=history, history_ts=history_ts)


def build_model(cfg: ModelSections, dim_node_feat: int, dim_edge_feat: int) -> TemporalModel:
    """The model a validated config describes, for a stream with the given feature sizes.

    Reads the `memory` (None for a memory-less model), `embedding` and `predictor` sections, each part
    looked up by name in its registry. The mailbox transformer takes `embedding.heads` and
    `embedding.dropout` (APAN's identity embedding uses neither, and the memory section has no such keys).
    """
    mem_cfg, emb_cfg = cfg.memory, cfg.embedding
    updater, layout, node_feat_map = None, None, None
    dim_state = dim_node_feat
    if mem_cfg is not None:
        layout = MemoryLayout(mem_cfg.dim, 2 * mem_cfg.dim + dim_edge_feat, mem_cfg.mailbox_size,
                              mem_cfg.deliver_to == "neighbours")
        updater = build_updater(mem_cfg.updater, layout.dim_memory, layout.dim_mail, mem_cfg.dim_time,
                                emb_cfg.heads, emb_cfg.dropout, mem_cfg.normalize)
        node_feat_map = nn.Linear(dim_node_feat, layout.dim_memory) if dim_node_feat > 0 else None
        dim_state = layout.dim_memory
    embedding = build_embedding(emb_cfg, dim_state, dim_edge_feat)
    if updater is not None and updater.mails_carry_embedding and embedding.dim_out != layout.dim_memory:
        raise UserError(f"memory updater '{mem_cfg.updater}' writes embeddings into mails: key "
                        f"'embedding.dim_out' ({embedding.dim_out}) must equal 'memory.dim' ({layout.dim_memory})")
    pred_cfg = cfg.predictor
    predictor = PREDICTORS.get(pred_cfg.module)(
        PredictorSpec(embedding.dim_out, dim_state, cfg.sampler.fanouts[-1], pred_cfg.history_dim, pred_cfg.half_lives))
    if getattr(predictor, "reads_histories", False):
        layout = replace(layout, history_dim=predictor.history_dim, history_rates=predictor.history_rates)
    return TemporalModel(embedding, predictor, updater, layout, node_feat_map,
                         mem_cfg.update_time if mem_cfg is not None else MemoryConfig.update_time)
