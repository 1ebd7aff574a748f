"""Faults a long training run meets: kill -9 and resumption, a stage that raises in every mode, SIGINT
and SIGTERM, an unwritable run directory, a full disk, bad checkpoints and an existing run directory.
None may hang, die silently, leave a torn checkpoint or train on the wrong file.

Runs that must be killed or signalled are real `scripts/train.py` processes; the rest run the same
command line in this process (`run_cli(main)`), which is much faster than starting a process each.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.engine.runner import STAGES
from pipeline.stages.link_prediction import LinkPredictionStages
from pipeline.run.checkpoint import CHECKPOINT_NAME, config_fingerprint, dataset_fingerprint, load_checkpoint
from pipeline.run.config import apply_overrides, load_config
from pipeline.run.trainer import train
from small import small_sections, write_events_csv

pytestmark = pytest.mark.faults

FAULTS_CONFIG = small_sections(train={"epochs": 3}, pipeline={"k_max": 4})
K_MAX = FAULTS_CONFIG["pipeline"]["k_max"]
MODES = ["sequential", "presample", "fixed-k", "mspipe"]
FAULT_BATCH = 3  # past mspipe's warm-up, so the fault hits the threaded pipeline
BOUND_S = 60  # no fault case may take longer than this, even on a loaded 2-core machine
RESULTS = "results.json"


# --- shared data, config and a finished one-epoch run --------------------------------------------------

@pytest.fixture(scope="module")
def config_file(workdir) -> Path:
    path = workdir / "small.yml"
    path.write_text(yaml.safe_dump(FAULTS_CONFIG))
    return path


def config(config_file: Path, mode: str, epochs: int) -> dict:
    return apply_overrides(load_config(config_file), {"pipeline.mode": mode, "train.epochs": epochs})


@pytest.fixture(scope="module")
def one_epoch_run(workdir, config_file, data_events) -> Path:
    """A finished one-epoch run directory; tests copy it rather than train their own first epoch."""
    torch.set_num_threads(1)
    out = workdir / "one-epoch"
    out.mkdir()
    train(config(config_file, "sequential", 1), data_events, out, torch.device("cpu"), seed=0, show_progress=False)
    return out


def copy_run(run: Path, out: Path) -> Path:
    shutil.copytree(run, out)
    return out


def cli_args(config_file: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", str(config_file), "--data", str(data), "--out", str(out), "--threads", "1",
            "--no-progress", *extra]


def assert_one_error_line(stderr: str, *fragments: str) -> None:
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in stderr


def no_temporary_files(out: Path) -> bool:
    return not list(out.glob("*.tmp"))


# --- the command line, in this process and as a subprocess ----------------------------------------------

@pytest.fixture
def start_training(scripts_dir) -> Iterator[Callable[[list[str]], subprocess.Popen]]:
    """Start scripts/train.py as a process; any still running when the test ends (it failed) is killed."""
    started: list[subprocess.Popen] = []

    def start(args: list[str]) -> subprocess.Popen:
        started.append(subprocess.Popen([sys.executable, str(scripts_dir / "train.py"), *args],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        return started[-1]

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate()


def wait_for_file(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    """Poll until `path` exists; fail if the process ends first or the time runs out."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"training ended before {path.name} appeared: {process.communicate()}"
        assert time.monotonic() < deadline, f"{path.name} did not appear within {timeout} s"
        time.sleep(0.01)


# --- kill -9 and --resume ------------------------------------------------------------------------------

def model_tensors(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / CHECKPOINT_NAME, weights_only=False)["model"]


@pytest.mark.parametrize("mode", ["sequential", "mspipe"])
def test_kill_9_mid_epoch_then_resume_finishes_like_an_uninterrupted_run(
        start_training, config_file, data_file, train_cli, tmp_path, mode):
    out = tmp_path / "run"
    args = cli_args(config_file, data_file, out, "--mode", mode, "--epochs", "3")
    process = start_training(args)
    wait_for_file(out / CHECKPOINT_NAME, process)
    process.kill()
    process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert not (out / RESULTS).exists(), "the kill must land before the run finished"
    killed_at = torch.load(out / CHECKPOINT_NAME, weights_only=False)["training"]["next_epoch"]
    assert 1 <= killed_at < 3

    code, stdout, _ = train_cli(*args, "--resume")
    assert code == 0
    assert f"epoch {killed_at}:" in stdout, "the resumed run trains the epoch the kill interrupted"
    resumed = json.loads((out / RESULTS).read_text())
    assert resumed["epochs"] == 3 and [h["epoch"] for h in resumed["history"]] == [0, 1, 2]
    if mode == "sequential":
        assert train_cli(*cli_args(config_file, data_file, tmp_path / "ref", "--mode", mode, "--epochs", "3"))[0] == 0
        reference = json.loads((tmp_path / "ref" / RESULTS).read_text())
        assert resumed["test_ap"] == reference["test_ap"]
        assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in reference["history"]]
        final, expected = model_tensors(out), model_tensors(tmp_path / "ref")
        assert final.keys() == expected.keys()
        assert all(torch.equal(final[name], expected[name]) for name in expected)
    else:
        assert resumed["staleness"]["max_seen"] <= K_MAX - 1
        assert all(h["staleness_max"] <= K_MAX - 1 for h in resumed["history"])


# --- an exception inside a stage -------------------------------------------------------------------------

class InjectedFault(RuntimeError):
    """The error a broken stage raises in these tests."""


def inject_fault(monkeypatch, stage: str, batch: int = FAULT_BATCH) -> None:
    """Make `LinkPredictionStages.<stage>` raise `InjectedFault` on `batch` (of any split)."""
    original = getattr(LinkPredictionStages, stage)

    def broken(self, i, *args):
        if i == batch:
            raise InjectedFault(f"injected into {stage}")
        return original(self, i, *args)

    monkeypatch.setattr(LinkPredictionStages, stage, broken)


def call_bounded(function: Callable[[], object], timeout: float = BOUND_S) -> BaseException | None:
    """Run `function` in a watchdog thread; return what it raised. Fails the test if it hangs."""
    raised: list[BaseException] = []

    def target() -> None:
        try:
            function()
        except BaseException as err:  # noqa: BLE001 - handed back to the test
            raised.append(err)

    watchdog = threading.Thread(target=target, daemon=True)
    watchdog.start()
    watchdog.join(timeout)
    assert not watchdog.is_alive(), f"the run hung for more than {timeout} s"
    return raised[0] if raised else None


def pipeline_threads() -> list[str]:
    return [thread.name for thread in threading.enumerate() if thread.name.startswith("pipeline-")]


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("mode", MODES)
def test_stage_fault_stops_the_run_with_stage_and_batch_and_keeps_the_checkpoint(
        one_epoch_run, config_file, data_events, tmp_path, monkeypatch, mode, stage):
    out = copy_run(one_epoch_run, tmp_path / "run")
    before = (out / CHECKPOINT_NAME).read_bytes()
    inject_fault(monkeypatch, stage)
    error = call_bounded(lambda: train(config(config_file, mode, 2), data_events, out, torch.device("cpu"), seed=0,
                                       resume=True, show_progress=False))
    assert isinstance(error, InjectedFault)
    assert (error.pipeline_stage, error.pipeline_batch) == (stage, FAULT_BATCH)
    assert pipeline_threads() == [], "every stage thread is joined before the error surfaces"
    assert no_temporary_files(out)
    assert (out / CHECKPOINT_NAME).read_bytes() == before
    load_checkpoint(out / CHECKPOINT_NAME, config_fingerprint(config(config_file, mode, 2)),
                    dataset_fingerprint(data_events))


def test_stage_fault_on_the_command_line_is_one_line_and_exit_1(scripts_dir, config_file, data_file, tmp_path):
    inject_and_train = (
        "import runpy, sys\n"
        "from pipeline.stages.link_prediction import LinkPredictionStages\n"
        "def broken(self, i, ctx, staleness): raise RuntimeError('injected into fetch_memory')\n"
        "LinkPredictionStages.fetch_memory = broken\n"
        "sys.path.insert(0, sys.argv[1]); sys.argv = sys.argv[2:]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    out = tmp_path / "run"
    command = [sys.executable, "-c", inject_and_train, str(scripts_dir), str(scripts_dir / "train.py"),
               *cli_args(config_file, data_file, out, "--mode", "mspipe")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=BOUND_S * 2)
    assert result.returncode == 1
    assert_one_error_line(result.stderr, "error: stage fetch_memory failed at batch 0: "
                                         "RuntimeError: injected into fetch_memory", "MSPIPE_DEBUG=1")
    assert not (out / CHECKPOINT_NAME).exists() and no_temporary_files(out)


def test_mspipe_debug_shows_the_traceback(config_file, data_file, train_cli, tmp_path, monkeypatch):
    inject_fault(monkeypatch, "update_memory")
    monkeypatch.setenv("MSPIPE_DEBUG", "1")
    code, _, stderr = train_cli(*cli_args(config_file, data_file, tmp_path / "run", "--mode", "fixed-k"))
    assert code == 1
    assert "Traceback" in stderr and "InjectedFault" in stderr
    assert stderr.splitlines()[-1] == ("error: stage update_memory failed at batch 3: "
                                       "InjectedFault: injected into update_memory")


# --- SIGINT and SIGTERM ----------------------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_the_run_quickly_and_keeps_the_last_checkpoint(
        start_training, config_file, data_file, data_events, tmp_path, signum):
    out = tmp_path / "run"
    process = start_training(cli_args(config_file, data_file, out, "--mode", "mspipe", "--epochs", "3"))
    wait_for_file(out / CHECKPOINT_NAME, process)
    process.send_signal(signum)
    signalled = time.monotonic()
    _, stderr = process.communicate(timeout=30)
    assert time.monotonic() - signalled < 10, "stopping must take seconds, not the rest of the epoch"
    assert process.returncode == 130
    assert stderr.splitlines()[-1] == "interrupted" and "Traceback" not in stderr
    assert not (out / RESULTS).exists() and no_temporary_files(out)
    state = load_checkpoint(out / CHECKPOINT_NAME, config_fingerprint(config(config_file, "mspipe", 3)),
                            dataset_fingerprint(data_events))
    assert 1 <= state["training"]["next_epoch"] < 3


# --- the run directory: unwritable, full disk, existing run ----------------------------------------------

def unwritable_dir(tmp_path: Path) -> Path:
    """A run directory that cannot be created: under a read-only folder, or (as root, whom permissions
    do not stop) under a regular file."""
    if os.geteuid() == 0:
        blocker = tmp_path / "a-file"
        blocker.write_text("not a folder")
        return blocker / "run"
    parent = tmp_path / "read-only"
    parent.mkdir(mode=0o500)
    return parent / "run"


def test_unwritable_run_directory_fails_before_training(config_file, data_file, train_cli, tmp_path):
    out = unwritable_dir(tmp_path)
    code, stdout, stderr = train_cli(*cli_args(config_file, data_file, out))
    assert code == 2
    assert_one_error_line(stderr, str(out), "cannot write to the run directory")
    assert "epoch" not in stdout


def no_space_left(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("failing_call", ["torch.save", "os.replace"])
def test_full_disk_at_checkpoint_reports_it_and_keeps_the_previous_checkpoint(
        one_epoch_run, config_file, data_file, train_cli, tmp_path, monkeypatch, failing_call):
    out = copy_run(one_epoch_run, tmp_path / "run")
    before = (out / CHECKPOINT_NAME).read_bytes()
    if failing_call == "torch.save":
        monkeypatch.setattr(torch, "save", no_space_left)
    else:  # the rename of the checkpoint only (the run's other files are renamed into place too)
        real_replace = os.replace

        def replace(source, target):
            return no_space_left() if Path(target).name == CHECKPOINT_NAME else real_replace(source, target)

        monkeypatch.setattr(os, "replace", replace)
    code, _, stderr = train_cli(*cli_args(config_file, data_file, out, "--epochs", "2", "--resume"))
    assert code == 2
    assert_one_error_line(stderr, str(out / CHECKPOINT_NAME), "cannot write checkpoint", "No space left on device")
    assert (out / CHECKPOINT_NAME).read_bytes() == before
    assert no_temporary_files(out)


def test_full_disk_at_results_reports_it_and_resume_writes_them(
        one_epoch_run, config_file, data_file, train_cli, tmp_path, monkeypatch):
    out = copy_run(one_epoch_run, tmp_path / "run")
    (out / RESULTS).unlink()
    replace = os.replace

    def results_disk_full(src, dst):
        if Path(dst).name == RESULTS:
            no_space_left()
        replace(src, dst)

    monkeypatch.setattr(os, "replace", results_disk_full)
    args = cli_args(config_file, data_file, out, "--epochs", "1", "--resume")
    code, _, stderr = train_cli(*args)
    assert code == 1
    assert_one_error_line(stderr, "OSError", "No space left on device")
    assert not (out / RESULTS).exists() and no_temporary_files(out)
    monkeypatch.setattr(os, "replace", replace)
    assert train_cli(*args)[0] == 0
    assert json.loads((out / RESULTS).read_text())["epochs"] == 1


def run_files(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in out.iterdir()}


def test_existing_run_is_never_overwritten_without_overwrite(one_epoch_run, config_file, data_file, train_cli,
                                                             tmp_path):
    out = copy_run(one_epoch_run, tmp_path / "run")
    before = run_files(out)
    assert any(name.startswith("events.out.tfevents") for name in before)
    code, _, stderr = train_cli(*cli_args(config_file, data_file, out, "--epochs", "2"))
    assert code == 2
    assert_one_error_line(stderr, str(out), "already holds a run", "--overwrite")
    assert run_files(out) == before

    assert train_cli(*cli_args(config_file, data_file, out, "--epochs", "2", "--overwrite"))[0] == 0
    assert json.loads((out / RESULTS).read_text())["epochs"] == 2
    assert len(list(out.glob("events.out.tfevents*"))) == 1, "the old TensorBoard log is replaced"


# --- --resume with a checkpoint that does not belong to this run -----------------------------------------

def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("case, expected", [
    ("truncated", "corrupt or truncated"),
    ("other config", "different config"),
    ("other dataset", "different dataset"),
])
def test_resume_refuses_a_checkpoint_of_another_run(one_epoch_run, config_file, data_file, train_cli, tmp_path,
                                                     case, expected):
    out = copy_run(one_epoch_run, tmp_path / "run")
    config_used, data_used = config_file, data_file
    if case == "truncated":
        truncate(out / CHECKPOINT_NAME)
    elif case == "other config":
        config_used = tmp_path / "wider.yml"
        config_used.write_text(yaml.safe_dump({**FAULTS_CONFIG, "memory": {"dim": 32, "dim_time": 8}}))
    else:
        data_used = write_events_csv(tmp_path / "other.csv", seed=4)
    before = run_files(out)
    code, stdout, stderr = train_cli(*cli_args(config_used, data_used, out, "--epochs", "2", "--resume"))
    assert code == 2
    assert_one_error_line(stderr, str(out / CHECKPOINT_NAME), expected)
    assert "epoch" not in stdout
    assert run_files(out) == before
