"""Hostile files and options, round 3 (issue 40): what the project writes and the options that say where.

- Every file the project writes goes through `common.files` (a new temporary file created with O_EXCL |
  O_NOFOLLOW under a random name, fsync, rename): a symbolic link planted in a run directory or beside an
  output under any name is never written through, and a target that is itself a link is refused in one line.
- `scripts/benchmark.py` refuses an existing --out file unless --overwrite, before any work; it checks its
  options (counts, seeds) and every variant's overrides before anything runs.
- A plugin file that is not Python, a config that is a directory or a device, a split ratio that is not a
  ratio: each is one line naming the file or option, exit 2.
"""
from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from common import files as files_module
from common.errors import ConfigError, OutputError, PluginError, shorten
from common.files import check_writable, replacing, write_atomic
from pipeline.engine.profiler import STAGES
from pipeline.run.checkpoint import CHECKPOINT_NAME
from pipeline.run.config import load_config
from pipeline.run.plugins import load_plugins
from pipeline.run.reporting import PIPELINE_LOG, RESULTS, RUN_FILES, TIMELINE
from conftest import script_cli
from small import small_sections

VICTIM_TEXT = "precious: must never be overwritten\n"


@pytest.fixture
def victim(tmp_path) -> Path:
    """A file outside every output folder, which planted links point at."""
    path = tmp_path / "victim.txt"
    path.write_text(VICTIM_TEXT)
    return path


def plant_link(at: Path, target: Path) -> Path:
    at.symlink_to(target)
    return at


def one_line(code: int, stderr: str, *fragments: str) -> None:
    assert code == 2, stderr
    assert stderr.startswith("error: ") and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    for fragment in fragments:
        assert fragment in stderr, stderr


# --- common.files ------------------------------------------------------------------------------------------

def test_write_atomic_writes_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "out.json"
    write_atomic(target, "{}\n")
    write_atomic(target, b"[]\n")
    assert target.read_text() == "[]\n" and os.listdir(tmp_path) == ["out.json"]


def test_a_target_that_is_a_link_is_refused_and_its_file_untouched(tmp_path, victim):
    link = plant_link(tmp_path / "results.json", victim)
    with pytest.raises(OutputError) as refused:
        write_atomic(link, "{}")
    assert str(refused.value).startswith(f"{link}: is a symbolic link")
    assert victim.read_text() == VICTIM_TEXT and link.is_symlink()
    dangling = plant_link(tmp_path / "dangling.png", tmp_path / "nowhere" / "x.png")
    with pytest.raises(OutputError, match="is a symbolic link"):
        write_atomic(dangling, b"x")
    assert not (tmp_path / "nowhere").exists()


def test_a_target_that_is_a_folder_or_in_a_missing_folder_is_one_line(tmp_path):
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(OutputError, match="folder.json: is a directory"):
        write_atomic(tmp_path / "folder.json", "{}")
    with pytest.raises(OutputError) as refused:
        write_atomic(tmp_path / "missing" / "dir" / "x.json", "{}")
    assert str(refused.value) == f"{tmp_path / 'missing' / 'dir'}: no such directory"
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="is not a directory"):
        write_atomic(tmp_path / "file" / "x.json", "{}")


def test_a_taken_temporary_name_is_never_opened(tmp_path, victim, monkeypatch):
    """Even a link planted at the very name the temporary file draws is skipped, not followed."""
    names = iter(["planted", "fresh"])
    monkeypatch.setattr(files_module.secrets, "token_hex", lambda size: next(names))
    plant_link(tmp_path / ".out.bin.planted.tmp", victim)
    write_atomic(tmp_path / "out.bin", b"new")
    assert (tmp_path / "out.bin").read_bytes() == b"new" and victim.read_text() == VICTIM_TEXT
    assert sorted(os.listdir(tmp_path)) == [".out.bin.planted.tmp", "out.bin", "victim.txt"]


def test_a_failed_write_keeps_the_old_file_and_no_temporary_one(tmp_path):
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), replacing(target) as handle:
        handle.write(b"half")
        raise RuntimeError("disk trouble")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["checkpoint.pt"]


def test_an_unwritable_folder_names_the_target_not_the_temporary_file(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    folder = tmp_path / "locked"
    folder.mkdir(mode=0o500)
    with pytest.raises(PermissionError) as failed:
        write_atomic(folder / "x.json", "{}")
    assert failed.value.filename == str(folder / "x.json")
    with pytest.raises(PermissionError):
        check_writable(folder)


def test_shorten_cuts_at_either_end_and_keeps_one_line():
    assert shorten("a  b\nc\td") == "a  b c d"
    assert shorten("x" * 1000) == "x" * 77 + "..."
    assert shorten("/very/long/" + "p" * 300 + "/plugin.py", 40, keep_end=True).endswith("/plugin.py")
    assert len(shorten("y" * 10**7, 40, keep_end=True)) == 40


# --- training and plotting never write through a planted link ---------------------------------------------

@pytest.fixture(scope="module")
def config_file(workdir) -> Path:
    path = workdir / "small.yml"
    path.write_text(yaml.safe_dump(small_sections(train={"epochs": 1}, pipeline={"mode": "sequential"})))
    return path


def train_args(config_file: Path, data_file: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", str(config_file), "--data", str(data_file), "--out", str(out), "--threads", "1",
            "--no-progress", *extra]


@pytest.fixture(scope="module")
def finished_run(workdir, config_file, data_file, scripts_dir) -> Path:
    """A finished one-epoch run directory (tests copy it)."""
    import subprocess
    out = workdir / "finished"
    done = subprocess.run([sys.executable, str(scripts_dir / "train.py"), *train_args(config_file, data_file, out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out


# the names the run's files used to be written through, and the probe's
PLANTED = ("checkpoint.pt.tmp", "results.json.tmp", ".timeline.png.tmp", "pipeline_events.csv.tmp", ".write-test")


def test_training_writes_no_file_through_a_planted_link(config_file, data_file, train_cli, tmp_path, victim):
    out = tmp_path / "run"
    out.mkdir()
    for name in PLANTED:
        plant_link(out / name, victim)
    code, _, stderr = train_cli(*train_args(config_file, data_file, out))
    assert code == 0, stderr
    assert victim.read_text() == VICTIM_TEXT
    for name in RUN_FILES:
        assert (out / name).is_file() and not (out / name).is_symlink(), name
    assert all((out / name).is_symlink() for name in PLANTED)


@pytest.mark.parametrize("name", [PIPELINE_LOG, TIMELINE, RESULTS])
def test_resume_refuses_a_run_file_that_is_a_link(config_file, data_file, train_cli, finished_run, tmp_path,
                                                   victim, name):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / name).unlink()
    plant_link(run / name, victim)
    before = (run / CHECKPOINT_NAME).read_bytes()
    code, stdout, stderr = train_cli(*train_args(config_file, data_file, run, "--epochs", "2", "--resume"))
    one_line(code, stderr, f"{run / name}: is a symbolic link")
    assert "epoch" not in stdout and victim.read_text() == VICTIM_TEXT
    assert (run / CHECKPOINT_NAME).read_bytes() == before


def test_a_run_directory_that_is_a_link_is_refused(config_file, data_file, train_cli, tmp_path):
    real = tmp_path / "elsewhere"
    real.mkdir()
    link = plant_link(tmp_path / "run", real)
    code, _, stderr = train_cli(*train_args(config_file, data_file, link))
    one_line(code, stderr, f"{link}: is a symbolic link")
    assert os.listdir(real) == []


@pytest.fixture
def plot_cli(scripts_dir, monkeypatch, capsys) -> Callable[..., tuple[int, str]]:
    run = script_cli(scripts_dir, monkeypatch, capsys, "plot_timeline")
    return lambda *args: run(*args)[::2]  # (exit code, stderr)


@pytest.fixture
def log_dir(tmp_path) -> Path:
    run = tmp_path / "logged"
    run.mkdir()
    rows = "".join(f"{b},{stage},{b + j / 10:.6f},{b + j / 10 + 0.05:.6f},1,0\n"
                   for b in range(2) for j, stage in enumerate(STAGES))
    (run / PIPELINE_LOG).write_text("batch,stage,start_s,end_s,k,staleness\n" + rows)
    return run


def test_plot_timeline_never_writes_through_a_link(plot_cli, log_dir, victim):
    plant_link(log_dir / ".timeline.png.tmp", victim)
    code, stderr = plot_cli(str(log_dir))
    assert code == 0, stderr
    assert (log_dir / TIMELINE).read_bytes()[:4] == b"\x89PNG" and victim.read_text() == VICTIM_TEXT
    (log_dir / TIMELINE).unlink()
    plant_link(log_dir / TIMELINE, victim)
    code, stderr = plot_cli(str(log_dir))
    one_line(code, stderr, f"{log_dir / TIMELINE}: is a symbolic link")
    assert victim.read_text() == VICTIM_TEXT


def test_plot_timeline_into_a_missing_folder_names_the_folder(plot_cli, log_dir, tmp_path):
    code, stderr = plot_cli(str(log_dir), "--out", str(tmp_path / "missing" / "dir" / "x.png"))
    assert code == 2, stderr
    assert stderr == f"error: {tmp_path / 'missing' / 'dir'}: no such directory\n"


# --- scripts/benchmark.py ---------------------------------------------------------------------------------

@pytest.fixture
def benchmark(scripts_dir, monkeypatch, capsys) -> Callable[..., tuple[int, str]]:
    """scripts/benchmark.py's main in this process: (exit code, stderr); argparse's exits count too."""
    monkeypatch.syspath_prepend(str(scripts_dir))
    module = importlib.import_module("benchmark")

    def run(*args: str) -> tuple[int, str]:
        capsys.readouterr()
        try:
            code = module.main(list(args))
        except SystemExit as stop:
            code = stop.code
        return code, capsys.readouterr().err

    return run


FAKE_RESULTS = {"benchmark": "sampler", "dataset": "fake", "results": [{"case": "x"}]}


@pytest.fixture
def no_work(monkeypatch) -> list[str]:
    """The sampler benchmark replaced by one that records that it ran and returns `FAKE_RESULTS`."""
    import benchmarks.sampler
    ran: list[str] = []

    def fake_run(args):
        ran.append("sampler")
        return FAKE_RESULTS

    monkeypatch.setattr(benchmarks.sampler, "run", fake_run)
    return ran


def test_benchmark_refuses_an_existing_out_file_before_any_work(benchmark, no_work, tmp_path):
    out = tmp_path / "existing.json"
    out.write_text('{"earlier": true}\n')
    code, stderr = benchmark("sampler", "--out", str(out))
    one_line(code, stderr, f"{out}: already exists", "--overwrite")
    assert no_work == [] and json.loads(out.read_text()) == {"earlier": True}
    code, stderr = benchmark("sampler", "--out", str(out), "--overwrite")
    assert code == 0, stderr
    assert no_work == ["sampler"] and json.loads(out.read_text()) == FAKE_RESULTS


def test_benchmark_out_through_a_link_is_refused_before_any_work(benchmark, no_work, tmp_path, victim):
    link = plant_link(tmp_path / "out.json", victim)
    code, stderr = benchmark("sampler", "--out", str(link), "--overwrite")
    one_line(code, stderr, f"{link}: is a symbolic link")
    assert no_work == [] and victim.read_text() == VICTIM_TEXT


def test_benchmark_out_under_a_file_is_refused_before_any_work(benchmark, no_work, tmp_path):
    (tmp_path / "file").write_text("")
    code, stderr = benchmark("sampler", "--out", str(tmp_path / "file" / "sub" / "out.json"))
    one_line(code, stderr, f"{tmp_path / 'file'}: is not a directory")
    assert no_work == []
    code, stderr = benchmark("sampler", "--out", str(tmp_path / "new" / "folder" / "out.json"))
    assert code == 0, stderr
    assert json.loads((tmp_path / "new" / "folder" / "out.json").read_text()) == FAKE_RESULTS


@pytest.mark.parametrize("option, value, fragment", [
    ("--jobs", "0", "argument --jobs: must be a positive integer, got '0'"),
    ("--jobs", "two", "argument --jobs: expected an integer, got 'two'"),
    ("--seeds", "abc", "argument --seeds: expected an integer, got 'abc'"),
    ("--seeds", "1,-2", "argument --seeds: seeds must be integers from 0"),
    ("--epochs", "0", "argument --epochs: must be a positive integer"),
])
def test_benchmark_accuracy_options_are_checked_by_argparse(benchmark, tmp_path, option, value, fragment):
    code, stderr = benchmark("accuracy", "--out", str(tmp_path / "a.json"), option, value)
    assert code == 2 and "Traceback" not in stderr, stderr
    assert fragment in stderr.rstrip().splitlines()[-1], stderr
    assert not (tmp_path / "a.json").exists()


def test_benchmark_train_checks_every_variant_before_training(benchmark, monkeypatch, data_file, tmp_path):
    import benchmarks.train
    monkeypatch.setattr(benchmarks.train, "train", lambda *args, **kwargs: pytest.fail("a variant trained"))
    code, stderr = benchmark("train", "--data", str(data_file), "--modes", "sequential", "--repeat", "1",
                             "--epochs", "1", "--variant", "x:nosuch.key=1", "--out", str(tmp_path / "t.json"))
    one_line(code, stderr, "variant 'x': key 'nosuch.key' does not exist")
    assert not (tmp_path / "t.json").exists()


def test_benchmark_accuracy_checks_every_variant_before_any_run(benchmark, monkeypatch, config_file, tmp_path):
    import benchmarks.accuracy
    monkeypatch.setattr(benchmarks.accuracy, "accuracy_run", lambda *args: pytest.fail("a run started"))
    code, stderr = benchmark("accuracy", "--configs", str(config_file), "--data", "uci", "--seeds", "0",
                             "--variant", "good:train.lr=0.001", "--variant", "bad:train.lr=-1",
                             "--out", str(tmp_path / "a.json"))
    one_line(code, stderr, "variant 'bad': key 'train.lr'")


# --- plugins, configs, split ratios -----------------------------------------------------------------------

@pytest.mark.parametrize("source, fragment", [
    ("def f(:\n    pass\n", ", line 1: not valid Python (invalid syntax)"),
    ("x = 1\n\x00\x01 binary", ": not valid Python ("),
    ("# ok\nname = '\xff'\n", ", line 2: not valid Python ("),
])
def test_a_plugin_file_that_is_not_python_is_one_line(tmp_path, source, fragment):
    path = tmp_path / "plugin_not_python.py"
    path.write_bytes(source.encode("latin-1"))
    with pytest.raises(PluginError) as refused:
        load_plugins([str(path)], tmp_path, "--plugins", key=None)
    message = str(refused.value)
    assert message.startswith(f"--plugins names {path}") and fragment in message and "\n" not in message


def test_evaluate_with_a_plugin_that_is_not_python_is_exit_2(evaluate_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.py").write_text("def f(:\n")
    code, _, stderr = evaluate_cli("--run", str(tmp_path), "--plugins", "broken.py")
    one_line(code, stderr, f"{tmp_path / 'broken.py'}, line 1: not valid Python")


def test_a_config_that_is_a_folder_or_a_device_says_so(tmp_path):
    with pytest.raises(ConfigError) as refused:
        load_config(tmp_path)
    assert str(refused.value).startswith(f"{tmp_path}: is a directory, not a regular file")
    with pytest.raises(ConfigError, match="/dev/zero: is a character device"):
        load_config("/dev/zero")  # refused without reading: /dev/zero never ends
    fifo = tmp_path / "config.yml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="is a FIFO"):
        load_config(fifo)  # without a writer, opening it would block
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yml")


@pytest.fixture
def prepare_cli(scripts_dir, monkeypatch, capsys) -> Callable[..., tuple[int, str]]:
    run = script_cli(scripts_dir, monkeypatch, capsys, "prepare_data")
    return lambda *args: run(*args)[::2]  # (exit code, stderr)


@pytest.mark.parametrize("values, fragment", [
    (["--val-ratio", "nan"], "argument --val-ratio: must be a number from 0 to below 1, got 'nan'"),
    (["--test-ratio", "-0.1"], "argument --test-ratio: must be a number from 0 to below 1, got '-0.1'"),
    (["--val-ratio", "1"], "argument --val-ratio: must be a number from 0 to below 1, got '1'"),
    (["--val-ratio", "0.6", "--test-ratio", "0.5"], "error: --val-ratio 0.6 and --test-ratio 0.5: together"),
])
def test_split_ratios_are_checked_before_the_data_is_read(prepare_cli, tmp_path, values, fragment):
    code, stderr = prepare_cli("--data", str(tmp_path / "not-read.csv"), "--layout", "tgl",
                               "--out", str(tmp_path / "tgl"), *values)
    assert code == 2 and "Traceback" not in stderr and "not-read.csv" not in stderr, stderr
    assert fragment in stderr.rstrip().splitlines()[-1], stderr
    assert not (tmp_path / "tgl").exists()


def test_the_tgl_layout_writes_no_file_through_a_link(prepare_cli, data_file, tmp_path, victim):
    out = tmp_path / "tgl"
    out.mkdir()
    plant_link(out / "edge_features.pt", victim)
    code, stderr = prepare_cli("--data", str(data_file), "--layout", "tgl", "--out", str(out), "--overwrite")
    one_line(code, stderr, f"{out / 'edge_features.pt'}: is a symbolic link")
    assert victim.read_text() == VICTIM_TEXT and not (out / "edges.csv").exists()
