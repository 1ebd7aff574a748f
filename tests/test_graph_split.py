"""Chronological split: the published period counts on the real files, DyGLib's inductive masking, ext_roll."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from common.errors import DataError
from graph import EventStream, Split, chronological_split, repeated_pairs, split_periods, synthetic_events

PUBLISHED_PERIODS = [
    ("uci_events", (41_884, 8_975, 8_976)),
    ("wikipedia_events", (110_232, 23_621, 23_621)),
    ("enron_events", (87_664, 18_786, 18_785)),
]


def _assert_masking_is_consistent(events: EventStream, split: Split, inductive_ratio: float) -> None:
    """DyGLib's rules: masking only removes train-period events that touch a masked node; masked nodes
    are active after the train period; inductive subsets are exactly the events with an unseen endpoint."""
    period = split_periods(events)
    masked = np.isin(np.arange(events.num_nodes), split.masked_nodes)
    train_period = np.flatnonzero(period == 0)
    removed = np.setdiff1d(train_period, split.train)
    assert np.all(np.isin(split.train, train_period))
    assert np.all(masked[events.src[removed]] | masked[events.dst[removed]])
    assert not np.any(masked[events.src[split.train]] | masked[events.dst[split.train]])
    assert split.masked_nodes.size == int(inductive_ratio * events.num_nodes)
    later = period > 0
    assert np.all(np.isin(split.masked_nodes, np.concatenate([events.src[later], events.dst[later]])))
    seen = np.isin(np.arange(events.num_nodes), np.concatenate([events.src[split.train], events.dst[split.train]]))
    for part, inductive in ((split.val, split.val_inductive), (split.test, split.test_inductive)):
        unseen = ~seen[events.src[part]] | ~seen[events.dst[part]]
        assert np.array_equal(inductive, part[unseen])


@pytest.mark.parametrize("fixture, periods", PUBLISHED_PERIODS)
def test_real_split_reproduces_published_counts(request, fixture, periods):
    events = request.getfixturevalue(fixture)
    assert tuple(np.bincount(split_periods(events))) == periods
    split = chronological_split(events)
    assert (split.val.size, split.test.size) == periods[1:]
    assert split.train.size < periods[0]
    _assert_masking_is_consistent(events, split, inductive_ratio=0.1)


def test_split_parts_are_sorted_int64_and_in_time_order():
    events = synthetic_events(num_nodes=80, num_events=1500, seed=1)
    split = chronological_split(events)
    for part in (split.train, split.val, split.test, split.val_inductive, split.test_inductive, split.masked_nodes):
        assert part.dtype == np.int64 and np.all(np.diff(part) > 0)
    assert events.t[split.train].max() < events.t[split.val].min()
    assert events.t[split.val].max() < events.t[split.test].min()
    assert split.val_inductive.size > 0 and split.test_inductive.size > 0
    _assert_masking_is_consistent(events, split, inductive_ratio=0.1)


def test_masked_nodes_are_seeded():
    events = synthetic_events(num_nodes=80, num_events=1500, seed=1)
    first, again, other = (chronological_split(events, seed=s) for s in (5, 5, 6))
    assert np.array_equal(first.masked_nodes, again.masked_nodes) and np.array_equal(first.train, again.train)
    assert not np.array_equal(first.masked_nodes, other.masked_nodes)


def test_without_inductive_masking_train_is_the_whole_train_period():
    events = synthetic_events(num_nodes=80, num_events=1500, seed=1)
    split = chronological_split(events, inductive_ratio=0.0)
    assert split.masked_nodes.size == 0
    assert np.array_equal(split.train, np.flatnonzero(split_periods(events) == 0))


def test_custom_ratios_cut_at_the_time_quantiles():
    events = synthetic_events(num_nodes=50, num_events=1000, seed=2)
    assert tuple(np.bincount(split_periods(events, val_ratio=0.1, test_ratio=0.2))) == (700, 100, 200)


def test_ext_roll_decides_the_periods_when_present():
    events = synthetic_events(num_nodes=50, num_events=600, seed=2)
    ext_roll = np.repeat(np.array([0, 1, 2], dtype=np.int8), [100, 200, 300])
    tgl = replace(events, ext_roll=ext_roll)
    split = chronological_split(tgl, inductive_ratio=0.0)
    assert np.array_equal(split.val, np.arange(100, 300)) and np.array_equal(split.test, np.arange(300, 600))
    assert np.array_equal(split.train, np.arange(100))
    assert chronological_split(tgl, by_ext_roll=False, inductive_ratio=0.0).train.size == 420


def test_split_by_ext_roll_without_the_column_is_a_data_error():
    with pytest.raises(DataError, match="ext_roll"):
        chronological_split(synthetic_events(num_events=100), by_ext_roll=True)


@pytest.mark.parametrize("kwargs", [{"val_ratio": 0.6, "test_ratio": 0.4}, {"test_ratio": -0.1},
                                    {"inductive_ratio": 1.0}])
def test_invalid_ratios_are_rejected(kwargs):
    with pytest.raises(ValueError, match="ratio"):
        chronological_split(synthetic_events(num_events=100), **kwargs)


def test_repeated_pairs_marks_every_later_meeting_of_two_nodes_in_either_direction():
    events = EventStream(name="toy", src=np.array([0, 1, 0, 2, 2, 0]), dst=np.array([1, 0, 2, 1, 1, 1]),
                         t=np.arange(6.0), num_nodes=3, node_ids=np.arange(3))
    assert repeated_pairs(events).tolist() == [False, True, False, False, True, True]


def test_uci_test_period_repeats_more_pairs_than_validation(uci_events):
    """A split property behind part of the models' higher test than validation AP on UCI."""
    split = chronological_split(uci_events, inductive_ratio=0.0)
    repeated = repeated_pairs(uci_events)
    assert repeated[split.val].mean() == pytest.approx(0.755, abs=0.002)
    assert repeated[split.test].mean() == pytest.approx(0.821, abs=0.002)
