"""EdgeBank: which pairs it remembers on a tiny stream, and its runs through train() like any model."""
from __future__ import annotations

import json
import math

import numpy as np
import torch

from models.edgebank import EdgeBank
from pipeline.config import validate_config
from pipeline.trainer import train

# directed events 0->1 (t 1), 1->2 (t 2), 0->1 (t 3), 2->0 (t 10)
SRC, DST, T = np.array([0, 1, 0, 2]), np.array([1, 2, 1, 0]), np.array([1.0, 2.0, 3.0, 10.0])


def test_unlimited_memory_remembers_every_earlier_pair_in_its_direction():
    bank = EdgeBank.from_stream(SRC, DST, T, num_nodes=3)
    queries = [((0, 1), 0), ((0, 1), 1), ((1, 2), 1), ((1, 2), 2), ((2, 1), 4), ((2, 0), 3), ((2, 0), 4)]
    src, dst = (np.array([pair[i] for pair, _ in queries]) for i in (0, 1))
    seen = np.array([count for _, count in queries])
    np.testing.assert_array_equal(bank.scores(src, dst, seen), [0, 1, 0, 1, 0, 0, 1])


def test_time_window_forgets_pairs_older_than_the_window_before_the_latest_event():
    bank = EdgeBank.from_stream(SRC, DST, T, num_nodes=3, window=5.0)
    # after all 4 events the latest is t 10: 0->1 (last at t 3) is forgotten, 2->0 (t 10) is remembered
    np.testing.assert_array_equal(bank.scores(np.array([0, 2, 1]), np.array([1, 0, 2]), np.array([4, 4, 4])), [0, 1, 0])
    # after 3 events the latest is t 3: 1->2 (t 2) is within the window
    np.testing.assert_array_equal(bank.scores(np.array([1]), np.array([2]), np.array([3])), [1])


def test_edgebank_runs_through_train_and_reports_every_strategy(uci_events, tmp_path):
    cfg = validate_config({"model": "edgebank", "edgebank": {"memory": "window"},
                           "eval": {"batch_size": 200, "negatives": ["random", "historical", "inductive"]}})
    results = train(cfg, uci_events, tmp_path, torch.device("cpu"), seed=0, show_progress=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["model"] == "edgebank" and saved["epochs"] == 0 and math.isnan(results["train_events_per_s"])
    for key in ("val_ap", "test_ap", "test_auc", "test_batch_ap", "test_inductive_ap", "test_ap@historical",
                "test_ap@inductive"):
        assert 0.0 <= saved[key] <= 1.0
    # UCI's messages recur: remembering pairs ranks positives above random negatives
    assert saved["test_ap"] > 0.6
    assert not (tmp_path / "checkpoint.pt").exists()
