"""TGB's one-vs-many ranking with every destination of the stream as a candidate (`eval.ranking: all`).

Each evaluation event `(s, d, t)` ranks `d` against every destination, leaving out the other true
destinations of `s` at `t` (the filtered setting); ties count as the mean of the optimistic and the
pessimistic rank (`ranks_against_candidates`). A trained model scores the candidates of an evaluation
batch with the memory that batch reads, through the same stage functions, so a candidate is embedded at
the event's time from the same neighbours and memory as a negative of that event would be.

Two paths give those scores. `FactorisedScores`, where the model allows it (`factorised_path_refusal`):
every node's state, every candidate's neighbourhood and the positives are computed once per batch, and the
attention over a candidate's neighbours at each event's time is factorised by time
(`TemporalAttentionLayer.embed_over_times`). Otherwise the chunked path: the candidates are scored in
chunks, each as the negatives of the whole batch through the stage functions.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from graph.events import EventStream
from memory.batch import MemoryBatch
from models.attention import TemporalAttention
from models.common_neighbours import RootNeighbourhoods
from models.distinct import group
from models.interface import ModelInputs
from models.pair_history import RootHistories, pair_features, pair_features_against
from pipeline.stages.device import to_device
from pipeline.stages.link_prediction import BatchContext, LinkPredictionStages
from pipeline.run.evaluation import ranks_against_candidates
from pipeline.run.negative_scores import score_in_chunks

ROOTS_PER_CHUNK = 10_000  # candidate roots scored in one forward pass (bounds the memory a pass gathers)


def true_destinations(events: EventStream, src: np.ndarray, t: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """`(n, len(candidates))` mask of the candidates that are a true destination of `src[i]` at time `t[i]`
    in the stream (the destination itself included): what TGB's filtered ranking leaves out."""
    times, time_rank = np.unique(events.t, return_inverse=True)
    stride = len(times) + 1
    group = events.src.astype(np.int64) * stride + time_rank
    order = np.argsort(group, kind="stable")
    sorted_group = group[order]
    query = src.astype(np.int64) * stride + np.searchsorted(times, t)
    start, end = np.searchsorted(sorted_group, query, "left"), np.searchsorted(sorted_group, query, "right")
    counts = end - start
    rows = np.repeat(np.arange(len(src)), counts)
    events_hit = order[np.repeat(start, counts) + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)]
    columns = np.searchsorted(candidates, events.dst[events_hit])
    mask = np.zeros((len(src), len(candidates)), dtype=bool)
    mask[rows, columns] = True
    return mask


class CandidateRanker:
    """Called after an evaluation batch is scored (`Scoring.on_scored`), before its memory is
    written: scores each of the batch's sources against every candidate and keeps the filtered ranks.

    On the chunked path the candidates are scored in chunks, each as the negatives of the whole batch, so
    whatever the model computes per batch (the time memory is brought to under `memory.update_time: batch`,
    APAN's gap scale) is that of the batch, and a candidate gets the score it would get as a negative of its
    event. The factorised path (`FactorisedScores`) gives the same scores to float rounding and is taken
    wherever `factorised_path_refusal` finds nothing against it, unless `factorise` is False; `path` says
    which one this ranker takes.
    """

    def __init__(self, stages: LinkPredictionStages, events: EventStream, roots_per_chunk: int = ROOTS_PER_CHUNK,
                 factorise: bool = True):
        self.stages = stages
        self.events = events
        self.candidates = np.unique(events.dst)
        self.roots_per_chunk = roots_per_chunk
        self.ranks: list[np.ndarray] = []
        self.refusal = factorised_path_refusal(stages) if factorise else "not asked for"
        self.factorised = None if self.refusal else FactorisedScores(stages, self.candidates, roots_per_chunk)
        self.path = "chunked" if self.factorised is None else "factorised"

    def scores(self, i: int, ctx: BatchContext) -> tuple[np.ndarray, np.ndarray]:
        """Scores of batch `i`'s positives `(B,)` and of its sources against every candidate `(B, C)`."""
        if self.factorised is not None:
            return self.factorised(i, ctx)
        return self.chunked_scores(i, ctx)

    def chunked_scores(self, i: int, ctx: BatchContext) -> tuple[np.ndarray, np.ndarray]:
        """`scores` by the chunked path, whatever the model: every candidate a negative of every event."""
        shared = np.broadcast_to(self.candidates, (len(ctx.events), len(self.candidates)))
        return score_in_chunks(self.stages, i, ctx, shared, self.roots_per_chunk)

    def __call__(self, i: int, ctx: BatchContext) -> None:
        pos, scores = self.scores(i, ctx)
        events = ctx.events
        excluded = true_destinations(self.events, self.events.src[events], self.events.t[events], self.candidates)
        self.ranks.append(ranks_against_candidates(pos, scores, excluded))

    def all_ranks(self) -> np.ndarray:
        """The ranks of every event scored so far, in order."""
        return np.concatenate(self.ranks) if self.ranks else np.empty(0)


def factorised_path_refusal(stages: LinkPredictionStages) -> str | None:
    """Why `FactorisedScores` would not give a model's scores (None: it does). It needs a node's state to
    depend on the node alone within a batch (memory brought to the batch's time, or no memory), one layer of
    temporal attention, the most recent neighbours (a neighbourhood that changes only with new edges), and
    roots embedded at their own event's time."""
    model, sampler = stages.model, stages.sampler
    if not isinstance(model.embedding, TemporalAttention) or len(model.embedding.layers) != 1:
        return "the embedding is not one layer of temporal attention"
    if model.updater is not None and model.update_time != "batch":
        return f"memory.update_time is '{model.update_time}', not 'batch'"
    if sampler.strategy != "recent" or len(sampler.fanouts) != 1:
        return "the sampler does not take the most recent neighbours in one layer"
    if model.reads_neighbour_histories:
        return "the predictor reads its neighbours' pair histories"
    if stages.query_time != "event":
        return f"embedding.query_time is '{stages.query_time}', not 'event'"
    return None


@dataclasses.dataclass
class _Neighbourhoods:
    """Padded `(roots, width)` tables of roots' most recent neighbours, newest first."""

    ids: np.ndarray  # int64 node ids, -1 where padded
    eid: np.ndarray  # int64 edge ids, 0 where padded
    t: np.ndarray  # float64 edge times, 0 where padded
    valid: np.ndarray  # bool

    def take(self, rows: np.ndarray | slice) -> "_Neighbourhoods":
        """The tables of roots `rows`."""
        return _Neighbourhoods(self.ids[rows], self.eid[rows], self.t[rows], self.valid[rows])

    def put(self, rows: np.ndarray, other: "_Neighbourhoods") -> None:
        """Set the tables of roots `rows` to `other`'s, in place."""
        for name in ("ids", "eid", "t", "valid"):
            getattr(self, name)[rows] = getattr(other, name)


class FactorisedScores:
    """`CandidateRanker.scores` computing once per batch what its events share.

    Under `memory.update_time: batch` (or without memory) a node's state is the same wherever it is read in
    a batch, so every node's state is computed once. A candidate's most recent neighbours before an event
    are those before the batch's first event unless it has an edge inside the batch before that event; such
    (event, candidate) cells read the candidate's neighbourhood just before their event, one per edge the
    candidate has in the batch. The attention over a neighbourhood at each event's time is factorised by time
    (`TemporalAttentionLayer.embed_over_times`), so nothing is projected per (event, candidate, neighbour).
    The batch's sources and destinations are sampled and embedded as the model's forward does, and the
    predictor scores the cells in chunks of `roots_per_chunk`, as the negatives of the batch.
    """

    def __init__(self, stages: LinkPredictionStages, candidates: np.ndarray, roots_per_chunk: int):
        self.stages = stages
        self.candidates = candidates
        self.roots_per_chunk = roots_per_chunk
        self.width = stages.sampler.fanouts[0]

    def __call__(self, i: int, ctx: BatchContext) -> tuple[np.ndarray, np.ndarray]:
        stages, model, device = self.stages, self.stages.model, self.stages.device
        stream, candidates = stages.stream, self.candidates
        src, dst, t = stream.src[ctx.events], stream.dst[ctx.events], stream.t[ctx.events].astype(np.float64)
        size, first = len(src), t.min()
        base = self._recent(candidates, np.full(len(candidates), first))
        cell_event, cell_column, cell_version, version_column, version_time = self._moved_cells(t, first)
        moved = self._recent(candidates[version_column], version_time)
        block = stages.sampler.sample(np.concatenate([src, dst]), np.concatenate([t, t]), seed=stages.sample_seed(i))[0]
        block_nodes = block.srcdata["ID"].numpy()
        nodes = np.unique(np.concatenate([dst, candidates, base.ids[base.valid], moved.ids[moved.valid], block_nodes]))
        self._state_rows = (size, nodes)
        per_chunk = max(1, self.roots_per_chunk // size)

        model.eval()
        with torch.no_grad():
            states, memory = self._states(np.concatenate([src, nodes]), size, first)
            positives, positives_nb = self._embed_sampled(block, states)
            positive_histories = self._positive_histories(memory, src, dst, t)
            moved_h = positives.new_empty((len(cell_event), positives.shape[1]))
            for start in range(0, len(version_column), per_chunk):
                part = slice(start, start + per_chunk)
                cells = np.flatnonzero((cell_version >= start) & (cell_version < start + per_chunk))
                embedded = self._embed(states, candidates[version_column[part]], moved.take(part), t)
                moved_h[cells] = embedded[cell_event[cells], cell_version[cells] - start]
            pos, columns = None, []
            for start in range(0, len(candidates), per_chunk):
                part = slice(start, start + per_chunk)
                count = len(candidates[part])
                # cells of this chunk, candidate-major: negative k * B + j is candidate k against event j
                h = self._embed(states, candidates[part], base.take(part), t).transpose(0, 1).reshape(count * size, -1)
                cells = np.flatnonzero((cell_column >= start) & (cell_column < start + count))
                at = (cell_column[cells] - start) * size + cell_event[cells]
                h[torch.from_numpy(at).to(device)] = moved_h[cells]
                nb = None
                if positives_nb is not None:
                    cell_nb = base.take(np.repeat(np.arange(start, start + count), size))
                    cell_nb.put(at, moved.take(cell_version[cells]))
                    nb = self._cell_neighbourhoods(positives_nb, np.repeat(candidates[part], size), cell_nb,
                                                   np.tile(t, count))
                features = None
                if positive_histories is not None:
                    features = self._pair_features(positive_histories, memory, candidates[part], t)
                pos_chunk, neg = model.predict(torch.cat([positives, h]), nb, size, count, features)
                pos = pos_chunk.float().cpu().numpy()
                columns.append(neg.float().cpu().numpy().reshape(count, size).T)
        return pos, np.hstack(columns)

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        """The rows of nodes `ids` in this batch's state table (its sources, then its other nodes in order)."""
        size, nodes = self._state_rows
        return size + np.searchsorted(nodes, ids)

    def _recent(self, nodes: np.ndarray, times: np.ndarray) -> _Neighbourhoods:
        """The padded neighbourhoods the sampler draws for `nodes` at `times`."""
        tcsr = self.stages.sampler.tcsr
        edges = self.stages.sampler.find_neighbours(nodes, times, self.width)
        counts = np.bincount(edges.root, minlength=len(nodes))
        position = np.arange(len(edges.root)) - np.repeat(np.cumsum(counts) - counts, counts)
        shape = (len(nodes), self.width)
        ids, eid = np.full(shape, -1, np.int64), np.zeros(shape, np.int64)
        t, valid = np.zeros(shape), np.zeros(shape, bool)
        ids[edges.root, position] = tcsr.nbr[edges.entry]
        eid[edges.root, position] = tcsr.eid[edges.entry]
        t[edges.root, position] = tcsr.ts[edges.entry]
        valid[edges.root, position] = True
        return _Neighbourhoods(ids=ids, eid=eid, t=t, valid=valid)

    def _moved_cells(self, t: np.ndarray, first: float) -> tuple[np.ndarray, ...]:
        """The (event, candidate column) cells whose candidate has an edge before the event but not before
        the batch's first event, so that its most recent neighbours differ from those at `first`; each
        cell's version of the candidate's neighbourhood (one per distinct T-CSR end), and per version its
        candidate column and a time it holds at. Returns `(cell_event, cell_column, cell_version,
        version_column, version_time)`."""
        tcsr, candidates = self.stages.sampler.tcsr, self.candidates
        _, at_first = tcsr.segments_before(candidates, np.full(len(candidates), first))
        _, at_last = tcsr.segments_before(candidates, np.full(len(candidates), t.max()))
        moved = np.flatnonzero(at_last != at_first)
        _, ends = tcsr.segments_before(np.repeat(candidates[moved], len(t)), np.tile(t, len(moved)))
        which, event = np.nonzero(ends.reshape(len(moved), len(t)) != at_first[moved, None])
        column, end = moved[which], ends.reshape(len(moved), len(t))[which, event]
        versions, first_cell, cell_version = np.unique(np.stack([column, end], axis=1), axis=0, return_index=True,
                                                       return_inverse=True)
        return event, column, cell_version.reshape(-1), versions[:, 0], t[event[first_cell]]

    def _states(self, nodes: np.ndarray, num_sources: int,
                first: float) -> tuple[torch.Tensor, MemoryBatch | None]:
        """The node states of `nodes` (the batch's sources first) with every memory brought to `first`, and
        the memory read they come from (None without memory)."""
        stages, device = self.stages, self.stages.device
        ids = torch.from_numpy(nodes)
        memory = None if stages.store is None else stages.store.fetch(ids).to(device)
        node_feat = None
        if stages.stream.node_feat is not None:
            node_feat = to_device(stages.stream.node_feat.gather([ids])[0], device)
        time = torch.tensor(first, dtype=torch.float64, device=device)
        return stages.model.node_states_at(memory, node_feat, time, num_sources, len(nodes), device), memory

    def _positive_histories(self, memory: MemoryBatch | None, src: np.ndarray, dst: np.ndarray,
                            t: np.ndarray) -> tuple[RootHistories, torch.Tensor] | None:
        """If the predictor reads pair histories (else None): the batch's sources' histories at their events'
        times, and the pair features of its positives, both computed once per batch. The store is written
        after the batch, so a candidate's stored row is the same for every event of it."""
        model, device = self.stages.model, self.stages.device
        if not model.reads_histories:
            return None
        size = len(src)
        rows = torch.from_numpy(np.concatenate([np.arange(size), self._rows(dst)])).to(device)
        histories = RootHistories.of(torch.from_numpy(np.concatenate([src, dst])).to(device), memory.history[rows],
                                     memory.history_ts[rows], torch.from_numpy(np.concatenate([t, t])).to(device),
                                     model.history_rates)
        sources = torch.arange(size, device=device)
        return histories.select(sources), pair_features(histories, sources, sources + size)

    def _pair_features(self, positive_histories: tuple[RootHistories, torch.Tensor], memory: MemoryBatch,
                       candidates: np.ndarray, t: np.ndarray) -> torch.Tensor:
        """The pair features of the batch's positives, then of every (candidate, event) cell of `candidates`,
        candidate-major, as the predictor reads them."""
        sources, positives = positive_histories
        device = self.stages.device
        rows = torch.from_numpy(self._rows(candidates)).to(device)
        cells = pair_features_against(sources, torch.from_numpy(t).to(device), torch.from_numpy(candidates).to(device),
                                      memory.history[rows], memory.history_ts[rows], self.stages.model.history_rates)
        return torch.cat([positives, cells])

    def _edge_features(self, eid: np.ndarray) -> torch.Tensor:
        """Features of the edges `eid` (any shape) on the device, zero columns when the stream has none."""
        table, device = self.stages.stream.edge_feat, self.stages.device
        if table is None:
            return torch.zeros((*eid.shape, 0), device=device)
        rows = table.gather([torch.from_numpy(eid.reshape(-1))])[0]
        return to_device(rows, device).view(*eid.shape, -1)

    def _embed_sampled(self, block, states: torch.Tensor) -> tuple[torch.Tensor, RootNeighbourhoods | None]:
        """The model's embeddings of the sampled `block`'s roots (the batch's sources, then its destinations), and
        their neighbourhoods if the predictor reads them, their slots rows of `states`."""
        model, device = self.stages.model, self.stages.device
        slot_rows = torch.from_numpy(self._rows(block.srcdata["ID"].numpy())).to(device)
        edge_feat = None if self.stages.stream.edge_feat is None else self._edge_features(block.edata["ID"].numpy())
        block = block.to(device)
        inputs = ModelInputs(blocks=[block], memory=None, edge_feat=[edge_feat], node_feat=None, root_edge_feat=None,
                             num_pos=block.num_dst_nodes() // 2, input_states=group(slot_rows))
        embeddings = model.embedding(states[slot_rows], inputs)
        if not model.reads_neighbourhoods:
            return embeddings, None
        sampled = RootNeighbourhoods.from_block(block, states, model.predictor.width)
        return embeddings, dataclasses.replace(sampled, slot=slot_rows[sampled.slot])

    def _embed(self, states: torch.Tensor, roots: np.ndarray, nb: _Neighbourhoods, t: np.ndarray) -> torch.Tensor:
        """Embeddings `(len(t), len(roots), dim)` of `roots` over the neighbourhoods `nb` at each time of `t`."""
        device = self.stages.device
        rows = lambda ids: torch.from_numpy(self._rows(ids)).to(device)  # noqa: E731
        return self.stages.model.embedding.layers[0].embed_over_times(
            states[rows(roots)], states[rows(np.where(nb.valid, nb.ids, roots[:, None]))],
            self._edge_features(nb.eid), torch.from_numpy(nb.t).to(device), torch.from_numpy(nb.valid).to(device),
            torch.from_numpy(t).to(device))

    def _cell_neighbourhoods(self, positives: RootNeighbourhoods, roots: np.ndarray, cells: _Neighbourhoods,
                             times: np.ndarray) -> RootNeighbourhoods:
        """The neighbourhoods the predictor reads: the positives' as sampled, then those of the cells, root
        `roots[k]` with neighbours `cells` (row `k`) at `times[k]`."""
        device = self.stages.device
        gaps = np.where(cells.valid, (times[:, None] - cells.t).astype(np.float32), np.float32(0))
        slot = self._rows(np.where(cells.valid, cells.ids, roots[:, None]))
        size = len(positives.node) // 2
        return RootNeighbourhoods(
            node=torch.cat([positives.node[:2 * size], torch.from_numpy(roots).to(device)]),
            ids=torch.cat([positives.ids[:2 * size], torch.from_numpy(cells.ids).to(device)]),
            dt=torch.cat([positives.dt[:2 * size], torch.from_numpy(gaps).to(device)]),
            slot=torch.cat([positives.slot[:2 * size], torch.from_numpy(slot).to(device)]), states=positives.states)
