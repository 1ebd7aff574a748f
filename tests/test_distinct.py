"""Computing once per distinct state: the grouping itself, and that the recurrent updaters and temporal
attention give the same numbers and gradients with it as row by row."""
from __future__ import annotations

import dgl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from dgl.nn.functional import edge_softmax

from graph.synthetic import synthetic_events
from models.attention import TemporalAttentionLayer
from models.distinct import group, group_pairs
from models.memory_updaters import MemoryRows, build_updater
from sampler.tcsr import TCSR
from sampler.temporal import TemporalSampler

DIM_MEM, DIM_TIME, DIM_EDGE = 8, 4, 3


def test_group_indexes_the_first_occurrence_of_every_key():
    keys = torch.tensor([5, 3, 5, 7, 3, 3])
    groups = group(keys)
    assert len(groups) == 3
    assert torch.equal(keys[groups.first][groups.index], keys)
    assert sorted(groups.first.tolist()) == [0, 1, 3]


def test_group_pairs_tells_equal_ids_at_different_times_apart():
    rows = torch.tensor([1, 1, 2, 1, 2])
    times = torch.tensor([1.6e9, 1.6e9 + 1, 1.6e9, 1.6e9, 1.6e9], dtype=torch.float64)
    groups = group_pairs(rows, times)
    assert len(groups) == 3
    assert groups.index[0] == groups.index[3] and groups.index[2] == groups.index[4]
    assert len({int(groups.index[i]) for i in (0, 1, 2)}) == 3


def shared_rows(seed: int = 0) -> MemoryRows:
    """Ten mailed rows reading four stored rows (equal memory and mails per `row`) at different times."""
    gen = torch.Generator().manual_seed(seed)
    row = torch.tensor([0, 1, 0, 2, 3, 1, 0, 2, 2, 3])
    stored_mem, stored_mail = torch.randn(4, DIM_MEM, generator=gen), torch.randn(4, 1, 2 * DIM_MEM, generator=gen)
    stored_ts = 1.6e9 + torch.rand(4, generator=gen, dtype=torch.float64) * 100
    return MemoryRows(mem=stored_mem[row], mem_ts=stored_ts[row], mail=stored_mail[row],
                      mail_ts=stored_ts[row, None], mail_count=torch.ones(10, dtype=torch.int64),
                      ts=1.6e9 + 200 + torch.rand(10, generator=gen, dtype=torch.float64) * 50, row=row)


@pytest.mark.parametrize("kind", ["gru", "rnn"])
def test_recurrent_updater_equals_torch_cell_row_by_row_in_values_and_gradients(kind: str):
    torch.manual_seed(0)
    updater = build_updater(kind, DIM_MEM, 2 * DIM_MEM, DIM_TIME, heads=2, dropout=0.0)
    rows = shared_rows()
    grouped = updater(rows)
    grouped.square().sum().backward()
    grouped_grads = [p.grad.clone() for p in updater.parameters()]
    updater.zero_grad()
    time_feat = updater.time_encoding((rows.ts - rows.mem_ts).float())
    reference = updater.cell(torch.cat([rows.mail[:, 0], time_feat], dim=1), rows.mem)
    reference.square().sum().backward()
    torch.testing.assert_close(grouped, reference)
    for grad, (name, param) in zip(grouped_grads, updater.named_parameters()):
        torch.testing.assert_close(grad, param.grad, msg=name)


def test_updater_gives_every_row_its_own_result_without_row_ids():
    torch.manual_seed(0)
    updater = build_updater("gru", DIM_MEM, 2 * DIM_MEM, DIM_TIME, heads=2, dropout=0.0)
    rows = shared_rows()
    anonymous = MemoryRows(rows.mem, rows.mem_ts, rows.mail, rows.mail_ts, rows.mail_count, rows.ts)
    torch.testing.assert_close(updater(anonymous), updater(rows))


def sampled_block():
    """A real one-layer block of a synthetic stream, with its input slots grouped by (node, time)."""
    events = synthetic_events(num_nodes=15, num_events=300, dim_edge_feat=DIM_EDGE, seed=1)
    sampler = TemporalSampler(TCSR.from_events(events.src, events.dst, events.t, events.num_nodes), [5])
    batch = np.arange(250, 280)
    roots = np.concatenate([events.src[batch], events.dst[batch]])
    block = sampler.sample(roots, np.tile(events.t[batch], 2))[0]
    states = group_pairs(block.srcdata["ID"], block.srcdata["ts"])
    edge_feat = torch.from_numpy(events.edge_feat[block.edata["ID"].numpy()])
    return block, states, edge_feat


def test_attention_over_distinct_states_equals_attention_over_every_slot():
    torch.manual_seed(0)
    block, states, edge_feat = sampled_block()
    assert len(states) < block.num_src_nodes()
    layer = TemporalAttentionLayer(DIM_MEM, DIM_EDGE, DIM_TIME, DIM_MEM, heads=2, dropout=0.0)
    state_h = torch.randn(len(states), DIM_MEM, requires_grad=True)
    outputs, grads = [], []
    for hint in (states, None):
        out = layer(block, state_h[states.index], edge_feat, hint)
        outputs.append(out)
        grads.append(torch.autograd.grad(out.square().sum(), [state_h, *layer.parameters()]))
    torch.testing.assert_close(outputs[0], outputs[1])
    for grouped, plain in zip(*grads):
        torch.testing.assert_close(grouped, plain)


def unsplit_attention(layer: TemporalAttentionLayer, block, h_src: torch.Tensor, edge_feat: torch.Tensor):
    """TGL's layer as written: query `w_q([h_dst || time_enc(0)])`, keys and values from
    `[h_src[src] || e || time_enc(dt)]`, one linear map each."""
    src = block.edges()[0].long()
    h_dst = h_src[:block.num_dst_nodes()]
    query = layer.w_q(torch.cat([h_dst, layer.time_encoding(torch.zeros(len(h_dst)))], dim=1))
    edge_in = torch.cat([h_src[src], edge_feat, layer.time_encoding(block.edata["dt"])], dim=1)
    query, key, value = (x.view(len(x), layer.heads, layer.head_dim)
                         for x in (query, layer.w_k(edge_in), layer.w_v(edge_in)))
    attention = edge_softmax(block, F.leaky_relu(dgl.ops.e_dot_v(block, key, query), 0.2))
    message = dgl.ops.copy_e_sum(block, attention * value).flatten(1)
    return layer.layer_norm(F.relu(layer.w_out(torch.cat([message, h_dst], dim=1))))


def test_attention_equals_tgl_layer_with_unsplit_linear_maps_in_values_and_gradients():
    torch.manual_seed(0)
    block, _, edge_feat = sampled_block()
    layer = TemporalAttentionLayer(DIM_MEM, DIM_EDGE, DIM_TIME, DIM_MEM, heads=2, dropout=0.0)
    h_src = torch.randn(block.num_src_nodes(), DIM_MEM, requires_grad=True)
    outputs, grads = [], []
    for attend in (layer, lambda *args: unsplit_attention(layer, *args)):
        out = attend(block, h_src, edge_feat)
        outputs.append(out)
        grads.append(torch.autograd.grad(out.square().sum(), [h_src, *layer.parameters()]))
    torch.testing.assert_close(outputs[0], outputs[1])
    for split, unsplit in zip(*grads):
        # float32 sums in another order: the highest time frequency's gradient sums dt * sin(w * dt) terms
        # over gaps of ~2,000 that largely cancel, so it matches to about 1e-4 relative only
        torch.testing.assert_close(split, unsplit, rtol=1e-3, atol=1e-4)
