"""Hostile configs, learning rates, concurrent runs and an early Ctrl-C (issue 29, round two).

- A config is bounded when it is read, whatever it came from (a YAML file, `--set`, a checkpoint):
  nesting a thousand levels deep, a YAML alias bomb under a known key or a recursive alias end in one
  short `ConfigError` naming the file and the key, quickly, and no error message builds the repr of an
  unbounded value.
- A learning rate must be finite and positive; a run whose weights or scores turn NaN/inf in an epoch's
  last batch stops with the "diverged training" user error before evaluation calls sklearn.
- One run per `--out` at a time: a second gets one line naming the first's pid (exit 2), and the lock
  never outlives its process.
- Ctrl-C while a script still imports its modules is `interrupted`, exit 130, without a traceback.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from common.errors import ConfigError, NonFiniteLossError, UserError
from graph.synthetic import synthetic_events
from pipeline.run import trainer as trainer_module
from pipeline.run.checkpoint import CHECKPOINT_NAME
from pipeline.run.config import (
    MAX_DEPTH, MAX_VALUES, SHOWN_CHARS, apply_overrides, load_config, parse_settings, shown, validate_config,
)
from pipeline.run.trainer import train
from small import small_config, small_sections
from test_faults import assert_one_error_line as assert_one_line, cli_args

MAX_MESSAGE = 300  # a config error about a hostile value stays one short line
FAST_S = 5.0  # reading a hostile config costs at most this (the alias bomb took 33 s and 2.4 GB)


def write(tmp_path: Path, text: str, name: str = "hostile.yml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def refused(read: Callable[[], object], *fragments: str) -> str:
    """Call `read`, expect a one-line ConfigError holding `fragments`, short and fast; return its message."""
    started = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        read()
    assert time.perf_counter() - started < FAST_S
    message = str(err.value)
    assert "\n" not in message and len(message) < MAX_MESSAGE, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def alias_bomb(leaf: str, levels: int = 9, width: int = 9) -> str:
    """A YAML flow list whose anchors each repeat the one before `width` times: `width**levels` leaves."""
    parts = [f"&a0 [{', '.join([leaf] * width)}]"]
    parts += [f"&a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return f"[{', '.join(parts)}]"


def nested_list(depth: int) -> list:
    """`[[[...]]]` `depth` levels deep, built without recursion."""
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


# --- case 7: nesting ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, key", [
    ("plugins: " + "[" * 1000 + "]" * 1000 + "\n", "plugins"),
    ("eval: {negatives: " + "[" * 1000 + "]" * 1000 + "}\n", "eval.negatives"),
    ("train:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(1000)), "train.k0.k1"),
    ("sampler: {fanouts: " + "{a: " * 1000 + "1" + "}" * 1000 + "}\n", "sampler.fanouts.a.a"),
], ids=["plugins", "eval.negatives", "mapping", "flow mapping"])
def test_a_config_nested_a_thousand_levels_deep_is_one_line(tmp_path, text, key):
    path = write(tmp_path, text)
    refused(lambda: load_config(path), str(path), f"key '{key}", f"deeper than {MAX_DEPTH} levels")


def test_long_keys_on_a_deep_path_still_make_a_short_message(tmp_path):
    text = "train:\n" + "".join("  " * (i + 1) + "k" * 1000 + f"{i}:\n" for i in range(40))
    path = write(tmp_path, text)
    refused(lambda: load_config(path), str(path), "key 'train.'kkk", "deeper")
    deep: dict = {}
    for i in range(40):
        deep = {"k" * 10**5 + str(i): deep}
    refused(lambda: validate_config({"train": deep}, "checkpoint config"), "key 'train.'kkk", "deeper")
    refused(lambda: parse_settings(["x" * 10**6]), "--set", "not KEY=VALUE")


def test_nesting_in_set_and_in_a_stored_config_is_bounded_too():
    refused(lambda: parse_settings(["plugins=" + "[" * 5000 + "]" * 5000]), "--set", "plugins", "deeper")
    deep = nested_list(100_000)  # a checkpoint's config is unpickled, not parsed: no YAML depth limit applies
    refused(lambda: validate_config({"plugins": deep}, "checkpoint config"), "checkpoint config", "'plugins'")
    refused(lambda: apply_overrides(validate_config({}), {"eval.negatives": deep}), "'eval.negatives'", "deeper")


# --- case 8: alias bombs and recursive aliases ---------------------------------------------------------

@pytest.mark.parametrize("key, leaf", [
    ("plugins", "lol"), ("eval.negatives", "random"), ("sampler.fanouts", "1"), ("pipeline.auto.candidates", "x"),
])
def test_an_alias_bomb_under_a_known_key_is_refused_without_expanding_it(tmp_path, key, leaf):
    *sections, name = key.split(".")
    text = "".join(f"{section}: {{" for section in sections) + f"{name}: {alias_bomb(leaf)}" + "}" * len(sections)
    path = write(tmp_path, text + "\n")
    refused(lambda: load_config(path), str(path), f"key '{key}'", f"more than {MAX_VALUES} values")


def test_a_merge_key_bomb_under_any_key_is_refused(tmp_path):
    keys = ", ".join(f"k{i}: 1" for i in range(9))
    lines = [f"x0: &x0 {{{keys}}}"] + [f"x{i}: &x{i} {{<<: [{', '.join([f'*x{i - 1}'] * 9)}]}}" for i in range(1, 9)]
    path = write(tmp_path, "\n".join(lines) + "\n")
    refused(lambda: load_config(path), str(path), "'x", f"more than {MAX_VALUES} values")


def test_a_recursive_alias_is_refused(tmp_path):
    path = write(tmp_path, "plugins: &loop [*loop]\n")
    refused(lambda: load_config(path), str(path), "'plugins'", "alias to itself")
    recursive: list = []
    recursive.append(recursive)
    refused(lambda: validate_config({"plugins": recursive}, "checkpoint config"), "'plugins'", "deeper")


def test_an_alias_bomb_in_a_checkpoints_config_is_refused(tmp_path):
    """A checkpoint is unpickled: shared references survive `torch.save`/`torch.load`, and expanding them
    (for a repr, a deep copy of the expansion) is what cost 33 s and 2.4 GB."""
    bomb: list = ["lol"] * 9
    for _ in range(9):
        bomb = [bomb] * 9
    path = tmp_path / "bomb.pt"
    torch.save({"config": {"plugins": bomb, "sampler": {"fanouts": bomb}}}, path)
    stored = torch.load(path, weights_only=True)["config"]
    refused(lambda: validate_config(stored, "runs/x/checkpoint.pt: stored config"), "stored config",
            f"more than {MAX_VALUES} values")


def test_a_few_aliases_in_a_config_are_fine(tmp_path):
    path = write(tmp_path, "sampler: {fanouts: &f [10]}\nmemory: {dim: &d 16, dim_time: *d}\n"
                           "embedding: {dim_out: *d, dim_time: 8}\n")
    cfg = load_config(path)
    assert (cfg.sampler.fanouts, cfg.memory.dim_time, cfg.embedding.dim_out) == ((10,), 16, 16)


# --- messages never show an unbounded value ------------------------------------------------------------

def test_shown_is_short_and_quick_for_any_value():
    recursive: list = []
    recursive.append(recursive)
    shared: list = [0] * 10
    for _ in range(30):
        shared = [shared] * 10  # 10**31 leaves: a full repr would never end
    values = [shared, recursive, 10**10000, "x" * 10**7, b"\0" * 10**7, list(range(10**6)),
              {str(i): i for i in range(10**5)}, float("nan"), None, True, "short"]
    started = time.perf_counter()
    texts = [shown(value) for value in values]
    assert time.perf_counter() - started < 1.0
    assert all(len(text) <= SHOWN_CHARS for text in texts), texts
    assert texts[-4:] == ["nan", "None", "True", "'short'"]
    assert "digits" in texts[2] and texts[4] == "<bytes>"


@pytest.mark.parametrize("given, key", [
    ({"model": 7}, "model"),
    ({"plugins": ["ok", 3] + ["x" * 4000] * 2000}, "plugins"),
    ({"sampler": {"fanouts": [-1] * 9000}}, "sampler.fanouts"),
    ({"sampler": {"fanouts": "y" * 4000}}, "sampler.fanouts"),
    ({"eval": {"negatives": ["z" * 4000] * 2}}, "eval.negatives"),
    ({"pipeline": {"mode": "m" * 4000}}, "pipeline.mode"),
    ({"pipeline": {"auto": {"candidates": ["c" * 4000]}}}, "pipeline.auto.candidates"),
    ({"train": {"lr": ["l" * 4000] * 2000}}, "train.lr"),
    ({"train": {"epochs": 10**4000}}, "train.epochs"),
    ({"pipeline": {"mitigation": {"enabled": "e" * 4000}}}, "pipeline.mitigation.enabled"),
    ({"train": {"k" * 4000: 1}}, "train."),
    ({"model": "s" * 5000}, "model"),
    ({"train": {1: 1, "a": 2}}, "train.1"),
])
def test_every_config_error_shows_a_short_value(given, key):
    refused(lambda: validate_config(given, "hostile.yml"), "hostile.yml", f"'{key}")


@pytest.mark.parametrize("text, fragment", [
    ("train: {epochs: " + "9" * 5000 + "}\n", "invalid YAML"),
    ("[1, 2]\n", "must be a mapping"),
    ("train: {lr: [\n", "invalid YAML"),
])
def test_unreadable_yaml_is_one_short_line(tmp_path, text, fragment):
    path = write(tmp_path, text)
    refused(lambda: load_config(path), str(path), fragment)


def test_a_huge_or_binary_config_file_is_refused_unread(tmp_path):
    big = write(tmp_path, "# " + "x" * (2 << 20) + "\n", "big.yml")
    refused(lambda: load_config(big), str(big), "larger than")
    binary = tmp_path / "binary.yml"
    binary.write_bytes(b"\xff\xfe\x00train: 1")
    refused(lambda: load_config(binary), str(binary), "not UTF-8")


# --- case 9: learning rate and divergence in an epoch's last batch -------------------------------------

@pytest.mark.parametrize("lr", [float("inf"), float("-inf"), float("nan"), 10**400, 0, -1e-3])
def test_a_learning_rate_must_be_finite_and_positive(lr):
    refused(lambda: apply_overrides(validate_config({}), {"train.lr": lr}, "command line"), "'train.lr'")


def test_yaml_infinity_is_refused(tmp_path):
    path = write(tmp_path, "train: {lr: .inf, weight_decay: 0.0}\n")
    refused(lambda: load_config(path), "'train.lr'", "finite")


def test_a_huge_finite_learning_rate_is_accepted():
    assert validate_config({"train": {"lr": 1e30}}).train.lr == 1e30


@pytest.fixture(scope="module")
def events():
    return synthetic_events(num_nodes=60, num_events=3000, seed=3)


def run(cfg, events, out: Path, **kwargs) -> dict:
    torch.set_num_threads(1)
    return train(cfg, events, out, torch.device("cpu"), seed=0, show_progress=False, **kwargs)


def test_weights_that_turn_nan_in_the_last_batch_stop_before_evaluation(events, tmp_path, monkeypatch):
    run(small_config(train={"epochs": 1}), events, tmp_path)
    before = (tmp_path / CHECKPOINT_NAME).read_bytes()
    run_training = trainer_module._run_training

    def last_step_breaks_a_weight(setup, *args):
        done = run_training(setup, *args)  # every batch's loss was finite
        with torch.no_grad():
            next(setup.model.parameters())[0] = float("nan")
        return done

    monkeypatch.setattr(trainer_module, "_run_training", last_step_breaks_a_weight)
    monkeypatch.setattr(trainer_module, "split_metrics", lambda *args, **kwargs: pytest.fail("evaluated NaN"))
    with pytest.raises(NonFiniteLossError, match=r"weights became nan in epoch 1 .*lower train\.lr"):
        run(small_config(train={"epochs": 2}), events, tmp_path, resume=True)
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == before


def test_a_huge_learning_rate_in_one_batch_is_the_diverged_training_error(events, tmp_path):
    """One batch per epoch: the per-batch loss check never sees the step that broke the model, and sklearn
    used to fail on the NaN scores (`Input contains NaN`)."""
    cfg = small_config(train={"epochs": 1, "lr": 1e30, "batch_size": 10_000})
    with pytest.raises(NonFiniteLossError, match=r"became (nan|inf).*lower train\.lr"):
        run(cfg, events, tmp_path)
    assert not (tmp_path / CHECKPOINT_NAME).exists()


def test_non_finite_scores_are_the_diverged_training_error():
    trainer_module._check_scores("val", np.ones(3), np.ones((3, 1)))
    with pytest.raises(NonFiniteLossError, match="val scores became inf"):
        trainer_module._check_scores("val", np.ones(3), np.array([[1.0], [np.inf], [1.0]]))


# --- the command line: one line, exit 2 -------------------------------------------------------------

@pytest.fixture(scope="module")
def config_file(workdir) -> Path:
    path = workdir / "small.yml"
    path.write_text(yaml.safe_dump(small_sections(train={"epochs": 1})))
    return path


def assert_one_error_line(code: int, stderr: str, *fragments: str) -> None:
    assert code == 2, stderr
    assert len(stderr) < MAX_MESSAGE, stderr
    assert_one_line(stderr, *fragments)


@pytest.mark.parametrize("extra, fragments", [
    (["--lr", "inf"], ["train.lr", "finite"]),
    (["--lr", "nan"], ["train.lr", "finite"]),
    (["--set", "plugins=" + "[" * 2000 + "]" * 2000], ["--set", "plugins", "deeper"]),
    (["--set", "sampler.fanouts=" + alias_bomb("1")], ["'sampler.fanouts'", "values"]),
])
def test_hostile_command_lines_are_one_line_and_exit_2(config_file, data_file, train_cli, tmp_path, extra,
                                                       fragments):
    out = tmp_path / "run"
    code, _, stderr = train_cli(*cli_args(config_file, data_file, out, *extra))
    assert_one_error_line(code, stderr, *fragments)
    assert not out.exists()


@pytest.mark.parametrize("config_text, fragments", [
    ("plugins: " + "[" * 1000 + "]" * 1000 + "\n", ["'plugins'", "deeper"]),
    ("eval: {negatives: " + alias_bomb("random") + "}\n", ["'eval.negatives'", "values"]),
])
def test_hostile_config_files_on_the_command_line(data_file, train_cli, tmp_path, config_text, fragments):
    path = write(tmp_path, config_text)
    code, _, stderr = train_cli(*cli_args(path, data_file, tmp_path / "run"))
    assert_one_error_line(code, stderr, str(path), *fragments)


def test_a_diverging_run_on_the_command_line_is_exit_2(config_file, data_file, train_cli, tmp_path):
    out = tmp_path / "run"
    code, _, stderr = train_cli(*cli_args(config_file, data_file, out, "--lr", "1e30", "--batch-size", "10000"))
    assert_one_error_line(code, stderr, "lower train.lr")
    assert not list(out.glob("*.tmp")) and not (out / CHECKPOINT_NAME).exists()


# --- case 2: one run per --out ----------------------------------------------------------------------

@pytest.fixture
def train_script(scripts_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(scripts_dir))
    import train
    return train


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"{os.getpid()}\\n".encode())
print("locked", flush=True)
time.sleep(600)
"""


@pytest.fixture
def lock_holder() -> Callable[[Path], subprocess.Popen]:
    """Start a process that takes a run directory's lock as a run would and keeps it until killed."""
    started: list[subprocess.Popen] = []

    def hold(out: Path) -> subprocess.Popen:
        out.mkdir(parents=True, exist_ok=True)
        process = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out / ".lock")], stdout=subprocess.PIPE,
                                   text=True)
        started.append(process)
        assert process.stdout.readline() == "locked\n"
        return process

    yield hold
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_a_second_run_into_a_locked_directory_names_the_holder_and_touches_nothing(
        config_file, data_file, train_cli, tmp_path, lock_holder):
    out = tmp_path / "run"
    assert train_cli(*cli_args(config_file, data_file, out))[0] == 0
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    holder = lock_holder(out)
    for extra in ([], ["--overwrite"], ["--resume", "--epochs", "2"]):
        code, stdout, stderr = train_cli(*cli_args(config_file, data_file, out, *extra))
        assert_one_error_line(code, stderr, str(out), f"another run (pid {holder.pid})")
        assert "epoch" not in stdout
        assert {path.name: path.read_bytes() for path in out.iterdir() if path.name != ".lock"} == before
    holder.kill()
    holder.communicate()
    assert (out / ".lock").exists(), "a killed holder leaves its lock file..."
    assert train_cli(*cli_args(config_file, data_file, out, "--overwrite"))[0] == 0, "...which blocks nothing"
    assert not (out / ".lock").exists()


def test_the_lock_is_released_on_every_exit_path(train_script, tmp_path):
    out = tmp_path / "run"
    lock = train_script.prepare_run_dir(out, resume=False, overwrite=False)
    with pytest.raises(UserError, match=f"another run \\(pid {os.getpid()}\\)"):
        train_script.prepare_run_dir(out, resume=False, overwrite=False)
    lock.release()
    assert list(out.iterdir()) == []
    (out / "results.json").write_text("{}")
    with pytest.raises(UserError, match="already holds a run"):
        train_script.prepare_run_dir(out, resume=False, overwrite=False)
    with pytest.raises(UserError, match="no checkpoint.pt"):
        train_script.prepare_run_dir(out, resume=True, overwrite=False)
    train_script.prepare_run_dir(out, resume=False, overwrite=True).release()
    assert list(out.iterdir()) == []
    with pytest.raises(UserError, match="no checkpoint.pt"):
        train_script.prepare_run_dir(tmp_path / "never-made", resume=True, overwrite=False)
    assert not (tmp_path / "never-made").exists()


def test_a_stale_lock_file_from_a_dead_run_blocks_nothing(train_script, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text("999999999\n")
    lock = train_script.prepare_run_dir(out, resume=False, overwrite=False)
    assert (out / ".lock").read_text() == f"{os.getpid()}\n"
    lock.release()


def test_a_lock_file_that_is_a_link_is_not_followed(train_script, tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").symlink_to(target)
    with pytest.raises(UserError, match="cannot write to the run directory"):
        train_script.prepare_run_dir(out, resume=False, overwrite=False)
    assert target.read_text() == "keep me"


def test_a_run_that_fails_inside_training_releases_the_lock(config_file, data_file, train_cli, tmp_path):
    out = tmp_path / "run"
    code, _, _ = train_cli(*cli_args(config_file, data_file, out, "--lr", "1e30", "--batch-size", "10000"))
    assert code == 2 and not (out / ".lock").exists()
    assert train_cli(*cli_args(config_file, data_file, out, "--overwrite"))[0] == 0


@pytest.mark.faults
@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_two_trainings_started_together_into_one_out(scripts_dir, config_file, data_file, tmp_path, overwrite):
    """The issue's case: TGN and JODIE into the same --out 0.3 s apart. One trains, the other is refused
    naming its pid; the directory holds one run (one TensorBoard log, the winner's results)."""
    out = tmp_path / "run"
    jodie = tmp_path / "jodie.yml"
    jodie.write_text(yaml.safe_dump({**small_sections(train={"epochs": 1}), "model": "jodie"}))
    extra = ["--overwrite"] if overwrite else []
    processes = []
    for config in (config_file, jodie):
        processes.append(subprocess.Popen([sys.executable, str(scripts_dir / "train.py"),
                                           *cli_args(config, data_file, out, *extra)],
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        time.sleep(0.3)
    results = [(process.pid, *process.communicate(timeout=300), process.returncode) for process in processes]
    codes = sorted(code for *_, code in results)
    assert codes == [0, 2], results
    (winner, _, _, _), = [r for r in results if r[3] == 0]
    (_, _, stderr, _), = [r for r in results if r[3] == 2]
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert f"another run (pid {winner})" in stderr
    assert len(list(out.glob("events.out.tfevents*"))) == 1
    model = "tgn" if results[0][0] == winner else "jodie"
    assert json.loads((out / "results.json").read_text())["model"] == model
    assert not (out / ".lock").exists()


# --- case 14: Ctrl-C while the imports run ----------------------------------------------------------

@pytest.mark.faults
@pytest.mark.parametrize("delay", [0.5, 1.0, 2.0])
def test_ctrl_c_while_importing_is_interrupted_exit_130(scripts_dir, config_file, data_file, tmp_path, delay):
    process = subprocess.Popen([sys.executable, str(scripts_dir / "train.py"),
                                *cli_args(config_file, data_file, tmp_path / "run")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert (process.returncode, stderr) == (130, "interrupted\n")


@pytest.mark.faults
@pytest.mark.parametrize("script", ["evaluate.py", "prepare_data.py", "plot_timeline.py", "interference.py"])
def test_every_script_turns_ctrl_c_while_importing_into_interrupted(scripts_dir, script):
    process = subprocess.Popen([sys.executable, str(scripts_dir / script), "--help"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    if process.returncode == 0:
        pytest.skip(f"{script} finished its imports in 0.5 s")  # (--help printed: nothing to interrupt)
    assert (process.returncode, stderr) == (130, "interrupted\n")


def test_importing_the_cli_module_elsewhere_leaves_sigint_alone(scripts_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(scripts_dir))
    import _cli  # noqa: F401  (pytest's process is not a script: Python's own handler stays)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
