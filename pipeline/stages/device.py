"""Device placement, decided in one place: which device trains, whether host buffers are pinned, and how
host tensors are copied over (non-blocking from pinned memory, so copies overlap compute on a GPU)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import dgl
import torch

from common.errors import UserError


# DGL's own CUDA 12.1 build for torch 2.2 (the `dgl` wheel on PyPI is CPU-only); environment-gpu.yml has it too
DGL_CUDA_INSTALL = "pip install dgl==2.1.0+cu121 -f https://data.dgl.ai/wheels/torch-2.2/cu121/repo.html"


def resolve_device(name: str) -> torch.device:
    """Parse `--device` ("cpu", "cuda", "cuda:1"); refuse, with what to install, a CUDA device that this
    machine does not have or that the installed DGL cannot use (the attention runs DGL kernels there)."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device: unknown device '{name}' (use cpu or cuda[:N])") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device: unsupported device type '{device.type}' (use cpu or cuda[:N])")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device: '{name}' requested but torch {torch.__version__} finds no CUDA device "
                            f"(CUDA build: {torch.version.cuda or 'none'}); on a GPU machine: conda env create -f "
                            f"environment-gpu.yml, or {DGL_CUDA_INSTALL}")
        if not dgl_runs_on(device):
            raise UserError(f"--device: '{name}' needs a CUDA build of DGL, but dgl {dgl.__version__} is CPU-only; "
                            f"install it with: {DGL_CUDA_INSTALL}")
    return device


def dgl_runs_on(device: torch.device) -> bool:
    """Whether the installed DGL can put a graph on `device` (PyPI's dgl wheel has no CUDA support)."""
    try:
        dgl.graph(([0], [0])).to(device)
    except dgl.DGLError:
        return False
    return True


def pins_host_memory(device: torch.device) -> bool:
    """Host tables are pinned only when they feed a CUDA device."""
    return device.type == "cuda"


def host_tensor(array, device: torch.device) -> torch.Tensor:
    """A host copy of `array` (numpy or tensor), pinned when it will be copied to `device`."""
    tensor = torch.as_tensor(array)
    return tensor.pin_memory() if pins_host_memory(device) else tensor


def to_device(tensor: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """Copy a host tensor to `device`; non-blocking when the source is pinned."""
    if tensor is None or tensor.device == device:
        return tensor
    if pins_host_memory(device) and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


class CopyStream:
    """Host-to-device copies on a side CUDA stream, so that they overlap training on the default stream.

    A fetch stage copies inside `copying()` and keeps the returned event; the train stage calls
    `wait(event)` before it reads the copied tensors. The train stage synchronises anyway (`loss.item()`),
    so a batch's device tensors are freed only after the kernels that read them have finished. On the
    CPU every method is a no-op.
    """

    def __init__(self, device: torch.device) -> None:
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    @contextlib.contextmanager
    def copying(self) -> Iterator[None]:
        """Run the enclosed copies on the side stream."""
        if self.stream is None:
            yield
            return
        with torch.cuda.stream(self.stream):
            yield

    def done(self) -> torch.cuda.Event | None:
        """An event that completes when the copies issued so far have landed."""
        if self.stream is None:
            return None
        event = torch.cuda.Event()
        event.record(self.stream)
        return event

    @staticmethod
    def wait(event: torch.cuda.Event | None) -> None:
        """Make the calling thread's current stream wait for `event` (without blocking the host)."""
        if event is not None:
            torch.cuda.current_stream().wait_event(event)
