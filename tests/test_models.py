"""Tests of models/: time encoding, memory updaters, temporal attention, embeddings, edge predictor and the
TGN / JODIE / APAN write-back semantics, on tiny synthetic or hand-made graphs."""
from __future__ import annotations

import copy
from dataclasses import replace
import math

import dgl
import numpy as np
import pytest
import torch

from graph.events import EventStream
from graph.synthetic import synthetic_events
from memory.batch import MemoryUpdate
from memory.store import MemoryBatch, MemoryStore
from models import ModelInputs, build_model
from models.embedding import JodieProjection
from models.memory_updaters import MemoryRows, build_updater, source_gap_scale
from models.predictor import EdgePredictor
from models.time_encoding import TimeEncoding, elapsed
from pipeline.stages.link_prediction import embedded_roots, link_prediction_loss
from pipeline.run.config import RunConfig, validate_config
from sampler.tcsr import TCSR
from sampler.temporal import TemporalSampler

DIM_MEM, DIM_TIME, DIM_EDGE, DIM_NODE = 8, 4, 3, 5
UNIX_EPOCH_2020 = 1.6e9


def tiny_config(model: str) -> RunConfig:
    """The TGL reference configs of TGN, JODIE and APAN with small dimensions and no dropout."""
    shape = {
        "tgn": ([2], "gru", 1, "self", "attention"),
        "tgn2": ([2, 2], "gru", 1, "self", "attention"),
        "jodie": ([0], "rnn", 1, "self", "jodie"),
        "apan": ([2], "transformer", 3, "neighbours", "identity"),
    }[model]
    fanouts, updater, mailbox_size, deliver_to, module = shape
    return validate_config({
        "model": model.rstrip("2"),
        "sampler": {"strategy": "recent", "fanouts": fanouts},
        "memory": {"dim": DIM_MEM, "dim_time": DIM_TIME, "mailbox_size": mailbox_size, "updater": updater,
                   "deliver_to": deliver_to},
        "embedding": {"module": module, "layers": len(fanouts), "heads": 2, "dim_out": DIM_MEM,
                      "dim_time": DIM_TIME, "dropout": 0.0},
    })


def unix_stream(dim_edge_feat: int = DIM_EDGE, dim_node_feat: int = DIM_NODE) -> EventStream:
    """A small synthetic stream moved to unix-epoch times, where float32 timestamps would lose the seconds."""
    events = synthetic_events(num_nodes=12, num_events=60, dim_edge_feat=dim_edge_feat,
                              dim_node_feat=dim_node_feat, seed=3)
    return EventStream(name=events.name, src=events.src, dst=events.dst, t=events.t + UNIX_EPOCH_2020,
                       num_nodes=events.num_nodes, node_ids=events.node_ids, edge_feat=events.edge_feat,
                       node_feat=events.node_feat)


def batch_inputs(events: EventStream, batch: np.ndarray, cfg: dict, store: MemoryStore | None,
                 negatives: np.ndarray, query_time: str = "event") -> ModelInputs:
    """What the pipeline hands the model for events `batch`: blocks, features and memory rows."""
    src, dst, t = events.src[batch], events.dst[batch], events.t[batch]
    num_neg = len(negatives) // len(batch)
    root_ts = np.concatenate([t, t, np.tile(t, num_neg)])
    nodes, times, rows = embedded_roots(np.concatenate([src, dst, negatives]), root_ts, query_time)
    return sampled_inputs(events, batch, cfg, store, nodes, times, num_neg,
                          root_rows=None if rows is None else torch.from_numpy(rows),
                          root_ts=None if rows is None else torch.from_numpy(root_ts))


def sampled_inputs(events: EventStream, batch: np.ndarray, cfg: dict, store: MemoryStore | None,
                   nodes: np.ndarray, times: np.ndarray, num_neg: int, **scored_roots) -> ModelInputs:
    """The model's inputs for events `batch` whose embedded roots are `nodes` at `times`."""
    sampler = TemporalSampler(TCSR.from_events(events.src, events.dst, events.t, events.num_nodes),
                              cfg.sampler.fanouts)
    blocks = sampler.sample(nodes, times)
    as_tensor = (lambda table, rows: None if table is None else torch.from_numpy(table[rows]))
    return ModelInputs(
        blocks=blocks,
        memory=None if store is None else store.fetch(blocks[0].srcdata["ID"]),
        edge_feat=[as_tensor(events.edge_feat, b.edata["ID"].numpy()) for b in blocks],
        node_feat=as_tensor(events.node_feat, blocks[0].srcdata["ID"].numpy()),
        root_edge_feat=as_tensor(events.edge_feat, batch),
        num_pos=len(batch),
        num_neg=num_neg,
        **scored_roots,
    )


def model_and_store(model: str, events: EventStream) -> tuple[torch.nn.Module, MemoryStore]:
    """A seeded tiny model of kind `model` and an empty memory store shaped for it."""
    torch.manual_seed(0)
    net = build_model(tiny_config(model), events.dim_node_feat, events.dim_edge_feat)
    return net, MemoryStore(events.num_nodes, net.dim_memory, net.dim_mail, net.mailbox_size)


def warmed_inputs(model: str, events: EventStream, num_neg: int = 1) -> tuple[torch.nn.Module, ModelInputs]:
    """A model whose store already holds two batches' updates, and the inputs of the following batch."""
    net, store = model_and_store(model, events)
    rng = np.random.default_rng(0)
    for index, batch in enumerate((np.arange(20, 30), np.arange(30, 40))):
        inputs = batch_inputs(events, batch, tiny_config(model), store, rng.integers(0, 12, len(batch)))
        _, _, update = net(inputs)
        store.update(index, update)
    batch = np.arange(40, 50)
    return net, batch_inputs(events, batch, tiny_config(model), store, rng.integers(0, 12, len(batch) * num_neg))



def updater_rows(mail_count: list[int], slots: int, seed: int = 0) -> MemoryRows:
    """Random stored memory and mailboxes of `len(mail_count)` nodes, used at a unix time."""
    gen = torch.Generator().manual_seed(seed)
    n = len(mail_count)
    return MemoryRows(
        mem=torch.randn(n, DIM_MEM, generator=gen),
        mem_ts=UNIX_EPOCH_2020 + torch.rand(n, generator=gen, dtype=torch.float64) * 100,
        mail=torch.randn(n, slots, 2 * DIM_MEM, generator=gen),
        mail_ts=UNIX_EPOCH_2020 + torch.rand(n, slots, generator=gen, dtype=torch.float64) * 100,
        mail_count=torch.tensor(mail_count),
        ts=torch.full((n,), UNIX_EPOCH_2020 + 200, dtype=torch.float64),
    )


def test_time_encoding_starts_at_tgl_frequencies_and_is_trainable() -> None:
    encoding = TimeEncoding(5)
    dt = torch.tensor([0.0, 3.0, 1e3])
    frequency = 1 / 10 ** np.linspace(0, 9, 5)
    expected = np.cos(dt.numpy()[:, None] * frequency)
    np.testing.assert_allclose(encoding(dt).detach().numpy(), expected, atol=1e-6)
    encoding(dt).sum().backward()
    assert encoding.log_frequency.grad is not None and encoding.phase.grad is not None


def test_time_encoding_training_step_changes_every_frequency_by_the_same_relative_amount() -> None:
    encoding = TimeEncoding(10)
    before = encoding.frequency.detach().clone()
    optimizer = torch.optim.Adam(encoding.parameters(), lr=1e-3)
    encoding(torch.tensor([10.0, 1e4, 1e7])).sum().backward()
    optimizer.step()
    ratio = encoding.frequency.detach() / before
    assert torch.all((ratio - 1).abs() <= 1.1e-3)
    assert encoding.frequency.min() < 1e-8


def test_elapsed_subtracts_unix_times_in_float64() -> None:
    later = torch.tensor([UNIX_EPOCH_2020 + 0.25, UNIX_EPOCH_2020 + 7.5], dtype=torch.float64)
    earlier = torch.tensor([UNIX_EPOCH_2020, UNIX_EPOCH_2020 + 7.0], dtype=torch.float64)
    dt = elapsed(later, earlier)
    assert dt.dtype == torch.float32
    assert dt.tolist() == [0.25, 0.5]


@pytest.mark.parametrize("model", ["tgn", "tgn2", "jodie", "apan"])
def test_forward_shapes_and_update_layout(model: str) -> None:
    events = unix_stream()
    net, inputs = warmed_inputs(model, events, num_neg=2)
    pos, neg, update = net(inputs)
    batch = 10
    assert pos.shape == (batch,) and neg.shape == (2 * batch,)
    assert torch.isfinite(pos).all() and torch.isfinite(neg).all()
    expected_nodes = np.stack([events.src[40:50], events.dst[40:50]], axis=1).ravel()
    assert update.nodes.tolist() == expected_nodes.tolist()
    assert update.mem.shape == (2 * batch, DIM_MEM)
    assert update.mem_ts.dtype == torch.float64
    assert update.mem_ts.tolist() == np.repeat(events.t[40:50], 2).tolist()
    assert update.mail.shape == (len(update.mail_nodes), 2 * DIM_MEM + DIM_EDGE)
    assert update.mail_ts.dtype == torch.float64 and len(update.mail_ts) == len(update.mail_nodes)


@pytest.mark.parametrize("predictor", ["mlp", "common_neighbours", "pair_history"])
def test_batch_query_time_scores_each_root_as_its_node_embedded_once_at_the_first_event_time(predictor: str) -> None:
    """Under `embedding.query_time: batch` the batch's distinct nodes are sampled and embedded once; every root
    scores as if it were embedded at the batch's first event time, and the write-back keeps the events' times.
    (A pair history is read at each event's own time; without decay that time does not change it.)"""
    events = unix_stream()
    cfg = replace(tiny_config("tgn"), predictor=replace(tiny_config("tgn").predictor, module=predictor,
                                                        half_lives=(math.inf,)))
    torch.manual_seed(0)
    net = build_model(cfg, events.dim_node_feat, events.dim_edge_feat)
    store = MemoryStore(events.num_nodes, net.dim_memory, net.dim_mail, net.mailbox_size,
                        history_dim=net.history_dim, history_rates=net.history_rates)
    rng = np.random.default_rng(0)
    for index, batch in enumerate((np.arange(20, 30), np.arange(30, 40))):
        store.update(index, net(batch_inputs(events, batch, cfg, store, rng.integers(0, 12, len(batch))))[2])
    batch, negatives = np.arange(40, 50), rng.integers(0, 12, 20)
    once = batch_inputs(events, batch, cfg, store, negatives, query_time="batch")
    roots = np.concatenate([events.src[batch], events.dst[batch], negatives])
    assert once.num_roots == len(np.unique(roots)) < len(roots)
    assert torch.equal(once.root_ids(), torch.from_numpy(roots))
    first_event = np.full(len(roots), events.t[batch].min())
    every_root = sampled_inputs(events, batch, cfg, store, roots, first_event, num_neg=2)

    (pos, neg, update), (pos_ref, neg_ref, update_ref) = net(once), net(every_root)
    torch.testing.assert_close(pos, pos_ref)
    torch.testing.assert_close(neg, neg_ref)
    torch.testing.assert_close(update.mem, update_ref.mem)
    assert torch.equal(update.nodes, update_ref.nodes)
    assert update.mem_ts.tolist() == np.repeat(events.t[batch], 2).tolist()


def gru_by_hand(cell: torch.nn.GRUCell, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """One GRU step written out from its equations (gates r, z, n in PyTorch's weight layout)."""
    gi = x @ cell.weight_ih.T + cell.bias_ih
    gh = h @ cell.weight_hh.T + cell.bias_hh
    (i_r, i_z, i_n), (h_r, h_z, h_n) = gi.chunk(3, dim=-1), gh.chunk(3, dim=-1)
    reset, update = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
    candidate = torch.tanh(i_n + reset * h_n)
    return (1 - update) * candidate + update * h


@pytest.mark.parametrize("update_time", ["query", "batch"])
def test_tgn_memory_and_mails_match_a_hand_computed_reference(update_time: str) -> None:
    """Nodes 0 and 1 have mail, node 2 has memory but no mail; node 1 occurs twice in the batch, at t0 + 10
    and t0 + 12: under "query" its memory is brought to each event's time, under "batch" to the batch's
    first event time (t0 + 10) for both."""
    t0 = UNIX_EPOCH_2020
    history = EventStream(name="hand", src=np.array([0, 1, 0, 1]), dst=np.array([1, 2, 1, 2]),
                          t=np.array([t0 + 1, t0 + 2, t0 + 10, t0 + 12]), num_nodes=4,
                          node_ids=np.arange(4), edge_feat=np.arange(12, dtype=np.float32).reshape(4, 3))
    torch.manual_seed(0)
    cfg = tiny_config("tgn")
    cfg = replace(cfg, memory=replace(cfg.memory, update_time=update_time))
    net = build_model(cfg, 0, DIM_EDGE).eval()
    store = MemoryStore(4, DIM_MEM, net.dim_mail)
    stored_mem, stored_mail = torch.randn(3, DIM_MEM), torch.randn(2, net.dim_mail)
    store.update(0, MemoryUpdate(torch.tensor([0, 1, 2]), stored_mem, torch.tensor([t0 + 1, t0 + 2, t0 + 2]),
                              torch.tensor([0, 1]), stored_mail, torch.tensor([t0 + 1, t0 + 2])))
    inputs = batch_inputs(history, np.array([2, 3]), tiny_config("tgn"), store, np.array([3, 0]))
    _, _, update = net(inputs)

    cell, encoding = net.updater.cell, net.updater.time_encoding

    def expected_memory(node: int, t: float) -> torch.Tensor:
        dt = torch.tensor([t - store.mem_ts[node].item()])
        time_feat = torch.cos(dt[:, None] * encoding.frequency + encoding.phase)
        x = torch.cat([store.mail[node, 0][None], time_feat], dim=1)
        return gru_by_hand(cell, x, store.mem[node][None])[0].detach()

    mem_0, mem_1_at_10 = expected_memory(0, t0 + 10), expected_memory(1, t0 + 10)
    mem_1_at_12, mem_2 = expected_memory(1, t0 + 12 if update_time == "query" else t0 + 10), stored_mem[2]
    edge_10, edge_12 = torch.tensor([6.0, 7.0, 8.0]), torch.tensor([9.0, 10.0, 11.0])
    assert update.nodes.tolist() == [0, 1, 1, 2] and update.mail_nodes.tolist() == [0, 1, 1, 2]
    assert update.mem_ts.tolist() == update.mail_ts.tolist() == [t0 + 10, t0 + 10, t0 + 12, t0 + 12]
    torch.testing.assert_close(update.mem, torch.stack([mem_0, mem_1_at_10, mem_1_at_12, mem_2]))
    torch.testing.assert_close(update.mail, torch.stack([
        torch.cat([mem_0, mem_1_at_10, edge_10]), torch.cat([mem_1_at_10, mem_0, edge_10]),
        torch.cat([mem_1_at_12, mem_2, edge_12]), torch.cat([mem_2, mem_1_at_12, edge_12]),
    ]))

    store.update(1, update)
    latest = store.fetch(torch.tensor([1]))
    torch.testing.assert_close(latest.mem[0], mem_1_at_12)
    assert latest.mem_ts.item() == t0 + 12
    torch.testing.assert_close(latest.mail[0, 0], torch.cat([mem_1_at_12, mem_2, edge_12]))


@pytest.mark.parametrize("kind", ["gru", "rnn", "transformer"])
def test_nodes_without_mail_keep_their_memory(kind: str) -> None:
    updater = build_updater(kind, DIM_MEM, 2 * DIM_MEM, DIM_TIME, heads=2, dropout=0.0)
    rows = updater_rows([0, 2, 0, 1], slots=3)
    new_mem = updater(rows)
    torch.testing.assert_close(new_mem[[0, 2]], rows.mem[[0, 2]], rtol=0, atol=0)
    assert not torch.allclose(new_mem[[1, 3]], rows.mem[[1, 3]])


@pytest.mark.parametrize("kind", ["gru", "rnn", "transformer"])
def test_normalize_puts_updated_memories_on_the_unit_sphere_and_leaves_the_rest(kind: str) -> None:
    torch.manual_seed(0)
    plain = build_updater(kind, DIM_MEM, 2 * DIM_MEM, DIM_TIME, heads=2, dropout=0.0)
    normalized = build_updater(kind, DIM_MEM, 2 * DIM_MEM, DIM_TIME, heads=2, dropout=0.0, normalize=True)
    normalized.load_state_dict(plain.state_dict())
    rows = updater_rows([0, 2, 0, 1], slots=3)
    new_mem, unnormalized = normalized(rows), plain(rows)
    torch.testing.assert_close(new_mem[[1, 3]], unnormalized[[1, 3]] / unnormalized[[1, 3]].norm(dim=1, keepdim=True))
    torch.testing.assert_close(new_mem[[0, 2]], rows.mem[[0, 2]], rtol=0, atol=0)


def test_jodie_config_normalizes_its_memory() -> None:
    cfg = tiny_config("jodie")
    cfg = replace(cfg, memory=replace(cfg.memory, normalize=True))
    assert build_model(cfg, 0, 0).updater.normalize_output
    assert not build_model(tiny_config("tgn"), 0, 0).updater.normalize_output


def test_mailbox_attention_ignores_empty_slots() -> None:
    updater = build_updater("transformer", DIM_MEM, 2 * DIM_MEM, DIM_TIME, heads=2, dropout=0.0)
    rows = updater_rows([2, 6], slots=4)
    altered_mail, altered_ts = rows.mail.clone(), rows.mail_ts.clone()
    altered_mail[:, 2:] += 5.0
    altered_ts[:, 2:] -= 50.0
    altered = MemoryRows(rows.mem, rows.mem_ts, altered_mail, altered_ts, rows.mail_count, rows.ts)
    before, after = updater(rows), updater(altered)
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=0)
    assert not torch.allclose(after[1], before[1])


def test_mailbox_attention_reads_gaps_relative_to_the_batch_scale() -> None:
    """A period whose gaps are all k times longer, with a k times larger scale, gives the same memories."""
    torch.manual_seed(0)
    updater = build_updater("transformer", DIM_MEM, 2 * DIM_MEM, DIM_TIME, heads=2, dropout=0.0)
    rows = updater_rows([2, 6, 1], slots=4)
    scale = torch.tensor(30.0)
    slower = replace(rows, mail_ts=rows.ts[:, None] - 7 * (rows.ts[:, None] - rows.mail_ts), gap_scale=7 * scale)
    torch.testing.assert_close(updater(slower), updater(replace(rows, gap_scale=scale)))
    assert not torch.allclose(updater(replace(slower, gap_scale=scale)), updater(replace(rows, gap_scale=scale)))


def test_gap_scale_reads_the_sources_filled_slots_only() -> None:
    rows = updater_rows([2, 1, 3, 0], slots=4)
    gaps = (rows.ts[:, None] - rows.mail_ts).float()
    expected = torch.cat([gaps[0, :2], gaps[1, :1]]).mean()
    torch.testing.assert_close(source_gap_scale(rows, num_sources=2), expected)
    destinations_changed = replace(rows, mail_ts=torch.cat([rows.mail_ts[:2], rows.mail_ts[2:] - 1e6]))
    torch.testing.assert_close(source_gap_scale(destinations_changed, num_sources=2), expected)
    assert source_gap_scale(rows, num_sources=0) == 1.0
    assert source_gap_scale(replace(rows, mail_count=torch.zeros(4, dtype=torch.int64)), num_sources=2) == 1.0


@pytest.mark.parametrize("model", ["tgn", "jodie", "apan"])
def test_update_is_detached_and_backward_leaves_memory_inputs_alone(model: str) -> None:
    net, inputs = warmed_inputs(model, unix_stream())
    memory_before = copy.deepcopy(inputs.memory)
    pos, neg, update = net(inputs)
    link_prediction_loss(pos, neg).backward()
    for name in ("nodes", "mem", "mem_ts", "mail_nodes", "mail", "mail_ts"):
        assert not getattr(update, name).requires_grad
    for name in ("mem", "mem_ts", "mail", "mail_ts"):
        assert getattr(inputs.memory, name).grad is None
        torch.testing.assert_close(getattr(inputs.memory, name), getattr(memory_before, name), rtol=0, atol=0)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.updater.parameters())


def test_roots_without_neighbours_get_finite_embeddings_from_their_own_state() -> None:
    """The first batch of a stream: no root has history, so every block is empty."""
    events = unix_stream()
    net, store = model_and_store("tgn", events)
    inputs = batch_inputs(events, np.arange(0, 1), tiny_config("tgn"), store, np.array([7]))
    assert inputs.blocks[0].num_edges() == 0
    h = torch.randn(inputs.num_input_nodes, DIM_MEM)
    embeddings = net.embedding(h, inputs)
    pos, neg, _ = net(inputs)
    assert torch.isfinite(embeddings).all() and torch.isfinite(pos).all() and torch.isfinite(neg).all()
    assert len(torch.unique(embeddings, dim=0)) == inputs.num_roots


@pytest.mark.parametrize("model", ["tgn", "jodie"])
def test_a_few_steps_on_a_repeated_batch_reduce_the_loss(model: str) -> None:
    net, inputs = warmed_inputs(model, unix_stream())
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    losses = []
    for _ in range(25):
        optimizer.zero_grad()
        pos, neg, _ = net(inputs)
        loss = link_prediction_loss(pos, neg)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def apan_with_memory(num_nodes: int) -> tuple[torch.nn.Module, MemoryStore]:
    """An APAN model and a store where every node has distinct memory but no mail yet."""
    torch.manual_seed(0)
    net = build_model(tiny_config("apan"), 0, 0).eval()
    store = MemoryStore(num_nodes, DIM_MEM, net.dim_mail, net.mailbox_size)
    store.update(0, MemoryUpdate(torch.arange(num_nodes), torch.randn(num_nodes, DIM_MEM),
                              torch.full((num_nodes,), UNIX_EPOCH_2020, dtype=torch.float64),
                              torch.tensor([], dtype=torch.int64), torch.zeros(0, net.dim_mail),
                              torch.tensor([], dtype=torch.float64)))
    return net, store


def last_index(values: torch.Tensor, value: int) -> int:
    """Position of the last occurrence of `value` in `values`."""
    return len(values) - 1 - values.tolist()[::-1].index(value)


def test_apan_delivers_mails_to_the_sampled_neighbours_of_positive_roots_only() -> None:
    t0 = UNIX_EPOCH_2020
    # Event 0->1 at t0+10; node 0 met 4 and node 1 met 2 before. Node 3 only met 5, the negative root.
    history = EventStream(name="hand", src=np.array([0, 1, 3, 0]), dst=np.array([4, 2, 5, 1]),
                          t=np.array([t0 + 1, t0 + 2, t0 + 3, t0 + 10]), num_nodes=6, node_ids=np.arange(6))
    net, store = apan_with_memory(6)
    _, _, update = net(batch_inputs(history, np.array([3]), tiny_config("apan"), store, np.array([5])))
    assert update.nodes.tolist() == [0, 1]
    assert update.mail_nodes.tolist() == [4, 2, 0, 1]
    assert update.mail_ts.tolist() == [t0 + 10] * 4
    torch.testing.assert_close(update.mail[0], update.mail[2])
    torch.testing.assert_close(update.mail[1], update.mail[3])
    assert not torch.allclose(update.mail[2], update.mail[3])


def test_apan_mails_are_chronological_so_the_latest_one_is_kept() -> None:
    t0 = UNIX_EPOCH_2020
    # Batch events 0->1 at t0+5 and 2->3 at t0+6; nodes 0 and 2 met at t0+1, so node 0 gets its own mail
    # at t0+5 and then node 2's mail at t0+6, which must come last.
    history = EventStream(name="hand", src=np.array([0, 0, 2]), dst=np.array([2, 1, 3]),
                          t=np.array([t0 + 1, t0 + 5, t0 + 6]), num_nodes=4, node_ids=np.arange(4))
    net, store = apan_with_memory(4)
    _, _, update = net(batch_inputs(history, np.array([1, 2]), tiny_config("apan"), store, np.array([1, 1])))
    assert torch.all(update.mail_ts[1:] >= update.mail_ts[:-1])
    latest_for_0 = last_index(update.mail_nodes, 0)
    assert update.mail_ts[latest_for_0].item() == t0 + 6
    torch.testing.assert_close(update.mail[latest_for_0], update.mail[last_index(update.mail_nodes, 2)])
    store.update(1, update)
    torch.testing.assert_close(store.fetch(torch.tensor([0])).mail[0, 0], update.mail[latest_for_0])


def test_predictor_pairs_negative_k_b_plus_j_with_source_j() -> None:
    torch.manual_seed(0)
    predictor = EdgePredictor(DIM_MEM)
    batch, num_neg = 3, 2
    h = torch.randn(2 * batch + batch * num_neg, DIM_MEM)
    _, neg = predictor(h, batch, num_neg)
    for k in range(num_neg):
        as_positives = torch.cat([h[:batch], h[2 * batch + k * batch:2 * batch + (k + 1) * batch]])
        pos_k, _ = predictor(as_positives, batch, 0)
        torch.testing.assert_close(neg[k * batch:(k + 1) * batch], pos_k)


def projection_inputs(root_ts: torch.Tensor, mem_ts: torch.Tensor, version: torch.Tensor) -> ModelInputs:
    """A block without edges whose roots are at `root_ts`, and their memory timestamps and versions."""
    n = len(root_ts)
    block = dgl.create_block((torch.tensor([], dtype=torch.int64), torch.tensor([], dtype=torch.int64)),
                             num_src_nodes=n, num_dst_nodes=n)
    block.dstdata["ts"] = root_ts
    memory = MemoryBatch(nodes=torch.arange(n), row=torch.arange(n), mem=torch.zeros(n, DIM_MEM), mem_ts=mem_ts,
                         mail=torch.zeros(n, 1, 2 * DIM_MEM), mail_ts=torch.zeros(n, 1, dtype=torch.float64),
                         mail_count=torch.ones(n, dtype=torch.int64), version=version,
                         history=torch.zeros(n, 0, 0), history_ts=torch.zeros(n, dtype=torch.float64), committed=0)
    return ModelInputs(blocks=[block], memory=memory, edge_feat=[None], node_feat=None, root_edge_feat=None,
                       num_pos=n // 2)


def test_jodie_projection_does_not_depend_on_the_clock_unit() -> None:
    torch.manual_seed(0)
    projection = JodieProjection(DIM_MEM).train()
    h = torch.randn(4, DIM_MEM)
    gaps = torch.tensor([0.0, 30.0, 600.0, 5.0], dtype=torch.float64)
    version = torch.tensor([3, 3, 3, -1])
    outputs = []
    for unit in (1.0, 1000.0):
        fresh = copy.deepcopy(projection)
        root_ts = torch.full((4,), UNIX_EPOCH_2020 * unit, dtype=torch.float64)
        outputs.append(fresh(h, projection_inputs(root_ts, root_ts - gaps * unit, version)))
    torch.testing.assert_close(outputs[0], outputs[1])
    never_written = projection.norm(h[3]) * (1 + projection.time_linear.bias)
    torch.testing.assert_close(outputs[0][3], never_written)


def test_jodie_projection_grows_only_logarithmically_with_gaps_beyond_training() -> None:
    torch.manual_seed(0)
    projection = JodieProjection(DIM_MEM).eval()
    projection.dt_scale.fill_(100.0)
    h = torch.randn(1, DIM_MEM).expand(3, DIM_MEM)
    gaps = torch.tensor([100.0, 1e4, 1e6], dtype=torch.float64)
    root_ts = torch.full((3,), UNIX_EPOCH_2020, dtype=torch.float64)
    out = projection(h, projection_inputs(root_ts, root_ts - gaps, torch.zeros(3, dtype=torch.int64)))
    growth = out[2].norm() / out[1].norm()
    assert growth < 4, f"a gap 100x longer grew the embedding {growth:.1f}x (a linear projection: ~100x)"
    at_scale = 1 + projection.time_linear(torch.tensor([math.log(2)]))
    torch.testing.assert_close(out[0], projection.norm(h[0]) * at_scale, msg="a gap of one scale reads log1p(1)")


def test_jodie_projection_drops_out_in_training_only() -> None:
    torch.manual_seed(0)
    projection = JodieProjection(DIM_MEM, dropout=0.5)
    h = torch.randn(64, DIM_MEM)
    root_ts = torch.full((64,), UNIX_EPOCH_2020, dtype=torch.float64)
    inputs = projection_inputs(root_ts, root_ts - 60.0, torch.zeros(64, dtype=torch.int64))
    assert (projection.train()(h, inputs) == 0).float().mean() > 0.3
    evaluated = projection.eval()(h, inputs)
    assert (evaluated == 0).sum() == 0
    torch.testing.assert_close(projection(h, inputs), evaluated)


def test_memoryless_attention_model_returns_no_update() -> None:
    events = unix_stream()
    cfg = replace(tiny_config("tgn"), memory=None)
    net = build_model(cfg, events.dim_node_feat, events.dim_edge_feat)
    pos, neg, update = net(batch_inputs(events, np.arange(40, 50), cfg, None, np.arange(10) % 12))
    assert not net.uses_memory and update is None
    assert pos.shape == neg.shape == (10,) and torch.isfinite(pos).all()


def test_default_config_builds_tgl_defaults() -> None:
    net = build_model(RunConfig(), dim_node_feat=0, dim_edge_feat=4)
    assert net.uses_memory and net.dim_memory == 100 and net.dim_mail == 204 and net.mailbox_size == 1
    assert net.embedding.dim_out == 100


def test_jodie_scale_tracks_the_whole_batch_when_processes_train_on_shares_of_it() -> None:
    gaps = torch.tensor([10.0, 20.0, 30.0, 40.0, 500.0, 600.0, 700.0, 800.0], dtype=torch.float64)
    root_ts = torch.full((8,), UNIX_EPOCH_2020, dtype=torch.float64)
    written = torch.zeros(8, dtype=torch.int64)
    h = torch.randn(8, DIM_MEM)
    whole = JodieProjection(DIM_MEM).train()
    whole(h, projection_inputs(root_ts, root_ts - gaps, written))
    shares = [slice(0, 4), slice(4, 8)]
    totals = [torch.stack([gaps[share].sum(), torch.tensor(4.0, dtype=torch.float64)]).float() for share in shares]
    for rank, share in enumerate(shares):
        part = JodieProjection(DIM_MEM).train()
        part.sum_across_processes = lambda local, other=totals[1 - rank]: local + other  # an all-reduce of 2 ranks
        part(h[share], projection_inputs(root_ts[share], root_ts[share] - gaps[share], written[share]))
        torch.testing.assert_close(part.dt_scale, whole.dt_scale)
    assert whole.dt_scale.item() == pytest.approx(gaps.mean().item())
