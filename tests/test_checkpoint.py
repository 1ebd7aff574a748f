"""Checkpoints are written atomically and refused when corrupt, from another config or dataset, or when
loading them would run code."""
import os

import pytest
import torch

from graph.synthetic import synthetic_events
from pipeline.run.checkpoint import (
    CheckpointError, config_fingerprint, dataset_fingerprint, load_checkpoint, save_checkpoint,
)
from pipeline.run.config import validate_config


@pytest.fixture()
def fingerprints():
    return config_fingerprint(validate_config({})), dataset_fingerprint(synthetic_events(num_events=200, seed=1))


def layout(fingerprints, **entries) -> dict:
    """A checkpoint with every entry scripts/train.py writes (empty where a test does not need it)."""
    return {"config": {}, "seed": 0, "config_fingerprint": fingerprints[0], "dataset_fingerprint": fingerprints[1],
            "model": {}, "optimizer": {}, "training": {}, **entries}


def test_round_trip(tmp_path, fingerprints):
    path = tmp_path / "checkpoint.pt"
    state = layout(fingerprints, weights=torch.arange(5.0))
    save_checkpoint(path, state)
    loaded = load_checkpoint(path, *fingerprints)
    assert torch.equal(loaded["weights"], state["weights"])
    assert not list(tmp_path.glob("*.tmp"))


def test_failed_write_keeps_previous_checkpoint(tmp_path, fingerprints):
    path = tmp_path / "checkpoint.pt"
    good = layout(fingerprints, value=1)
    save_checkpoint(path, good)

    class Unpicklable:
        def __reduce__(self):
            raise OSError(28, "No space left on device")

    with pytest.raises(CheckpointError, match="cannot write"):
        save_checkpoint(path, {**good, "value": Unpicklable()})
    assert load_checkpoint(path, *fingerprints)["value"] == 1
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_checkpoint_is_refused(tmp_path, fingerprints, damage):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"config_fingerprint": fingerprints[0], "dataset_fingerprint": fingerprints[1],
                           "weights": torch.randn(1000)})
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00not a checkpoint" * 50,
                      "empty": b""}[damage])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path, *fingerprints)


def test_mismatched_checkpoint_is_refused(tmp_path, fingerprints):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, layout(fingerprints))
    other_cfg = config_fingerprint(validate_config({"memory": {"dim": 50}}))
    other_data = dataset_fingerprint(synthetic_events(num_events=200, seed=2))
    with pytest.raises(CheckpointError, match="different config"):
        load_checkpoint(path, other_cfg, fingerprints[1])
    with pytest.raises(CheckpointError, match="different dataset"):
        load_checkpoint(path, fingerprints[0], other_data)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt", *fingerprints)


def test_epoch_count_and_mode_do_not_change_the_fingerprint():
    base = validate_config({})
    longer = validate_config({"train": {"epochs": 99}, "pipeline": {"mode": "sequential"}})
    assert config_fingerprint(base) == config_fingerprint(longer)
    assert config_fingerprint(base) != config_fingerprint(validate_config({"train": {"lr": 0.01}}))


def test_checkpoint_carrying_a_callable_is_refused_without_running_it(tmp_path, fingerprints):
    marker = tmp_path / "code-ran"

    class RunsCode:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "checkpoint.pt"
    torch.save({"config_fingerprint": fingerprints[0], "dataset_fingerprint": fingerprints[1],
                "payload": RunsCode()}, path)
    with pytest.raises(CheckpointError, match="refused: it holds Python objects") as refused:
        load_checkpoint(path, *fingerprints)
    assert "\n" not in str(refused.value) and str(path) in str(refused.value)
    assert not marker.exists()
