"""`--device`: CPU as asked, and a CUDA device this machine or its DGL build cannot use refused in one line
that says what to install."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from common.errors import UserError
from pipeline.stages.device import DGL_CUDA_INSTALL, resolve_device


def test_cpu_and_unknown_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    with pytest.raises(UserError, match="unsupported device type 'meta'"):
        resolve_device("meta")


def test_cuda_without_a_cuda_device_says_what_to_install(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError) as err:
        resolve_device("cuda")
    message = str(err.value)
    assert "finds no CUDA device" in message and "environment-gpu.yml" in message and "\n" not in message


def test_cuda_with_a_cpu_only_dgl_names_the_dgl_install(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the installed dgl is PyPI's CPU-only build
    with pytest.raises(UserError) as err:
        resolve_device("cuda:0")
    assert "CPU-only" in str(err.value) and DGL_CUDA_INSTALL in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_train_script_refuses_cuda_before_training(tmp_path, scripts_dir):
    result = subprocess.run([sys.executable, str(scripts_dir / "train.py"), "--device", "cuda", "--out",
                             str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: --device: 'cuda' requested")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
