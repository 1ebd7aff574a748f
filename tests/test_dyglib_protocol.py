"""`eval.protocol: dyglib`: DyGLib's held-out nodes and negative edges, drawn as its code draws them, and
EdgeBank's published cells reproduced on the bundled UCI and Enron files."""
from __future__ import annotations

import numpy as np
import pytest

from common.errors import ConfigError
from graph import dyglib
from graph.events import EventStream
from graph.split import TRAIN, Split, chronological_batches, chronological_split, split_periods
from pipeline.run.baselines import run_baseline
from pipeline.run.config import validate_config


def dyglib_split(events: EventStream, seed: int = 0):
    return chronological_split(events, seed=seed, draw_held_out=dyglib.held_out_nodes)


def test_held_out_nodes_are_drawn_once_for_every_seed_and_never_trained_on(uci_events):
    split = dyglib_split(uci_events, seed=0)
    assert np.array_equal(split.masked_nodes, dyglib_split(uci_events, seed=7).masked_nodes)
    assert len(split.masked_nodes) == int(0.1 * uci_events.num_nodes)
    after_train = split_periods(uci_events) != TRAIN
    active_later = np.union1d(uci_events.src[after_train], uci_events.dst[after_train])
    assert np.isin(split.masked_nodes, active_later).all()
    trained = np.union1d(uci_events.src[split.train], uci_events.dst[split.train])
    assert not np.isin(split.masked_nodes, trained).any()


def brute_force_negatives(events: EventStream, strategy: str, batches: list[np.ndarray], last_observed: float,
                          seed: int) -> tuple[np.ndarray, np.ndarray]:
    """DyGLib's sampler as its documentation states it, with every set rebuilt from the stream per batch."""
    src, dst, t = events.node_ids[events.src], events.node_ids[events.dst], events.t
    rng = np.random.RandomState(seed)
    pairs = lambda mask: set(zip(src[mask].tolist(), dst[mask].tolist()))  # noqa: E731
    observed = pairs(t <= last_observed)
    out_src, out_dst = [], []
    for batch in batches:
        start, end = t[batch[0]], t[batch[-1]]
        history, in_span = pairs(t <= start), pairs((t >= start) & (t <= end))
        pool = history - in_span if strategy == "historical" else history - observed - in_span
        pool_src, pool_dst = np.array([p[0] for p in pool]), np.array([p[1] for p in pool])
        if len(batch) > len(pool):
            everything = {(s, d) for s in np.unique(src).tolist() for d in np.unique(dst).tolist()}
            possible = list(everything - set(zip(src[batch].tolist(), dst[batch].tolist())))
            fill = rng.choice(len(possible), size=len(batch) - len(pool), replace=len(possible) < len(batch) - len(pool))
            out_src.append(np.concatenate([[possible[i][0] for i in fill], pool_src]).astype(np.int64))
            out_dst.append(np.concatenate([[possible[i][1] for i in fill], pool_dst]).astype(np.int64))
        else:
            picked = rng.choice(len(pool), size=len(batch), replace=False)
            out_src.append(pool_src[picked])
            out_dst.append(pool_dst[picked])
    return np.concatenate(out_src), np.concatenate(out_dst)


@pytest.mark.parametrize("strategy", ["historical", "inductive"])
@pytest.mark.parametrize("batch_size", [3, 60])  # 60: fewer past pairs than events, so random pairs fill in
def test_edge_negatives_equal_the_sampler_rebuilt_from_the_stream_for_every_batch(strategy, batch_size):
    rng = np.random.default_rng(3)
    num_events = 120
    ids = np.arange(100, 112)  # file ids other than the stream's own, to check the mapping both ways
    src, dst = rng.integers(0, 12, num_events), rng.integers(0, 12, num_events)
    events = EventStream(name="tiny", src=src, dst=dst, t=np.sort(rng.integers(0, 60, num_events)).astype(float),
                         num_nodes=12, node_ids=ids)
    indices = np.arange(30, num_events)
    batches = chronological_batches(indices, batch_size)
    split = Split(train=np.arange(20), val=np.arange(20, 30), test=indices, val_inductive=np.empty(0, np.int64),
                  test_inductive=np.empty(0, np.int64), masked_nodes=np.empty(0, np.int64))
    last_observed = float(events.t[29])  # test leaves out the pairs seen up to the end of validation
    neg_src, neg_dst = dyglib.split_negatives(events, split, strategy, batches, "test")
    ref_src, ref_dst = brute_force_negatives(events, strategy, batches, last_observed, dyglib.SPLIT_SEEDS["test"])
    np.testing.assert_array_equal(ids[neg_src], ref_src)
    np.testing.assert_array_equal(ids[neg_dst], ref_dst)


def test_random_negatives_keep_the_source_and_draw_destinations_as_dyglib_does(uci_events):
    batches = chronological_batches(np.arange(1000, 1400), 200)
    split = dyglib_split(uci_events)
    neg_src, neg_dst = dyglib.split_negatives(uci_events, split, "random", batches, "val")
    np.testing.assert_array_equal(neg_src, uci_events.src[1000:1400])
    rng = np.random.RandomState(dyglib.SPLIT_SEEDS["val"])
    file_dst = np.unique(uci_events.node_ids[uci_events.dst])
    expected = []
    for batch in batches:
        rng.randint(0, len(np.unique(uci_events.src)), len(batch))
        expected.append(file_dst[rng.randint(0, len(file_dst), len(batch))])
    np.testing.assert_array_equal(uci_events.node_ids[neg_dst], np.concatenate(expected))


def test_dyglib_protocol_draws_one_negative_per_event():
    with pytest.raises(ConfigError, match="eval.mrr_negatives"):
        validate_config({"eval": {"protocol": "dyglib", "mrr_negatives": 10}})


# DyGLib's published EdgeBank cells (test AP / AUC x 100, mean over evaluation batches of 200), each with the
# memory DyGLib's best configs use for it; random negatives are reproduced draw for draw.
PUBLISHED_CELLS = [
    ("uci", "unlimited", "random", 76.20, 77.30, 0.01),
    ("uci", "proportion", "historical", 65.50, 69.56, 1.0),
    ("uci", "repeat_interval", "inductive", 57.43, 58.03, 0.2),
    ("enron", "proportion", "random", 83.53, 87.05, 0.01),
    ("enron", "repeat_threshold", "inductive", 73.89, 75.00, 0.1),
]


@pytest.mark.slow
@pytest.mark.parametrize("data, memory, strategy, ap, auc, within", PUBLISHED_CELLS)
def test_edgebank_reproduces_dyglib_published_cells(data, memory, strategy, ap, auc, within, request, tmp_path):
    events = request.getfixturevalue(f"{data}_events")
    cfg = validate_config({"model": "edgebank", "edgebank": {"memory": memory},
                           "eval": {"protocol": "dyglib", "batch_size": 200, "negatives": ["random", strategy]}})
    results = run_baseline(cfg, events, tmp_path, seed=0)
    suffix = "" if strategy == "random" else f"@{strategy}"
    assert 100 * results[f"test_batch_ap{suffix}"] == pytest.approx(ap, abs=within)
    assert 100 * results[f"test_batch_auc{suffix}"] == pytest.approx(auc, abs=within)
