"""The temporal common-neighbour predictor (`predictor.module: common_neighbours`): what it reads of two
neighbourhoods equals a brute-force count over the event list, it scores a pair the same whichever layout
the pair arrives in, and it trains through every pipeline mode like any other part."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from common.errors import UserError
from graph.synthetic import synthetic_events
from models import build_model
from models.common_neighbours import RootNeighbourhoods, pair_neighbourhoods
from pipeline.run.setup import build_setup, evaluation_stages
from pipeline.stages.link_prediction import Scoring
from sampler.tcsr import TCSR
from sampler.temporal import TemporalSampler
from small import small_config
from test_training import final_model, run

FANOUT = 4
CN = {"predictor": {"module": "common_neighbours"}}


@pytest.fixture(scope="module")
def events():
    stream = synthetic_events(num_nodes=15, num_events=400, seed=7)
    assert len(np.unique(stream.t)) == len(stream.t), "distinct times make 'newest first' unambiguous"
    return stream


def brute_force_neighbours(events, node: int, t: float) -> list[int]:
    """The other endpoints of `node`'s `FANOUT` latest events strictly before `t`, newest first."""
    touching = [(events.t[i], int(events.dst[i] if events.src[i] == node else events.src[i]))
                for i in range(len(events.t)) if events.t[i] < t and node in (events.src[i], events.dst[i])]
    return [other for _, other in sorted(touching, reverse=True)[:FANOUT]]


def test_links_and_shared_neighbours_equal_a_brute_force_count(events):
    rng = np.random.default_rng(0)
    num_pairs = 60
    t = np.sort(rng.uniform(events.t[50], events.t[-1], num_pairs))
    u, v = rng.integers(0, events.num_nodes, num_pairs), rng.integers(0, events.num_nodes, num_pairs)
    sampler = TemporalSampler(TCSR.from_events(events.src, events.dst, events.t, events.num_nodes), [FANOUT])
    [block] = sampler.sample(np.concatenate([u, v]), np.concatenate([t, t]))
    state_of_node = torch.randn(events.num_nodes, 3, dtype=torch.float64)
    nb = RootNeighbourhoods.from_block(block, state_of_node[block.srcdata["ID"]], FANOUT)
    pairs = pair_neighbourhoods(nb, torch.arange(num_pairs), torch.arange(num_pairs, 2 * num_pairs))
    assert pairs.shared.any() and pairs.u_links.any(), "the stream must exercise both kinds of overlap"
    for p in range(num_pairs):
        of_u, of_v = brute_force_neighbours(events, u[p], t[p]), brute_force_neighbours(events, v[p], t[p])
        padding = [0.0] * (FANOUT - len(of_u))
        assert pairs.u_links[p].tolist() == [float(n == v[p]) for n in of_u] + padding
        assert pairs.v_links[p].tolist() == [float(n == u[p]) for n in of_v] + [0.0] * (FANOUT - len(of_v))
        shared = [n in of_v for n in of_u]
        assert pairs.shared[p].tolist() == shared + [False] * (FANOUT - len(of_u))
        expected = sum((state_of_node[n] for n, s in zip(of_u, shared) if s), torch.zeros(3, dtype=torch.float64))
        torch.testing.assert_close(pairs.pooled[p], expected)
        last = [events.t[i] for i in range(len(events.t)) if events.t[i] < t[p]
                and {int(events.src[i]), int(events.dst[i])} == {int(u[p]), int(v[p])}]
        expected_gap = t[p] - max(last) if v[p] in of_u else 0.0
        assert pairs.last_link_dt[p].item() == pytest.approx(expected_gap, rel=1e-5)


def scores_of_first_test_batch(events, negatives, setup=None):
    """Positive and negative logits of the first test batch with the given negative function, by `setup`'s
    model (default: an untrained TGN + common neighbours)."""
    setup = setup or build_setup(small_config(**CN), events, torch.device("cpu"), seed=0)
    setup.model.eval()
    stages = dataclasses.replace(evaluation_stages(setup, "test", setup.split.test, 0), step=Scoring(),
                                 negatives=negatives, num_neg=1)
    ctx = stages.sample(0)
    stages.fetch_features(0, ctx)
    stages.fetch_memory(0, ctx, 0)
    stages.train(0, ctx)
    return stages.step.pos_scores[0], stages.step.neg_scores[0][:, 0]


def test_a_pair_scores_the_same_as_a_negative_of_its_source_or_with_its_own_negative_source(events):
    """DyGLib's negatives come with their own sources (another row layout): the same pairs score the same."""
    def destinations(i, batch):
        return (events.dst[batch][::-1].copy(), None)

    def with_sources(i, batch):
        return (events.dst[batch][::-1].copy(), events.src[batch].copy())

    pos, neg = scores_of_first_test_batch(events, destinations)
    pos_with_sources, neg_with_sources = scores_of_first_test_batch(events, with_sources)
    np.testing.assert_allclose(pos_with_sources, pos, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(neg_with_sources, neg, rtol=1e-5, atol=1e-6)


def test_pipelined_modes_train_it_like_sequential(events, tmp_path):
    """The predictor reads only what the sample stage drew, so presample and fixed-k 1 stay exact."""
    reference = run(small_config(**CN, pipeline={"mode": "sequential"}), events, tmp_path / "seq")
    results = run(small_config(**CN, pipeline={"mode": "presample"}), events, tmp_path / "presample")
    assert results["test_ap"] == reference["test_ap"]
    ref_model, model = final_model(tmp_path / "seq"), final_model(tmp_path / "presample")
    assert "predictor.link_fc.weight" in model
    assert all(torch.equal(ref_model[name], model[name]) for name in ref_model)
    mspipe = run(small_config(**CN, pipeline={"mode": "mspipe", "k_max": 3}), events, tmp_path / "mspipe")
    assert mspipe["staleness"]["max_seen"] <= 2


def test_a_model_that_samples_no_neighbours_is_refused_in_one_line():
    cfg = small_config(**CN, sampler={"fanouts": [0]}, memory={"updater": "rnn"}, embedding={"module": "jodie"})
    with pytest.raises(UserError, match=r"'sampler.fanouts' must be at least 1, got 0"):
        build_model(cfg, dim_node_feat=0, dim_edge_feat=0)
