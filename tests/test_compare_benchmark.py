"""The benchmarks (benchmarks/, run through scripts/benchmark.py), chiefly `compare`: this project's TGN
against the PyTorch Geometric reference (benchmarks/pyg_tgn.py). torch_geometric is optional, so only the
reference's own test needs it."""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.profiler import record_function

import benchmark  # scripts/benchmark.py, the command line (scripts/ is on pytest's pythonpath)
from benchmarks import accuracy, breakdown, compare, pyg_tgn, side_by_side
from benchmarks.train import train_variants
from benchmarks.attention import attention_with_dgl, attention_with_torch
from common.errors import UserError
from graph.split import chronological_split
from pipeline.run.setup import build_setup


@pytest.fixture
def without_pyg(monkeypatch):
    """torch_geometric behaves as if it were not installed."""
    def missing():
        raise ModuleNotFoundError("No module named 'torch_geometric'")

    monkeypatch.setattr(pyg_tgn, "import_pyg", missing)


def test_compare_without_pyg_fails_up_front_with_the_install_command(without_pyg, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(compare, "launch_compare_run", lambda *args: pytest.fail("a run was launched"))
    out = tmp_path / "compare.json"
    assert benchmark.main(["compare", "--cases", "uci", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "pip install torch_geometric==" in err and "pip install -e .[bench]" in err
    assert not out.exists()


def test_the_reference_without_pyg_raises_the_same_user_error(without_pyg, uci_events):
    with pytest.raises(UserError, match=r"pip install torch_geometric==\S+"):
        pyg_tgn.train_pyg_tgn(uci_events, chronological_split(uci_events), batch_size=200, epochs=1)


def test_compare_alternates_systems_and_reports_ratios_of_the_means(monkeypatch, tmp_path):
    monkeypatch.setattr(pyg_tgn, "require_pyg", lambda: type("pyg", (), {"__version__": "x"}))
    launched = []

    def fake_run(system, case, args):
        launched.append(system)
        speed, rss = (3000.0, 600.0) if system == "ours" else (2000.0, 500.0)
        return {"dataset": case, "num_events": 100, "train_events_per_s": speed + len(launched),
                "peak_rss_mb": rss, "train_rss_mb": rss / 10, "test_ap": 0.9, "val_ap": 0.8,
                "page_faults": 1000 * len(launched), "kernel_cpu_s": 0.5, "other_cpu_load": 0.0}

    monkeypatch.setattr(compare, "launch_compare_run", fake_run)
    out = tmp_path / "compare.json"
    assert benchmark.main(["compare", "--cases", "uci", "--repeat", "2", "--out", str(out)]) == 0
    systems = ["ours", "ours-malloc-defaults", "ours-query-batch", "pyg", "pyg+keep-freed"]
    assert launched == systems * 2
    results = json.loads(out.read_text())
    assert [row["system"] for row in results["results"]] == systems
    ours, _, _, pyg, pyg_keep_freed = results["results"]
    assert ours["events_per_s_runs"] == [3001.0, 3006.0] and pyg["events_per_s_runs"] == [2004.0, 2009.0]
    assert ours["events_per_s_vs_pyg"] == pytest.approx(3003.5 / 2006.5)
    assert pyg_keep_freed["events_per_s_vs_pyg"] == pytest.approx(2007.5 / 2006.5)
    assert ours["page_faults_runs"] == [1000, 6000] and pyg["page_faults"] == 6500
    assert ours["peak_rss_vs_pyg"] == pytest.approx(1.2) and pyg["peak_rss_vs_pyg"] == 1.0
    assert results["torch_threads"] == 2 and results["versions"]["torch_geometric"] == "x"
    assert results["command"] == " ".join(sys.argv)


def test_compare_runs_the_systems_asked_for_and_needs_pyg_among_them(monkeypatch, tmp_path):
    monkeypatch.setattr(pyg_tgn, "require_pyg", lambda: type("pyg", (), {"__version__": "x"}))
    launched = []

    def fake_run(system, case, args):
        launched.append(system)
        return {"dataset": case, "num_events": 100, "train_events_per_s": 1000.0, "peak_rss_mb": 1.0,
                "train_rss_mb": 1.0, "test_ap": 0.9, "val_ap": 0.8, "page_faults": 1, "kernel_cpu_s": 0.1,
                "other_cpu_load": 0.0}

    monkeypatch.setattr(compare, "launch_compare_run", fake_run)
    out = tmp_path / "compare.json"
    assert benchmark.main(["compare", "--cases", "uci", "--repeat", "1", "--systems", "ours-query-batch,pyg",
                           "--out", str(out)]) == 0
    assert launched == ["ours-query-batch", "pyg"]
    assert benchmark.main(["compare", "--cases", "uci", "--systems", "ours", "--out", str(out)]) == 2


def test_ours_query_batch_embeds_once_per_node_and_batch_like_pyg():
    settings = compare.COMPARE_SYSTEMS["ours-query-batch"].settings
    cfg = compare.our_config(compare.COMPARE_CASES["uci"], epochs=1, settings=settings)
    assert cfg.embedding.query_time == "batch" and cfg.pipeline.mode == "sequential"
    assert compare.our_config(compare.COMPARE_CASES["uci"], epochs=1).embedding.query_time == "event"


def test_first_events_renumbers_the_nodes_that_occur(uci_events):
    head = compare.first_events(uci_events, 500)
    assert head.num_events == 500 and head.num_nodes == len(np.unique(np.r_[head.src, head.dst]))
    np.testing.assert_array_equal(head.node_ids[head.src], uci_events.node_ids[uci_events.src[:500]])
    np.testing.assert_array_equal(head.t, uci_events.t[:500])


@pytest.mark.parametrize("name", sorted(compare.COMPARE_CASES))
def test_ours_trains_and_evaluates_on_the_split_the_pyg_reference_uses(uci_events, name):
    events = compare.first_events(uci_events, 3000)
    setup = build_setup(compare.our_config(compare.COMPARE_CASES[name], epochs=1), events, torch.device("cpu"), 0)
    reference = chronological_split(events, seed=0)
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(setup.split, part), getattr(reference, part))
    assert setup.cfg.eval.negatives == ("random",)


def test_compare_run_of_ours_prints_one_json_line(scripts_dir):
    command = [sys.executable, str(scripts_dir / "benchmark.py"), "compare-run", "--system", "ours", "--case", "uci",
               "--epochs", "1", "--max-events", "3000", "--threads", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1
    run = json.loads(lines[0])
    assert run["system"] == "ours" and run["num_events"] == 3000
    assert run["train_events_per_s"] > 0 and run["peak_rss_mb"] > 0 and len(run["epoch_time_s"]) == 1
    assert math.isfinite(run["test_ap"]) and math.isfinite(run["val_ap"])


def test_the_pyg_reference_learns_on_a_uci_slice(uci_events):
    pytest.importorskip("torch_geometric")
    events = compare.first_events(uci_events, 5000)
    # lr 1e-3 (PyG's example uses 1e-4) so that a few epochs on 2,300 training events learn something.
    results = pyg_tgn.train_pyg_tgn(events, chronological_split(events), batch_size=200, epochs=5, lr=1e-3)
    assert 0.5 < results["val_ap"] <= 1 and 0.5 < results["test_ap"] <= 1
    assert results["train_events_per_s"] > 0 and len(results["epoch_time_s"]) == 5


def test_attention_benchmark_times_two_implementations_of_the_same_function(tmp_path):
    out = tmp_path / "attention.json"
    assert benchmark.main(["attention", "--roots", "30,60", "--fanout", "4", "--repeat", "2", "--threads", "1",
                           "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [(row["roots"], row["edges"]) for row in rows] == [(30, 120), (60, 240)]
    assert all(row["dgl_ms"] > 0 and row["torch_ms"] > 0 for row in rows)


def test_torch_only_attention_matches_dgl_with_roots_that_have_no_neighbours():
    import dgl
    import torch
    dst = torch.tensor([0, 0, 2, 2, 2])  # root 1 has no neighbour
    block = dgl.create_block((torch.arange(3, 8), dst), num_src_nodes=8, num_dst_nodes=3)
    key, value, query = torch.randn(5, 2, 4), torch.randn(5, 2, 4), torch.randn(3, 2, 4)
    torch.testing.assert_close(attention_with_torch(dst, 3, key, value, query),
                               attention_with_dgl(block, key, value, query))


def test_accuracy_runs_every_variant_through_train_overrides_and_groups_rows_by_variant(monkeypatch, tmp_path):
    commands, run = [], subprocess.run

    def fake_train(command, **kwargs):
        if command[0] == "git":
            return run(command, **kwargs)
        commands.append(command)
        out = Path(command[command.index("--out") + 1])
        out.mkdir(parents=True)
        seed, k = int(command[command.index("--seed") + 1]), 16 if "pipeline.k=16" in command else 1
        (out / "results.json").write_text(json.dumps({
            "model": "tgn", "epochs": 1, "best_epoch": 0, "test_ap": 0.9 - 0.01 * k + 0.001 * seed,
            "val_ap": 0.85 + 0.001 * seed,
            "staleness": {"mean_seen": k - 1.0}, "history": [{"mitigated_roots": 0}]}))
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(accuracy.subprocess, "run", fake_train)
    out = tmp_path / "accuracy.json"
    assert benchmark.main(["accuracy", "--configs", "configs/dyglib/tgn.yml", "--data", "uci", "--seeds", "0,1",
                           "--variant", "sequential:pipeline.mode=sequential",
                           "--variant", "k16:pipeline.mode=fixed-k;pipeline.k=16",
                           "--runs-dir", str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert len(commands) == 4
    settings = [[c[i + 1] for i, part in enumerate(c) if part == "--set"] for c in commands]
    assert settings.count(["pipeline.mode=sequential"]) == 2
    assert settings.count(["pipeline.mode=fixed-k", "pipeline.k=16"]) == 2
    rows = {row["variant"]: row for row in json.loads(out.read_text())["results"]}
    assert rows["sequential"]["test_ap_mean"] == pytest.approx(0.8905)
    assert rows["k16"]["test_ap_mean"] == pytest.approx(0.7405)
    assert rows["k16"]["val_ap_mean"] == pytest.approx(0.8505) and "test_ap_std" in rows["k16"]
    assert rows["k16"]["overrides"] == ["pipeline.mode=fixed-k", "pipeline.k=16"]
    runs = json.loads(out.read_text())["runs"]
    assert sorted(run["staleness_mean_seen"] for run in runs) == [0.0, 0.0, 15.0, 15.0]


def test_a_variant_without_a_name_or_with_a_bad_setting_is_refused():
    with pytest.raises(UserError, match="--variant"):
        accuracy.parse_variant("pipeline.k=16")
    with pytest.raises(UserError, match="--variant k16"):
        accuracy.parse_variant("k16:pipeline.k")


def test_the_train_benchmark_runs_named_variants_after_the_modes():
    variants = train_variants("sequential,fixed-k", "2", ["cn:predictor.module=common_neighbours;train.lr=0.001"])
    assert list(variants) == ["sequential", "fixed-k=2", "cn"]
    assert variants["cn"] == {"predictor.module": "common_neighbours", "train.lr": 0.001}
    with pytest.raises(UserError, match="'sequential' is already a variant"):
        train_variants("sequential", "1", ["sequential:train.lr=0.1"])


def test_accuracy_summarises_a_baseline_that_does_not_train(monkeypatch, tmp_path):
    """EdgeBank's results.json has no staleness and no epoch history; its row still gets every metric."""
    run = subprocess.run

    def fake_baseline(command, **kwargs):
        if command[0] == "git":
            return run(command, **kwargs)
        out = Path(command[command.index("--out") + 1])
        out.mkdir(parents=True)
        (out / "results.json").write_text(json.dumps({
            "model": "edgebank", "epochs": 0, "best_epoch": -1, "val_ap": 0.72, "test_ap": 0.76,
            "test_new_ap": 0.5}))
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(accuracy.subprocess, "run", fake_baseline)
    out = tmp_path / "accuracy.json"
    assert benchmark.main(["accuracy", "--configs", "configs/edgebank.yml", "--data", "uci", "--seeds", "0",
                           "--runs-dir", str(tmp_path / "runs"), "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["runs"][0]["staleness_mean_seen"] is None and saved["runs"][0]["mitigated_roots"] == []
    assert saved["results"][0]["test_new_ap_mean"] == 0.5 and saved["results"][0]["val_ap_mean"] == 0.72


def test_side_by_side_starts_the_runs_of_a_setting_together_and_alternates_settings(monkeypatch, tmp_path):
    started, alive, real_popen = [], [], subprocess.Popen

    class FakeTrain:
        """A `scripts/train.py` run that writes its results.json; records which runs were alive together."""

        def __new__(cls, command, **kwargs):
            is_train = len(command) > 1 and str(command[1]).endswith("train.py")
            return super().__new__(cls) if is_train else real_popen(command, **kwargs)

        def __init__(self, command, **kwargs):
            self.command, self.returncode = command, 0
            alive.append(self)
            started.append((command, len(alive)))
            threads = command[command.index("--threads") + 1] if "--threads" in command else None
            out = Path(command[command.index("--out") + 1])
            out.mkdir(parents=True)
            result = {"train_events_per_s": 1000.0 * (int(threads) if threads else 3), "test_ap": 0.9}
            if threads is None:
                result["auto"] = {"mode": "sequential", "threads": 1, "decisions": []}
            (out / "results.json").write_text(json.dumps(result))

        def communicate(self, timeout=None):
            alive.clear()
            return "", ""

    monkeypatch.setattr(side_by_side.subprocess, "Popen", FakeTrain)
    out = tmp_path / "side.json"
    assert benchmark.main(["side-by-side", "--settings", "sequential@2,auto,sequential@1", "--repeat", "2",
                           "--out", str(out)]) == 0
    order = [("auto" if "--threads" not in c else c[c.index("--threads") + 1]) for c, _ in started]
    assert order == ["2", "2", "auto", "auto", "1", "1"] * 2  # two at once, settings alternating
    assert [together for _, together in started] == [1, 2] * 6  # the second starts before the first is waited on
    assert {c[c.index("--seed") + 1] for c, _ in started} == {"0", "1"}
    rows = {row["setting"]: row for row in json.loads(out.read_text())["results"]}
    assert rows["auto"]["vs_first_fixed"] == pytest.approx(1.5) and rows["auto"]["vs_best_fixed"] == pytest.approx(1.5)
    assert rows["sequential@1"]["vs_best_fixed"] == pytest.approx(0.5) and rows["auto"]["auto_chose"] == "sequential@1"


def test_side_by_side_refuses_a_setting_that_is_neither_auto_nor_mode_at_threads():
    for bad in ("sequential", "sequential@0", "turbo@2", "auto@2"):
        with pytest.raises(UserError, match="--settings"):
            side_by_side.setting_arguments(bad)


def test_breakdown_counts_the_train_steps_dispatched_ops_syncs_and_matrix_product_flops():
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as profile:
        with record_function("train/forward"):
            product = torch.ones(4, 3) @ torch.ones(3, 5)  # 2 * 4 * 3 * 5 FLOPs
            torch.nonzero(product)
            product.sum().item()
        torch.ones(8, 8) @ torch.ones(8, 8)  # outside the train step: not counted
    counts = breakdown.train_step_counts(profile.events(), batches=1)
    assert counts["matmul_gflop"] == pytest.approx(120 / 1e9)
    assert counts["host_syncs"] == 2  # nonzero and item
    # ones, ones, matmul, nonzero, sum, item, not the 10 or more they call inside (the profiler's microsecond
    # clock may hang an op of under a microsecond on the wrong parent)
    assert 6 <= counts["aten_ops"] <= 9
    assert breakdown.matmul_flops([[7], [6, 4], [4, 7], [], []]) == 2 * 6 * 4 * 7  # addmm: bias first
    assert breakdown.matmul_flops([[3, 6, 4], [3, 4, 7]]) == 2 * 3 * 6 * 4 * 7  # bmm


def test_breakdown_scaling_alternates_sizes_and_fits_the_fixed_and_per_event_parts(monkeypatch):
    order = []
    monkeypatch.setattr(breakdown, "case_stages", lambda case, events, args, size: type(
        "stages", (), {"batches": [0] * 500, "size": size})())

    def train_ms(stages, warmup, batches):
        order.append(stages.size)
        return 8.0 + 0.075 * stages.size + (0.5 if len(order) == 1 else 0.0)  # one slow first round

    monkeypatch.setattr(breakdown, "train_ms_median", train_ms)
    args = argparse.Namespace(scaling_rounds=3, warmup=2)
    result = breakdown.train_time_scaling(breakdown.COMPARE_CASES["uci"], None, [50, 100, 200], args)
    assert order == [50, 100, 200] * 3
    assert result["fixed_train_ms"] == pytest.approx(8.0) and result["train_us_per_event"] == pytest.approx(75.0)
    assert result["scaling"]["train_ms_rounds"][0] == [pytest.approx(12.25), 11.75, 11.75]


@pytest.mark.parametrize("text", ["1", "1,1.001", "0.001,1", "a,b", "nan,1"])
def test_breakdown_scaling_needs_two_distinct_batch_sizes_of_at_least_one_event(text):
    with pytest.raises(UserError, match="--scaling"):
        breakdown.scaling_sizes(text, 200)
    assert breakdown.scaling_sizes("", 200) == [] and breakdown.scaling_sizes("2, 0.125", 200) == [25, 400]


def test_breakdown_refuses_a_bad_scaling_in_one_line_before_timing_anything(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(breakdown, "breakdown_case", lambda name, args: pytest.fail("timed a case"))
    out = tmp_path / "breakdown.json"
    assert benchmark.main(["breakdown", "--cases", "uci", "--scaling", "1,1", "--out", str(out)]) == 2
    assert "--scaling" in capsys.readouterr().err and not out.exists()
