"""TGB's protocol (`eval.protocol: tgb`): TGB's split, its evaluation-negative files read by a restricted
unpickler and matched against the stream, and negatives sampled as TGB's generator mixes them."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from common.errors import ConfigError, DataError
from graph.events import event_stream_from_raw
from graph.synthetic import synthetic_events
from pipeline.run.baselines import run_baseline
from pipeline.run.checkpoint import UNFINGERPRINTED_EVAL_KEYS, config_fingerprint
from pipeline.run.config import validate_config
from pipeline.run.negative_scores import score_in_chunks
from pipeline.run.ranking import CandidateRanker
from pipeline.run.setup import build_setup, evaluation_stages, run_split
from pipeline.run.tgb import HIST_RATIO, NegativesRanker, file_negatives, load_negatives_file, sampled_negatives
from pipeline.run.trainer import train
from pipeline.stages.link_prediction import Scoring

# TGB's ids (sources 1, 2; destinations 10..14) at times 1..20: 70/15/15 at the time quantiles puts t <= 14.3
# in training, 15..17 in validation and 18..20 in test
PAIRS = [(1, 10), (1, 11), (2, 12), (1, 10), (2, 12), (2, 13), (1, 11), (1, 10), (2, 13), (1, 12), (2, 10),
         (1, 10), (2, 12), (1, 11),
         (1, 10), (2, 11), (1, 13),
         (1, 11), (2, 12), (2, 14)]
# each positive's negatives, as TGB writes them: numpy ids (floats where its generator concatenated an empty
# float array), keyed by (src, dst, t) as numpy int64
VAL = {(1, 10, 15): [11, 12], (2, 11, 16): [10], (1, 13, 17): [10, 11, 12]}
TEST = {(1, 11, 18): [13, 14], (2, 12, 19): [14], (2, 14, 20): [10, 12, 13]}
# EdgeBank (unlimited) scores a pair 1 when it occurred before the split's batch. Validation (memory: the
# training pairs (1,10) (1,11) (1,12) (2,10) (2,12) (2,13)): (1,10) 1 against 1, 1: rank 1 + 0.5 * 2 = 2;
# (2,11) 0 against (2,10) 1: rank 2; (1,13) 0 against 1, 1, 1: rank 4
VAL_MRR = (1 / 2 + 1 / 2 + 1 / 4) / 3
# test (memory adds (1,10) (2,11) (1,13)): (1,11) 1 against (1,13) 1, (1,14) 0: rank 1.5; (2,12) 1 against
# (2,14) 0: rank 1; (2,14) 0 against 1, 1, 1: rank 4
TEST_MRR = (1 / 1.5 + 1 + 1 / 4) / 3


def tgb_stream():
    src, dst = (np.array(side, dtype=np.int64) for side in zip(*PAIRS))
    return event_stream_from_raw("tgb-tiny", src, dst, np.arange(1, 21, dtype=np.float64), source="tgb-tiny.csv")


def write_negatives(path, table, protocol=pickle.HIGHEST_PROTOCOL, as_float=True):
    dtype = np.float64 if as_float else np.int64
    data = {tuple(np.int64(part) for part in key): value if any(isinstance(v, str) for v in value)
            else np.array(value, dtype=dtype) for key, value in table.items()}
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    return path


def tgb_config(tmp_path, val=VAL, test=TEST, **eval_keys):
    return validate_config({"model": "edgebank", "edgebank": {"memory": "unlimited"},
                            "eval": {"protocol": "tgb", "ranking": "tgb",
                                     "val_negatives_file": str(write_negatives(tmp_path / "val_ns.pkl", val)),
                                     "test_negatives_file": str(write_negatives(tmp_path / "test_ns.pkl", test)),
                                     **eval_keys}})


def test_split_is_tgbs_time_quantile_rule_with_no_held_out_node():
    # times 0 0 0 1 1 1 1 2 2 3: np.quantile at 0.70 is 1.3 and at 0.85 is 2.0; TGB trains on t <= 1.3,
    # validates on 1.3 < t <= 2.0 (the two events at the boundary 2.0 included) and tests on t > 2.0
    t = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 3], dtype=np.float64)
    events = event_stream_from_raw("ties", np.arange(10), np.arange(10, 20), t, source="ties.csv")
    events = dataclasses.replace(events, ext_roll=np.zeros(10, dtype=np.int8))  # TGB never reads one
    split = run_split(validate_config({"eval": {"protocol": "tgb"}}), events, seed=3)
    np.testing.assert_array_equal(split.train, np.arange(7))
    np.testing.assert_array_equal(split.val, [7, 8])
    np.testing.assert_array_equal(split.test, [9])
    assert len(split.masked_nodes) == 0
    # TGB's generate_splits, transcribed
    val_time, test_time = np.quantile(t, [1 - 0.15 - 0.15, 1 - 0.15])
    np.testing.assert_array_equal(split.train, np.flatnonzero(t <= val_time))
    np.testing.assert_array_equal(split.val, np.flatnonzero((t <= test_time) & (t > val_time)))
    np.testing.assert_array_equal(split.test, np.flatnonzero(t > test_time))


def test_tgb_files_round_trip_to_the_hand_computed_mrr(tmp_path):
    results = run_baseline(tgb_config(tmp_path), tgb_stream(), tmp_path / "run", seed=0)
    assert results["val_mrr_tgb"] == pytest.approx(VAL_MRR)
    assert results["test_mrr_tgb"] == pytest.approx(TEST_MRR)
    assert results["test_hits@10_tgb"] == 1.0


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_every_pickle_protocol_and_integer_arrays_read_the_same(tmp_path, protocol):
    events = tgb_stream()
    split = run_split(tgb_config(tmp_path), events, seed=0)
    path = write_negatives(tmp_path / f"test_{protocol}.pkl", TEST, protocol=protocol, as_float=protocol % 2 == 0)
    negatives = file_negatives(path, events, split.test, "test")
    ids = events.node_ids[negatives.dst]
    np.testing.assert_array_equal(negatives.valid, [[True, True, False], [True, False, False], [True, True, True]])
    assert [list(row[valid]) for row, valid in zip(ids, negatives.valid)] == list(TEST.values())


def test_a_file_written_by_either_numpy_reads_alike(tmp_path):
    """numpy 2 writes `numpy._core.multiarray` where numpy 1 wrote `numpy.core.multiarray`."""
    events = tgb_stream()
    split = run_split(tgb_config(tmp_path), events, seed=0)
    written = write_negatives(tmp_path / "test.pkl", TEST, protocol=2).read_bytes()
    other = b"numpy._core" if b"numpy.core" in written else b"numpy.core"
    renamed = tmp_path / "other_numpy.pkl"
    renamed.write_bytes(written.replace(b"numpy.core", other).replace(b"numpy._core", other))
    for path in (tmp_path / "test.pkl", renamed):
        negatives = file_negatives(path, events, split.test, "test")
        assert events.node_ids[negatives.dst[2]].tolist() == TEST[(2, 14, 20)]


class Payload:
    """Any class of the reader's own: a pickle may name it, and a negatives file never does."""

    def __reduce__(self):
        return (Payload, ())


class RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("make, refused", [
    (lambda tmp: {(1, 11, 18): RunsACommand(tmp / "ran")}, f"{os.system.__module__}.system"),
    (lambda tmp: {(1, 11, 18): Payload()}, f"{__name__}.Payload"),
    (lambda tmp: b"cbuiltins\neval\n(S'print(1)'\ntR.", "builtins.eval"),
    (lambda tmp: {(1, 11, 18): np.array([object()], dtype=object)}, "builtins.object"),
])
def test_a_pickle_asking_for_any_other_global_is_refused_before_it_runs(tmp_path, make, refused):
    made = make(tmp_path)
    path = tmp_path / "evil.pkl"
    path.write_bytes(made if isinstance(made, bytes) else pickle.dumps(made))
    with pytest.raises(DataError) as err:
        load_negatives_file(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and refused in message and "refused" in message
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("content, expected", [
    (pickle.dumps([1, 2, 3]), "holds a dict"),
    (pickle.dumps({(1, 11, 18): [13]})[:-5], "not a readable TGB negatives pickle"),
    (b"", "not a readable TGB negatives pickle"),
])
def test_a_file_that_is_not_a_negatives_dict_is_refused_in_one_line(tmp_path, content, expected):
    path = tmp_path / "odd.pkl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=expected) as err:
        load_negatives_file(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("test, expected", [
    ({**TEST, (1, 11, 999): [13]}, r"entry 4, \(src, dst, t\) = \(1, 11, 999\), is not an event of the test split"),
    ({key: value for key, value in TEST.items() if key[2] != 19},
     r"no entry for the test split's event \(src, dst, t\) = \(2, 12, 19\) \(event 19 of the stream"),
    ({**TEST, (2, 12, 19): [14, 99]}, r"entry 2, \(2, 12, 19\), lists node id 99, which is not a node"),
    ({(0, 3, 18): [5], (1, 4, 19): [6], (1, 6, 20): [2]}, r"entry 1, \(src, dst, t\) = \(0, 3, 18\), is not an event"),
    (VAL, r"entry 1, \(src, dst, t\) = \(1, 10, 15\), is not an event of the test split"),
    ({**TEST, (2, 12, 19): ["a"]}, r"entry 2, \(2, 12, 19\), holds list, not a list of node ids"),
])
def test_a_file_that_does_not_match_the_split_is_refused_naming_the_first_mismatch(tmp_path, test, expected):
    cfg = tgb_config(tmp_path, test=test)
    with pytest.raises(DataError, match=expected) as err:
        run_baseline(cfg, tgb_stream(), tmp_path / "run", seed=0)
    assert "\n" not in str(err.value) and str(tmp_path / "test_ns.pkl") in str(err.value)


def test_a_mismatching_file_stops_train_with_one_line_and_exit_2(tmp_path, scripts_dir):
    data = tmp_path / "tgb.csv"
    data.write_text("".join(f"{s},{d},{t}\n" for t, (s, d) in enumerate(PAIRS, 1)))
    val = write_negatives(tmp_path / "val_ns.pkl", VAL)
    test = write_negatives(tmp_path / "test_ns.pkl", {**TEST, (2, 12, 19): [99]})
    settings = ["eval.protocol=tgb", "eval.ranking=tgb", "eval.negatives=[random]", f"eval.val_negatives_file={val}",
                f"eval.test_negatives_file={test}"]
    config = scripts_dir.parent / "configs" / "edgebank.yml"
    command = [sys.executable, str(scripts_dir / "train.py"), "--config", str(config), "--data", str(data),
               *(part for setting in settings for part in ("--set", setting)), "--out", str(tmp_path / "run")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "node id 99" in result.stderr and str(test) in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("given, expected", [
    ({"ranking": "tgb", "val_negatives_file": "v", "test_negatives_file": "t"}, "needs 'eval.protocol' tgb"),
    ({"protocol": "tgb", "ranking": "tgb", "test_negatives_file": "t"}, "eval.val_negatives_file' must name"),
    ({"test_negatives_file": "t"}, "read only under 'eval.ranking' tgb"),
    ({"protocol": "tgb", "test_ratio": 0.2}, "must be 0.15 under 'eval.protocol' tgb"),
    ({"ranking": "sampled", "ranking_negatives": 0}, "eval.ranking_negatives' must be > 0"),
])
def test_config_refuses_what_tgbs_protocol_cannot_mean(given, expected):
    with pytest.raises(ConfigError, match=expected):
        validate_config({"eval": given})


@pytest.fixture(scope="module")
def stream():
    return synthetic_events(num_nodes=60, num_events=1500, seed=2)


def test_sampled_negatives_are_reproducible_by_seed(stream):
    split = run_split(validate_config({"eval": {"protocol": "tgb"}}), stream, seed=0)
    first = sampled_negatives(stream, split, split.test, "test", 20, seed=7)
    again = sampled_negatives(stream, split, split.test, "test", 20, seed=7)
    other = sampled_negatives(stream, split, split.test, "test", 20, seed=8)
    np.testing.assert_array_equal(first.dst, again.dst)
    np.testing.assert_array_equal(first.valid, again.valid)
    assert not np.array_equal(first.dst, other.dst)


@pytest.mark.parametrize("num", [6, 20, 200])
def test_sampled_negatives_mix_historical_and_random_as_tgb_generates_them(stream, num):
    """Up to half from the source's training destinations, the rest from the other destination ids, never a
    destination of the same source at the same time, all distinct; all of them when too few exist."""
    split = run_split(validate_config({"eval": {"protocol": "tgb"}}), stream, seed=0)
    negatives = sampled_negatives(stream, split, split.test, "test", num, seed=1)
    train_pairs = set(zip(stream.src[split.train].tolist(), stream.dst[split.train].tolist()))
    all_dst = set(range(int(stream.dst.min()), int(stream.dst.max()) + 1))
    test = split.test
    mixes = []
    for row, event in enumerate(test):
        s, t = stream.src[event], stream.t[event]
        same_time = set(stream.dst[test][(stream.src[test] == s) & (stream.t[test] == t)].tolist())
        drawn = negatives.dst[row][negatives.valid[row]].tolist()
        assert len(drawn) == len(set(drawn)) and not set(drawn) & same_time
        history = {d for (src, d) in train_pairs if src == s} - same_time
        hist = [d for d in drawn if d in history]
        expected_hist = min(int(num * HIST_RATIO), len(history))
        assert drawn[:len(hist)] == hist and len(hist) == expected_hist  # historical first, then random
        pool = all_dst - history - same_time - {d for (src, d) in train_pairs if src == s}
        assert set(drawn[len(hist):]) <= pool
        assert len(drawn) == expected_hist + min(num - expected_hist, len(pool))
        mixes.append((len(hist), len(drawn) - len(hist)))
    assert any(h and r for h, r in mixes)  # the split really mixes both kinds


SMALL = {
    "memory": {"dim": 16, "dim_time": 8, "update_time": "batch"},
    "embedding": {"dim_out": 16, "dim_time": 8, "heads": 2, "dropout": 0.0},
    "train": {"batch_size": 50, "epochs": 1, "lr": 0.002},
    "eval": {"batch_size": 50, "protocol": "tgb", "ranking": "sampled", "ranking_negatives": 12},
    "pipeline": {"mode": "sequential"},
}


def test_a_trained_models_negatives_score_as_the_negatives_of_their_event(stream):
    setup = build_setup(validate_config(SMALL), stream, torch.device("cpu"), seed=0)
    setup.model.eval()
    stages = evaluation_stages(setup, "test", setup.split.test, 0)
    negatives = sampled_negatives(stream, setup.split, setup.split.test, "test", 12, seed=42)
    ranker = NegativesRanker(stages, negatives, roots_per_chunk=120)  # chunks of 2 columns per batch of 50
    kept = []
    stages.step.on_scored = lambda i, ctx: (kept.append(ranker.scores(i, ctx)), ranker(i, ctx))
    ctx = stages.sample(0)
    stages.fetch_features(0, ctx)
    stages.fetch_memory(0, ctx, 0)
    stages.train(0, ctx)
    pos, scores = kept[0]
    rows = slice(0, len(stages.batches[0]))
    setup.store.reset()
    for column in (0, 5, 11):
        one = dataclasses.replace(stages, num_neg=1, step=Scoring(),
                                  negatives=lambda i, ev, c=column: (negatives.dst[rows, c], None))
        one_ctx = one.sample(0)
        one.fetch_features(0, one_ctx)
        one.fetch_memory(0, one_ctx, 0)
        one.train(0, one_ctx)
        np.testing.assert_allclose(scores[:, column], one.step.neg_scores[0][:, 0], rtol=1e-5, atol=1e-6)
    valid = negatives.valid[rows]
    expected = [1 + np.sum(s[v] > p) + 0.5 * np.sum(s[v] == p) for p, s, v in zip(pos, scores, valid)]
    np.testing.assert_allclose(ranker.all_ranks(), expected)


def test_candidates_shared_by_every_event_score_as_the_all_destination_ranking_scores_them(stream):
    """`score_in_chunks` over `np.broadcast_to(candidates, (B, C))` is the ranking against every destination."""
    setup = build_setup(validate_config(SMALL), stream, torch.device("cpu"), seed=0)
    setup.model.eval()
    stages = evaluation_stages(setup, "test", setup.split.test, 0)
    ranker = CandidateRanker(stages, stream, roots_per_chunk=300)
    kept = []
    candidates = ranker.candidates
    stages.step.on_scored = lambda i, ctx: kept.append((ranker.scores(i, ctx), score_in_chunks(
        stages, i, ctx, np.broadcast_to(candidates, (len(ctx.events), len(candidates))), 300)))
    ctx = stages.sample(0)
    stages.fetch_features(0, ctx)
    stages.fetch_memory(0, ctx, 0)
    stages.train(0, ctx)
    (pos, scores), (shared_pos, shared_scores) = kept[0]
    np.testing.assert_allclose(shared_pos, pos, rtol=1e-4, atol=1e-5)  # to float32 rounding, whichever path
    np.testing.assert_allclose(shared_scores, scores, rtol=1e-4, atol=1e-5)  # CandidateRanker takes


def test_training_reports_the_sampled_ranking_of_its_best_weights(stream, tmp_path):
    results = train(validate_config(SMALL), stream, tmp_path, torch.device("cpu"), seed=0, show_progress=False)
    assert 1 / 13 <= results["test_mrr_sampled"] <= 1 and 0 <= results["test_hits@10_sampled"] <= 1
    assert "test_mrr_all" not in results and results["test_ranking_s"] > 0


def test_a_trained_run_refuses_a_mismatching_file_before_it_trains(tmp_path):
    cfg = validate_config({**SMALL, "eval": {**SMALL["eval"], "ranking": "tgb",
                                             "val_negatives_file": str(write_negatives(tmp_path / "v.pkl", VAL)),
                                             "test_negatives_file": str(write_negatives(tmp_path / "t.pkl", VAL))}})
    with pytest.raises(DataError, match=r"t\.pkl: entry 1, .* is not an event of the test split"):
        train(cfg, tgb_stream(), tmp_path / "run", torch.device("cpu"), seed=0, show_progress=False)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_the_ranking_keys_leave_the_checkpoint_fingerprint_of_earlier_runs_as_it_was():
    """A checkpoint written before the keys existed resumes: its config (without them) hashes as today's."""
    cfg = validate_config({"eval": {"ranking": "sampled", "ranking_negatives": 7, "ranking_seed": 3}})
    earlier = cfg.to_dict()
    earlier["eval"] = {k: v for k, v in earlier["eval"].items() if k not in UNFINGERPRINTED_EVAL_KEYS}
    del earlier["pipeline"]
    earlier["train"] = {k: v for k, v in earlier["train"].items() if k not in ("epochs", "patience")}
    earlier["predictor"] = {"module": earlier["predictor"]["module"]}  # the pair-history keys came later too
    assert config_fingerprint(cfg) == hashlib.sha256(json.dumps(earlier, sort_keys=True).encode()).hexdigest()[:16]
