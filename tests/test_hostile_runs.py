"""Run directories, checkpoints and feature files from elsewhere are data (issue 29).

- Nothing in a run directory selects code to import: the plugins a checkpoint's config records are
  compared with those the user names (`evaluate.py --plugins`, the `--config` of `--resume`), never
  imported, and a run whose plugins are not named is refused in one line that says which.
- A checkpoint or feature file of random bytes, or a checkpoint that loads but lacks an entry or holds a
  tensor of the wrong shape, ends in one `error:` line and exit 2, never a traceback.
- A full disk at the first checkpoint is exit 2, one line, and leaves no temporary file.
"""
from __future__ import annotations

import errno
import io
import json
import os
import random
import shutil
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from common.errors import CheckpointError, DataError
from graph.loaders import load_events
from common import files as files_module
from pipeline.run.checkpoint import (
    CHECKPOINT_NAME, TRAINING_FIELDS, check_contents, dataset_fingerprint, load_checkpoint, load_optimizer_state,
    save_checkpoint,
)
from pipeline.run.config import load_config, validate_config
from pipeline.run.plugins import missing_plugins
from pipeline.run.setup import build_setup
from pipeline.run.trainer import TrainingState, train
from test_faults import FAULTS_CONFIG, assert_one_error_line, cli_args, no_temporary_files

pytestmark = pytest.mark.faults

MAX_MESSAGE = 400  # an error line about a hostile file stays short, whatever the file holds
PLUGIN_SOURCE = '''"""Test plugin: the GRU memory updater under the name "hostile-gru"; each import appends to a marker."""
from pathlib import Path

from models.memory_updaters import UPDATERS

with open(Path(__file__).with_suffix(".imported"), "a") as marker:
    marker.write("imported\\n")
UPDATERS.register("hostile-gru")(UPDATERS.get("gru"))  # the same part under one name: idempotent
'''
PAYLOAD_SOURCE = '''from pathlib import Path
Path(__file__).with_name("payload-ran").write_text("the run directory ran code")
'''


# --- a plain run, a run trained with a plugin, and the command lines ------------------------------------

@pytest.fixture(scope="module")
def config_file(workdir) -> Path:
    path = workdir / "small.yml"
    path.write_text(yaml.safe_dump({**FAULTS_CONFIG, "train": {**FAULTS_CONFIG["train"], "epochs": 1},
                                    "pipeline": {**FAULTS_CONFIG["pipeline"], "mode": "sequential"}}))
    return path


@pytest.fixture(scope="module")
def plugin_file(workdir) -> Path:
    folder = workdir / "plugins"
    folder.mkdir()
    path = folder / "hostile_plugin.py"
    path.write_text(PLUGIN_SOURCE)
    return path


@pytest.fixture(scope="module")
def plugin_config_file(workdir, config_file, plugin_file) -> Path:
    given = yaml.safe_load(config_file.read_text())
    given["plugins"] = [os.path.relpath(plugin_file, workdir)]
    given["memory"]["updater"] = "hostile-gru"
    path = workdir / "with_plugin.yml"
    path.write_text(yaml.safe_dump(given))
    return path


def train_run(config_path: Path, events, out: Path) -> Path:
    torch.set_num_threads(1)
    out.mkdir()
    train(load_config(config_path), events, out, torch.device("cpu"), seed=0, show_progress=False)
    return out


@pytest.fixture(scope="module")
def plain_run(workdir, config_file, data_events) -> Path:
    return train_run(config_file, data_events, workdir / "plain-run")


@pytest.fixture(scope="module")
def plugin_run(workdir, plugin_config_file, data_events) -> Path:
    return train_run(plugin_config_file, data_events, workdir / "plugin-run")


def copy_run(run: Path, out: Path) -> Path:
    shutil.copytree(run, out)
    return out


def edit_checkpoint(run: Path, edit: Callable[[dict], object]) -> None:
    """Rewrite a run's checkpoint with `edit` applied, as someone handing over a run directory could."""
    path = run / CHECKPOINT_NAME
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)


def assert_refused(code: int, stderr: str, *fragments: str) -> None:
    assert code == 2, stderr
    assert_one_error_line(stderr, *fragments)
    assert len(stderr) < MAX_MESSAGE, stderr


# --- case 1: a run directory never selects code to import -----------------------------------------------

def test_a_run_directory_cannot_make_evaluate_or_resume_import_its_code(
        plain_run, data_file, config_file, evaluate_cli, train_cli, tmp_path):
    evil = copy_run(plain_run, tmp_path / "evil")
    (evil / "payload.py").write_text(PAYLOAD_SOURCE)
    edit_checkpoint(evil, lambda state: state["config"].__setitem__("plugins", [str(evil / "payload.py")]))

    code, stdout, stderr = evaluate_cli("--run", str(evil), "--data", str(data_file))
    assert_refused(code, stderr, str(evil / CHECKPOINT_NAME), "payload.py", "--plugins")
    assert stdout == ""
    code, _, stderr = train_cli(*cli_args(config_file, data_file, evil, "--epochs", "2", "--resume"))
    assert_refused(code, stderr, str(evil / CHECKPOINT_NAME), "payload.py", "'plugins'")
    assert not (evil / "payload-ran").exists()


def test_evaluate_imports_only_the_plugins_named_on_its_command_line(
        plugin_run, plugin_file, data_file, evaluate_cli, tmp_path, monkeypatch):
    code, _, stderr = evaluate_cli("--run", str(plugin_run), "--data", str(data_file))
    assert_refused(code, stderr, "hostile_plugin.py", "--plugins")
    code, _, stderr = evaluate_cli("--run", str(plugin_run), "--data", str(data_file), "--plugins", "nope.py")
    assert_refused(code, stderr, "--plugins names", "nope.py", "not a file")

    code, stdout, _ = evaluate_cli("--run", str(plugin_run), "--data", str(data_file), "--plugins", str(plugin_file))
    assert code == 0 and 0 <= json.loads(stdout)["test_ap"] <= 1

    # the run and its plugin moved elsewhere: a plugin file of the same name, relative to the working directory
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copy(plugin_file, moved / plugin_file.name)
    monkeypatch.chdir(tmp_path)
    code, stdout, _ = evaluate_cli("--run", str(plugin_run), "--data", str(data_file),
                                   "--plugins", f"json,elsewhere/{plugin_file.name}")
    assert code == 0 and "test_ap" in json.loads(stdout)
    assert (moved / "hostile_plugin.imported").read_text() == "imported\n"


def test_resume_takes_plugins_only_from_the_config_it_is_given(
        plugin_run, plugin_config_file, config_file, data_file, train_cli, tmp_path):
    run = copy_run(plugin_run, tmp_path / "run")
    code, _, stderr = train_cli(*cli_args(config_file, data_file, run, "--epochs", "2", "--resume"))
    assert_refused(code, stderr, "hostile_plugin.py", "'plugins'", "--config")

    # the same config and plugin, moved to another folder: the plugin is the user's, named again
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(plugin_config_file, moved / plugin_config_file.name)
    (moved / "plugins").mkdir()
    shutil.copy(plugin_config_file.parent / "plugins" / "hostile_plugin.py", moved / "plugins")
    code, _, stderr = train_cli(*cli_args(moved / plugin_config_file.name, data_file, run, "--epochs", "2",
                                          "--resume"))
    assert code == 0, stderr
    assert json.loads((run / "results.json").read_text())["epochs"] == 2


def test_missing_plugins_match_modules_by_name_and_files_by_name():
    recorded = ["/old/place/toy_updater.py", "my_package.parts", "/x/other.py"]
    assert missing_plugins(recorded, ["/new/place/toy_updater.py", "my_package.parts"]) == ["/x/other.py"]
    assert missing_plugins(recorded, []) == recorded
    assert missing_plugins([], ["/anything.py"]) == []


def test_a_stored_config_never_imports_its_plugins(plain_run, data_events, tmp_path):
    from pipeline.run.trainer import evaluate_checkpoint
    payload = tmp_path / "payload.py"
    payload.write_text(PAYLOAD_SOURCE)
    state = torch.load(plain_run / CHECKPOINT_NAME, weights_only=True)
    state["config"]["plugins"] = [str(payload)]
    with pytest.raises(CheckpointError, match="payload.py"):
        evaluate_checkpoint(state, data_events, torch.device("cpu"), show_progress=False)
    assert not (tmp_path / "payload-ran").exists()


# --- case 10: random bytes as a checkpoint or a feature file ---------------------------------------------

def fuzzed(rng: random.Random, valid: bytes, case: int) -> bytes:
    """Random bytes, `valid` with some bytes changed, or `valid` cut short, in turn."""
    if case % 3 == 0:
        return rng.randbytes(rng.randint(0, 400))
    if case % 3 == 1:
        damaged = bytearray(valid)
        for _ in range(rng.randint(1, 16)):
            damaged[rng.randrange(len(damaged))] = rng.getrandbits(8)
        return bytes(damaged)
    return valid[:rng.randint(0, len(valid) - 1)]


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")
def test_random_bytes_as_a_checkpoint_load_fully_checked_or_are_refused(plain_run, data_events, tmp_path):
    valid = (plain_run / CHECKPOINT_NAME).read_bytes()
    data_fp = dataset_fingerprint(data_events)
    state = torch.load(plain_run / CHECKPOINT_NAME, weights_only=True)
    setup = build_setup(validate_config(state["config"]), data_events, torch.device("cpu"), 0)
    reference = setup.model.state_dict()
    rng = random.Random(29)
    path = tmp_path / CHECKPOINT_NAME
    outcomes = {"loaded": 0, "refused": 0}
    for case in range(300):
        path.write_bytes(fuzzed(rng, valid, case))
        try:
            loaded = load_checkpoint(path, None, data_fp)
            check_contents(path, loaded, reference)
            load_optimizer_state(path, setup.optimizer, loaded["optimizer"])
            TrainingState(**loaded["training"])
            outcomes["loaded"] += 1
        except CheckpointError as err:
            message = str(err)
            assert message.startswith(str(path)) and "\n" not in message and len(message) < MAX_MESSAGE, message
            outcomes["refused"] += 1
    assert outcomes["refused"] > 100, outcomes


def valid_feature_file(name: str, rows: int) -> bytes:
    buffer = io.BytesIO()
    matrix = np.random.default_rng(0).normal(size=(rows, 3)).astype(np.float32)
    torch.save(torch.from_numpy(matrix), buffer) if name.endswith(".pt") else np.save(buffer, matrix)
    return buffer.getvalue()


@pytest.mark.parametrize("layout, name", [
    ("tgl", "edge_features.pt"), ("tgl", "node_features.pt"),
    ("dyglib", "ml_fuzz.npy"), ("dyglib", "ml_fuzz_node.npy"),
])
def test_random_bytes_as_a_feature_file_load_or_raise_data_error(tmp_path, layout, name):
    if layout == "tgl":
        events = tmp_path / "edges.csv"
        events.write_text("src,dst,time\n0,1,1.0\n1,2,2.0\n2,0,3.0\n")
    else:
        events = tmp_path / "ml_fuzz.csv"
        events.write_text(",u,i,ts,label,idx\n0,1,2,1.0,0,1\n1,2,3,2.0,0,2\n2,3,1,3.0,0,3\n")
    valid = valid_feature_file(name, 3 if layout == "tgl" else 4)
    rng = random.Random(zlib.crc32(name.encode()))
    refused = 0
    for case in range(150):
        (tmp_path / name).write_bytes(fuzzed(rng, valid, case))
        try:
            loaded = load_events(events, fmt=layout)
            features = loaded.node_feat if "node" in name else loaded.edge_feat
            assert features is not None and np.isfinite(features).all()
        except DataError as err:
            message = str(err)
            assert message.startswith(str(tmp_path / name)) and "\n" not in message, message
            assert len(message) < MAX_MESSAGE, message
            refused += 1
    assert refused > 50


def test_random_bytes_as_a_checkpoint_on_the_command_line(plain_run, config_file, data_file, evaluate_cli,
                                                          train_cli, tmp_path):
    run = copy_run(plain_run, tmp_path / "run")
    rng = random.Random(10)
    for _ in range(3):
        (run / CHECKPOINT_NAME).write_bytes(rng.randbytes(300))
        code, _, stderr = evaluate_cli("--run", str(run), "--data", str(data_file))
        assert_refused(code, stderr, str(run / CHECKPOINT_NAME))
        code, _, stderr = train_cli(*cli_args(config_file, data_file, run, "--epochs", "2", "--resume"))
        assert_refused(code, stderr, str(run / CHECKPOINT_NAME))


# --- case 11: a checkpoint that loads but does not fit ---------------------------------------------------

def first_weight(state: dict) -> str:
    return next(name for name, value in state["model"].items() if value.dim() == 2)


def optimizer_entry(state: dict) -> dict:
    return next(iter(state["optimizer"]["state"].values()))


EVALUATE, RESUME, BOTH = "evaluate", "resume", "evaluate resume"
DAMAGES: dict[str, tuple[Callable[[dict], object], str, str]] = {
    # name: (edit, fragment of the message, which command lines refuse it: evaluation reads no optimizer
    # state, --resume no stored config)
    "no model": (lambda s: s.pop("model"), "'model' is missing", BOTH),
    "no training": (lambda s: s.pop("training"), "'training' is missing", BOTH),
    "no dataset fingerprint": (lambda s: s.pop("dataset_fingerprint"), "'dataset_fingerprint' is missing", BOTH),
    "model is a list": (lambda s: s.__setitem__("model", [1, 2]), "'model' is a list", BOTH),
    "seed out of range": (lambda s: s.__setitem__("seed", -1), "'seed'", BOTH),
    "wrong shape": (lambda s: s["model"].__setitem__(first_weight(s), torch.zeros(3, 5)), "has shape (3, 5)", BOTH),
    "wrong dtype": (lambda s: s["model"].__setitem__(first_weight(s), s["model"][first_weight(s)].double()),
                    "is torch.float64", BOTH),
    "missing tensor": (lambda s: s["model"].pop(first_weight(s)), "does not fit this model", BOTH),
    "extra tensor": (lambda s: s["model"].__setitem__("x" * 10_000, torch.zeros(1)), "unexpected", BOTH),
    "not a tensor": (lambda s: s["model"].__setitem__(first_weight(s), [0.0] * 100_000), "is a list", BOTH),
    "sparse tensor": (lambda s: s["model"].__setitem__(first_weight(s), s["model"][first_weight(s)].to_sparse()),
                      "expected a dense tensor", BOTH),
    "nan weights": (lambda s: s["model"][first_weight(s)].fill_(float("nan")), "NaN or infinite", BOTH),
    "best model wrong shape": (lambda s: s["training"]["best_model"].__setitem__(first_weight(s), torch.zeros(2)),
                               "training.best_model", BOTH),
    "training field missing": (lambda s: s["training"].pop("history"), "fields of a training state", BOTH),
    "training field of another type": (lambda s: s["training"].__setitem__("next_epoch", "1"), "next_epoch", BOTH),
    "history too short": (lambda s: s["training"].__setitem__("history", []), "one entry per epoch", BOTH),
    "history of other data": (lambda s: s["training"]["history"][0].__setitem__("k_mean", torch.zeros(1)),
                              "history' entry 0", BOTH),
    "optimizer state of another shape": (lambda s: optimizer_entry(s).__setitem__("exp_avg", torch.zeros(7, 7)),
                                         "optimizer.state", RESUME),
    "optimizer state entry missing": (lambda s: optimizer_entry(s).pop("exp_avg_sq"), "exp_avg_sq", RESUME),
    "optimizer without groups": (lambda s: s["optimizer"].__setitem__("param_groups", []), "'optimizer'", RESUME),
    "optimizer lr of another type": (lambda s: s["optimizer"]["param_groups"][0].__setitem__("lr", "fast"),
                                     "'lr' is a str", RESUME),
    "stored config invalid": (lambda s: s["config"]["memory"].__setitem__("dim", -5), "stored config", EVALUATE),
    "config not a dict": (lambda s: s.__setitem__("config", [1]), "'config' is a list", BOTH),
    "plugins not strings": (lambda s: s["config"].__setitem__("plugins", [1]), "'plugins' is not a list", BOTH),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_checkpoint_that_does_not_fit_is_refused_in_one_line(
        plain_run, config_file, data_file, evaluate_cli, train_cli, tmp_path, damage):
    edit, fragment, refused_by = DAMAGES[damage]
    run = copy_run(plain_run, tmp_path / "run")
    edit_checkpoint(run, edit)
    before = (run / CHECKPOINT_NAME).read_bytes()
    if EVALUATE in refused_by:
        code, stdout, stderr = evaluate_cli("--run", str(run), "--data", str(data_file))
        assert_refused(code, stderr, str(run / CHECKPOINT_NAME), fragment)
        assert stdout == ""
    if RESUME in refused_by:
        code, stdout, stderr = train_cli(*cli_args(config_file, data_file, run, "--epochs", "2", "--resume"))
        assert_refused(code, stderr, str(run / CHECKPOINT_NAME), fragment)
        assert "epoch" not in stdout
        assert (run / CHECKPOINT_NAME).read_bytes() == before


def test_training_fields_are_those_of_the_training_state():
    assert set(TRAINING_FIELDS) == set(TrainingState.__dataclass_fields__)


# --- case 12: the disk fills up at the first checkpoint --------------------------------------------------

class FillingFile(io.FileIO):
    """A file on a disk with `room` bytes left: the write that would pass it fails with ENOSPC."""

    room = 4096

    def write(self, data) -> int:
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def fill_the_disk_at_checkpoints(monkeypatch, room: int | None = None) -> None:
    """Make every checkpoint written from now on go to a `FillingFile` (the other files of a run are written
    as usual)."""
    real_open = files_module._open_temporary
    if room is not None:
        monkeypatch.setattr(FillingFile, "room", room)

    def open_temporary(fd: int, text: bool):
        if CHECKPOINT_NAME in os.readlink(f"/proc/self/fd/{fd}"):
            return FillingFile(fd, "wb")
        return real_open(fd, text)

    monkeypatch.setattr(files_module, "_open_temporary", open_temporary)


def test_torch_save_on_a_full_disk_fails_as_its_zip_writers_runtime_error(tmp_path):
    with pytest.raises(RuntimeError) as failed, FillingFile(tmp_path / "x", "wb") as handle:
        torch.save({"w": torch.zeros(10_000)}, handle)
    assert isinstance(failed.value.__context__, OSError)  # what save_checkpoint reports


@pytest.mark.parametrize("room", [0, 100, 4096, 30_000])
def test_save_checkpoint_on_a_full_disk_keeps_the_previous_one_and_no_temporary_file(tmp_path, monkeypatch, room):
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint(path, {"weights": torch.zeros(3)})
    before = path.read_bytes()
    fill_the_disk_at_checkpoints(monkeypatch, room)
    with pytest.raises(CheckpointError) as refused:
        save_checkpoint(path, {"weights": torch.zeros(10_000)})
    assert str(refused.value) == f"{path}: cannot write checkpoint (No space left on device)"
    assert path.read_bytes() == before and no_temporary_files(tmp_path)


def test_full_disk_at_the_first_checkpoint_is_exit_2_in_one_line(config_file, data_file, train_cli, tmp_path,
                                                                 monkeypatch):
    out = tmp_path / "run"
    fill_the_disk_at_checkpoints(monkeypatch)
    code, _, stderr = train_cli(*cli_args(config_file, data_file, out))
    assert_refused(code, stderr, str(out / CHECKPOINT_NAME), "cannot write checkpoint", "No space left on device")
    assert not (out / CHECKPOINT_NAME).exists() and no_temporary_files(out)


def mount_small_tmpfs(path: Path) -> bool:
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


def test_a_real_full_disk_at_the_first_checkpoint(scripts_dir, config_file, data_file, tmp_path):
    disk = tmp_path / "disk"
    if not mount_small_tmpfs(disk):
        pytest.skip("needs root to mount a 2 MB tmpfs")
    try:
        config = tmp_path / "wide.yml"
        config.write_text(yaml.safe_dump({**yaml.safe_load(config_file.read_text()), "memory": {"dim": 256}}))
        out = disk / "run"
        done = subprocess.run([sys.executable, str(scripts_dir / "train.py"), *cli_args(config, data_file, out)],
                              capture_output=True, text=True, timeout=300)
        assert_refused(done.returncode, done.stderr, "cannot write checkpoint (No space left on device)")
        assert no_temporary_files(out)
    finally:
        subprocess.run(["umount", str(disk)], check=False)
