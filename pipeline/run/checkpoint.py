"""Atomic checkpoints: a run killed at any moment leaves either the previous or the new checkpoint,
never a torn one, and a checkpoint from another config or dataset is refused instead of resumed.

A checkpoint is data from wherever the run directory came from: loading unpickles only tensors and plain
data, its layout, types and tensor shapes are checked against the model before anything is loaded into it
(`check_contents`), and the plugins its config records are compared with those the user gave
(`check_plugins`), never imported. Anything that does not fit is a `CheckpointError`: one line, exit 2.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.errors import CheckpointError, UserError, one_line, shorten
from common.files import replacing
from graph.events import EventStream
from pipeline.run.config import DEFAULTS, RunConfig, check_bounds, shown
from pipeline.run.plugins import describe_plugins, missing_plugins

CHECKPOINT_NAME = "checkpoint.pt"
# how torch.load(weights_only=True) refuses a class or global that is not plain data (torch 2.2 wording)
UNSAFE_CONTENT_MESSAGES = ("Unsupported class", "Unsupported global")
# the top-level entries of a checkpoint scripts/train.py writes, and their types
LAYOUT: dict[str, type] = {
    "config": dict, "seed": int, "config_fingerprint": str, "dataset_fingerprint": str,
    "model": dict, "optimizer": dict, "training": dict,
}
# `training`: the fields of trainer.TrainingState (tests/test_hostile_runs.py checks they agree)
TRAINING_FIELDS = ("next_epoch", "best_epoch", "best_val_ap", "best_metrics", "best_model", "history", "stopped_early")
# what trainer._results reads from every history entry
HISTORY_NUMBERS = ("epoch_time_s", "k_mean", "staleness_mean", "staleness_max", "train_busy_fraction")
SEED_LIMIT = 2**53  # seeds are multiplied by 1000 for torch.manual_seed, which takes 64 bits
PLAIN_DEPTH = 8  # how deeply a history entry may nest plain data


# what of a config does not change the trained model, so a run may be resumed with another value:
# the `pipeline` section (the mode), these `train` keys and the `eval` keys that only say how the best
# weights are ranked after training (they came after checkpoints were written without them)
UNFINGERPRINTED_TRAIN_KEYS = ("epochs", "patience")
UNFINGERPRINTED_EVAL_KEYS = ("ranking_negatives", "ranking_seed", "val_negatives_file", "test_negatives_file")
# `predictor` keys that came after checkpoints were written without them, left out while at their defaults
# (only a predictor of pair history may set them otherwise)
DEFAULT_UNFINGERPRINTED_PREDICTOR_KEYS = ("history_dim", "half_lives")
SHOWN_DIFFERENCES = 3  # how many differing config keys a refused --resume names


def _fingerprinted(config: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a config (as plain data) that changes the trained model (not the epoch count or mode)."""
    relevant = {k: v for k, v in config.items() if k != "pipeline"}
    if isinstance(relevant.get("train"), Mapping):
        relevant["train"] = {k: v for k, v in relevant["train"].items() if k not in UNFINGERPRINTED_TRAIN_KEYS}
    if isinstance(relevant.get("eval"), Mapping):
        relevant["eval"] = {k: v for k, v in relevant["eval"].items() if k not in UNFINGERPRINTED_EVAL_KEYS}
    if isinstance(relevant.get("predictor"), Mapping):
        relevant["predictor"] = {k: v for k, v in relevant["predictor"].items()
                                 if k not in DEFAULT_UNFINGERPRINTED_PREDICTOR_KEYS or v != DEFAULTS["predictor"][k]}
    return relevant


def config_fingerprint(cfg: RunConfig) -> str:
    """Hash of everything in the config that changes the trained model (not the epoch count or mode)."""
    return hashlib.sha256(json.dumps(_fingerprinted(cfg.to_dict()), sort_keys=True).encode()).hexdigest()[:16]


FINGERPRINT_CHUNK = 1 << 22  # events hashed per step


def dataset_fingerprint(events: EventStream) -> str:
    """Hash of the event stream's structure, so a checkpoint is only resumed on the same data."""
    digest = hashlib.sha256()
    for array, dtype in ((events.src, np.int64), (events.dst, np.int64), (events.t, np.float64)):
        for start in range(0, len(array), FINGERPRINT_CHUNK):  # a prepared stream is hashed a chunk at a time
            digest.update(np.ascontiguousarray(array[start:start + FINGERPRINT_CHUNK], dtype=dtype).tobytes())
    digest.update(str((events.num_nodes, events.dim_edge_feat, events.dim_node_feat)).encode())
    return digest.hexdigest()[:16]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically and never through a link (`common.files.replacing`).

    A failed write (disk full, quota, I/O error) removes the temporary file, leaves the previous checkpoint
    as it was and is a `CheckpointError`. torch.save reports a full disk as an OSError, or as a RuntimeError
    of its zip writer when the OSError happened while the archive was open; both count.
    """
    try:
        with replacing(path) as handle:
            torch.save(state, handle)
    except BaseException as err:
        reason = _write_failure(err)
        if reason is None:
            raise
        raise CheckpointError(f"{path}: cannot write checkpoint ({reason})") from None


def _write_failure(err: BaseException) -> str | None:
    """Why a checkpoint write failed, if `err` is a failed write: the operating system's message of the
    OSError it is or was raised while handling, or torch's zip writer's own complaint; None otherwise."""
    seen: BaseException | None = err
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, OSError):
            return seen.strerror or shorten(str(seen)) or type(seen).__name__
        seen = seen.__cause__ or seen.__context__
    message = one_line(err)
    if isinstance(err, RuntimeError) and ("PytorchStreamWriter" in message or "inline_container" in message):
        return shorten(message)
    return None


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's contents, unpickling only tensors and plain data (`weights_only`) so that loading a
    checkpoint or run directory from elsewhere cannot run code; refused unless it has the layout
    scripts/train.py writes (`LAYOUT`)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint (not a file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if any(message in str(err) for message in UNSAFE_CONTENT_MESSAGES):
            raise CheckpointError(f"{path}: refused: it holds Python objects besides tensors and plain data, which "
                                  "loading could run as code (only checkpoints scripts/train.py writes load)") from None
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(err).__name__})") from None
    except Exception as err:  # whatever random bytes make the unpickler or the zip reader raise
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(err).__name__})") from None
    if not isinstance(state, dict) or "config_fingerprint" not in state:
        raise CheckpointError(f"{path}: not a checkpoint written by scripts/train.py")
    for key, kind in LAYOUT.items():
        if key not in state:
            raise CheckpointError(f"{path}: not a complete checkpoint: '{key}' is missing")
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            raise CheckpointError(f"{path}: not a valid checkpoint: '{key}' is a {type(state[key]).__name__}, "
                                  f"expected a {kind.__name__}")
    if not 0 <= state["seed"] < SEED_LIMIT:
        raise CheckpointError(f"{path}: not a valid checkpoint: 'seed' must be from 0 to 2**53-1")
    recorded_plugins(path, state)
    return state


def load_checkpoint(path: Path, config_fp: str | None, data_fp: str) -> dict[str, Any]:
    """Read a checkpoint (`read_checkpoint`) and check that it belongs to this dataset and (unless None)
    this config."""
    state = read_checkpoint(path)
    differences = [*_config_differences(state, config_fp, None), *_identity_differences(state, None, data_fp)]
    if differences:
        raise CheckpointError(f"{path}: checkpoint was written {', '.join(differences)}")
    return state


def resume_checkpoint(path: Path, cfg: RunConfig, data_fp: str, seed: int) -> dict[str, Any]:
    """The checkpoint `--resume` continues from: the run's identity must be the checkpoint's as a whole. It
    must record no plugin that `cfg` (the config the user named) does not list (`check_plugins`: refused
    first, with how to name them; a moved plugin file still counts), and the seed, the dataset, the config
    (by its fingerprint) and the plugins `cfg` lists must be those it was written with; every field that
    differs is named in one line (config keys with both values)."""
    state = read_checkpoint(path)
    recorded = check_plugins(path, state, cfg.plugins, "list them under 'plugins' in the --config file")
    config_fp = config_fingerprint(dataclasses.replace(cfg, plugins=tuple(recorded)))
    differences = [*_identity_differences(state, seed, data_fp), *_config_differences(state, config_fp, cfg)]
    extra = missing_plugins(cfg.plugins, recorded)
    if extra:
        differences.append(f"without plugin(s) {describe_plugins(extra)}, which the --config file lists")
    if differences:
        raise CheckpointError(f"{path}: checkpoint was written {', '.join(differences)}; --resume continues a run "
                              f"only with the seed, data, config and plugins it was started with")
    return state


def _identity_differences(state: dict[str, Any], seed: int | None, data_fp: str) -> list[str]:
    """How the checkpoint's seed (unless `seed` is None) and dataset differ from this run's."""
    differences = []
    if seed is not None and state["seed"] != seed:
        differences.append(f"with seed {state['seed']}, not {seed} (pass --seed {state['seed']})")
    if state["dataset_fingerprint"] != data_fp:
        differences.append("for a different dataset")
    return differences


def _config_differences(state: dict[str, Any], config_fp: str | None, cfg: RunConfig | None) -> list[str]:
    """'with a different config' if the checkpoint's config fingerprint is not `config_fp` (None: not
    compared), naming the first keys whose values differ from `cfg`'s when its stored config shows them."""
    if config_fp is None or state["config_fingerprint"] == config_fp:
        return []
    keys = _differing_keys(state["config"], cfg.to_dict()) if cfg is not None else []
    shown = "; ".join(f"'{key}' {theirs} there, {ours} here" for key, theirs, ours in keys[:SHOWN_DIFFERENCES])
    more = len(keys) - SHOWN_DIFFERENCES
    detail = f" ({shown}{f'; and {more} more' if more > 0 else ''})" if keys else ""
    return [f"with a different config{detail}"]


def _differing_keys(stored: Any, given: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The dotted keys of the fingerprinted part of the config whose values differ, with both values shown
    short (stored first). The stored config comes from the checkpoint: its size is bounded first, and a
    stored config past the bounds shows no keys."""
    try:
        check_bounds(stored, "stored config")
    except UserError:
        return []
    if not isinstance(stored, Mapping):
        return []
    differing: list[tuple[str, str, str]] = []

    def walk(theirs: Any, ours: Any, key: str) -> None:
        if isinstance(theirs, Mapping) and isinstance(ours, Mapping):
            for name in sorted(set(theirs) | set(ours), key=str):
                walk(theirs.get(name, "<absent>"), ours.get(name, "<absent>"), f"{key}.{name}" if key else str(name))
        elif theirs != ours or type(theirs) is not type(ours):
            differing.append((shorten(key), shown(theirs), shown(ours)))

    walk(_fingerprinted({k: v for k, v in stored.items() if k != "plugins"}),
         _fingerprinted({k: v for k, v in given.items() if k != "plugins"}), "")
    return differing


def recorded_plugins(path: Path, state: dict[str, Any]) -> list[str]:
    """The plugins a checkpoint's config says its run was trained with (data: they are never imported)."""
    plugins = state["config"].get("plugins", [])
    if not isinstance(plugins, list) or not all(isinstance(entry, str) for entry in plugins):
        raise CheckpointError(f"{path}: not a valid checkpoint: its config's 'plugins' is not a list of strings")
    return plugins


def check_plugins(path: Path, state: dict[str, Any], given: Sequence[str], how: str) -> list[str]:
    """Refuse a checkpoint whose run used plugins the user did not give (`given`, resolved); `how` says
    where to give them. Returns the recorded plugins."""
    recorded = recorded_plugins(path, state)
    missing = missing_plugins(recorded, given)
    if missing:
        raise CheckpointError(f"{path}: the run was trained with plugin(s) {describe_plugins(missing)}, which a "
                              f"checkpoint cannot import itself; if you trust them, {how}")
    return recorded


def check_contents(path: Path, state: dict[str, Any], model_state: Mapping[str, torch.Tensor]) -> None:
    """Check that a checkpoint's weights (`model`, `training.best_model`) have exactly the names, shapes and
    dtypes of `model_state` and are finite, and that its training state has the fields and types training
    reads; raise a `CheckpointError` naming the first entry that does not."""
    check_weights(path, "model", state["model"], model_state)
    _check_training(path, state["training"], model_state)


def check_weights(path: Path, what: str, saved: Any, reference: Mapping[str, torch.Tensor]) -> None:
    """`saved` must be a state dict with `reference`'s names, shapes and dtypes, and finite."""
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: '{what}' is a {type(saved).__name__}, expected a dict of tensors")
    missing = [name for name in reference if name not in saved]
    unexpected = [name for name in saved if name not in reference]
    if missing or unexpected:
        first = f"lacks '{shorten(missing[0])}'" if missing else f"has an unexpected '{shorten(str(unexpected[0]))}'"
        raise CheckpointError(f"{path}: '{what}' does not fit this model: it {first} ({len(missing)} missing, "
                              f"{len(unexpected)} unexpected)")
    for name, expected in reference.items():
        _check_tensor(path, f"{what}.{name}", saved[name], expected.shape, expected.dtype)


def _check_tensor(path: Path, what: str, value: Any, shape: torch.Size | None,
                  dtype: torch.dtype | None) -> None:
    """A dense, finite tensor of `shape` (None: any) and `dtype` (None: any floating point)."""
    where = f"{path}: '{shorten(what)}'"
    if not isinstance(value, torch.Tensor) or value.layout != torch.strided:
        raise CheckpointError(f"{where} is a {_kind(value)}, expected a dense tensor")
    if shape is not None and value.shape != shape:
        raise CheckpointError(f"{where} has shape {_shape(value.shape)}, expected {_shape(shape)}")
    if dtype is not None and value.dtype != dtype:
        raise CheckpointError(f"{where} is {value.dtype}, expected {dtype}")
    if dtype is None and not value.is_floating_point():
        raise CheckpointError(f"{where} is {value.dtype}, expected a floating-point tensor")
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise CheckpointError(f"{where} holds NaN or infinite values")


def _check_training(path: Path, training: dict[str, Any], model_state: Mapping[str, torch.Tensor]) -> None:
    """The training state must have `TRAINING_FIELDS` with the types the trainer reads, one history entry
    per epoch trained, and best weights (if any) that fit the model."""
    where = f"{path}: 'training"
    if set(training) != set(TRAINING_FIELDS):
        odd = sorted(set(TRAINING_FIELDS) - set(training)) or sorted(map(str, set(training) - set(TRAINING_FIELDS)))
        raise CheckpointError(f"{where}' does not have the fields of a training state (first odd: "
                              f"'{shorten(odd[0])}')")
    next_epoch, best_epoch, history = training["next_epoch"], training["best_epoch"], training["history"]
    if not _is_int(next_epoch) or next_epoch < 0:
        raise CheckpointError(f"{where}.next_epoch' must be an integer >= 0")
    if not _is_int(best_epoch) or not -1 <= best_epoch < max(next_epoch, 0):
        raise CheckpointError(f"{where}.best_epoch' must be an integer from -1 to next_epoch - 1")
    if not _is_number(training["best_val_ap"]) or math.isnan(training["best_val_ap"]):
        raise CheckpointError(f"{where}.best_val_ap' must be a number")
    if not isinstance(training["stopped_early"], bool):
        raise CheckpointError(f"{where}.stopped_early' must be true or false")
    metrics = training["best_metrics"]
    if not isinstance(metrics, dict) or not all(isinstance(k, str) and _is_number(v) for k, v in metrics.items()):
        raise CheckpointError(f"{where}.best_metrics' must map names to numbers")
    if not isinstance(history, list) or len(history) != next_epoch:
        raise CheckpointError(f"{where}.history' must be a list with one entry per epoch trained "
                              f"(next_epoch {next_epoch})")
    seen: set[int] = set()
    for epoch, entry in enumerate(history):
        if not isinstance(entry, dict) or not _is_plain(entry, PLAIN_DEPTH, seen):
            raise CheckpointError(f"{where}.history' entry {epoch} is not a mapping of plain values")
        stage_times = entry.get("stage_time_s")
        if (not all(_is_number(entry.get(key)) for key in HISTORY_NUMBERS) or not isinstance(stage_times, dict)
                or not all(_is_number(v) for v in stage_times.values())):
            raise CheckpointError(f"{where}.history' entry {epoch} lacks the numbers training reports "
                                  f"({', '.join(HISTORY_NUMBERS)}, stage_time_s)")
    if training["best_model"] is not None:
        check_weights(path, "training.best_model", training["best_model"], model_state)


def load_optimizer_state(path: Path, optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Load a checkpoint's optimizer state into `optimizer`, then check that it fits: the same groups with
    hyperparameters of the same kinds, and per parameter the entries one step of `optimizer` creates,
    finite and of the parameter's shape. Loading first lets torch fill in what older versions did not save."""
    fresh = optimizer.state_dict()
    where = f"{path}: 'optimizer"
    try:
        optimizer.load_state_dict(saved)
    except Exception as err:  # torch's own checks (group sizes), or data of the wrong types
        raise CheckpointError(f"{where}' does not fit this model's optimizer ({type(err).__name__})") from None
    try:
        _check_optimizer(path, optimizer, fresh["param_groups"])
    except CheckpointError:
        optimizer.load_state_dict(fresh)
        raise


def _check_optimizer(path: Path, optimizer: torch.optim.Optimizer, fresh_groups: list[dict[str, Any]]) -> None:
    where = f"{path}: 'optimizer"
    for index, (group, ours) in enumerate(zip(optimizer.param_groups, fresh_groups)):
        for key, value in ours.items():
            if key != "params" and not _same_kind(group.get(key), value):
                raise CheckpointError(f"{where}.param_groups' group {index}: '{key}' is a {_kind(group.get(key))}, "
                                      f"expected a {_kind(value)}")
    params = {id(param): param for group in optimizer.param_groups for param in group["params"]}
    keys = _state_keys(optimizer)
    for number, (param, entry) in enumerate(optimizer.state.items()):
        if params.get(id(param)) is not param or not isinstance(entry, dict):
            raise CheckpointError(f"{where}.state' has an entry for no parameter of this model")
        if keys is not None and set(entry) != keys:
            raise CheckpointError(f"{where}.state' entry {number} does not have the entries "
                                  f"{', '.join(sorted(keys))}")
        for key, value in entry.items():
            what = f"optimizer.state.{number}.{key}"
            if _is_number(value):
                if not math.isfinite(value):
                    raise CheckpointError(f"{path}: '{shorten(what)}' is not finite")
                continue
            shape = None if isinstance(value, torch.Tensor) and value.dim() == 0 else param.shape
            _check_tensor(path, what, value, shape, None)


def _state_keys(optimizer: torch.optim.Optimizer) -> set[str] | None:
    """The entries `optimizer` keeps per parameter, from one step of a copy on a scalar parameter
    (None if such a copy cannot be made, e.g. an optimizer that runs on a GPU only)."""
    try:
        param = torch.zeros(1, requires_grad=True)
        probe = type(optimizer)([param], **optimizer.defaults)
        param.grad = torch.zeros(1)
        probe.step()
        return set(probe.state[param])
    except Exception:
        return None


def _same_kind(saved: Any, ours: Any) -> bool:
    """Whether a saved hyperparameter can stand where `ours` stands (numbers finite, tuples of the same length)."""
    if ours is None or isinstance(ours, bool):
        return saved is None or isinstance(saved, bool)
    if _is_number(ours):
        return _is_number(saved) and math.isfinite(saved)
    if isinstance(ours, (tuple, list)):
        return (isinstance(saved, (tuple, list)) and len(saved) == len(ours)
                and all(_same_kind(a, b) for a, b in zip(saved, ours)))
    return type(saved) is type(ours)


def _is_plain(value: Any, depth: int, seen: set[int] | None = None) -> bool:
    """JSON-like data (what results.json can hold), nested at most `depth` deep, each list or dict held once
    (unpickling can build shared and cyclic ones, which would make checking slow and json.dumps fail)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    seen = set() if seen is None else seen
    if depth <= 0 or id(value) in seen:
        return False
    seen.add(id(value))
    if isinstance(value, (list, tuple)):
        return all(_is_plain(item, depth - 1, seen) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and _is_plain(item, depth - 1, seen) for key, item in value.items())
    return False


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    if isinstance(value, torch.Tensor) and value.layout != torch.strided:
        return f"{value.layout} tensor"
    return type(value).__name__


def _shape(shape: torch.Size) -> str:
    return shorten(str(tuple(shape)))
