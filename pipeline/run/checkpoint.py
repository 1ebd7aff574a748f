"""Atomic checkpoints: a run killed at any moment leaves either the previous or the new checkpoint,
never a torn one, and a checkpoint from another config or dataset is refused instead of resumed."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.errors import CheckpointError
from graph.events import EventStream
from pipeline.run.config import RunConfig

CHECKPOINT_NAME = "checkpoint.pt"
# how torch.load(weights_only=True) refuses a class or global that is not plain data (torch 2.2 wording)
UNSAFE_CONTENT_MESSAGES = ("Unsupported class", "Unsupported global")


def config_fingerprint(cfg: RunConfig) -> str:
    """Hash of everything in the config that changes the trained model (not the epoch count or mode)."""
    relevant = {k: v for k, v in cfg.to_dict().items() if k not in ("pipeline",)}
    relevant["train"] = {k: v for k, v in relevant["train"].items() if k not in ("epochs", "patience")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def dataset_fingerprint(events: EventStream) -> str:
    """Hash of the event stream's structure, so a checkpoint is only resumed on the same data."""
    digest = hashlib.sha256()
    for array in (events.src, events.dst, events.t):
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(str((events.num_nodes, events.dim_edge_feat, events.dim_node_feat)).encode())
    return digest.hexdigest()[:16]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically: a temporary file in the same folder, fsync, then rename."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"{path}: cannot write checkpoint ({err.strerror or err})") from None


def load_checkpoint(path: Path, config_fp: str | None, data_fp: str) -> dict[str, Any]:
    """Read a checkpoint and check that it belongs to this dataset and (unless None) this config.

    Only tensors and plain data are unpickled (`weights_only`), so a checkpoint or run directory from
    elsewhere (`--resume`, `evaluate.py --run`) cannot run code when it is loaded.
    """
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if any(message in str(err) for message in UNSAFE_CONTENT_MESSAGES):
            raise CheckpointError(f"{path}: refused: it holds Python objects besides tensors and plain data, which "
                                  "loading could run as code (only checkpoints scripts/train.py writes load)") from None
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(err).__name__})") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(err).__name__})") from None
    if not isinstance(state, dict) or "config_fingerprint" not in state:
        raise CheckpointError(f"{path}: not a checkpoint written by scripts/train.py")
    if config_fp is not None and state["config_fingerprint"] != config_fp:
        raise CheckpointError(f"{path}: checkpoint was written with a different config")
    if state["dataset_fingerprint"] != data_fp:
        raise CheckpointError(f"{path}: checkpoint was written for a different dataset")
    return state
