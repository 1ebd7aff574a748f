"""Device placement, decided in one place: which device trains, whether host buffers are pinned, and how
host tensors are copied over (non-blocking from pinned memory, so copies overlap compute on a GPU)."""
from __future__ import annotations

import torch

from graph.errors import UserError


def resolve_device(name: str) -> torch.device:
    """Parse `--device` ("cpu", "cuda", "cuda:1"); refuse a CUDA device this machine does not have."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device: unknown device '{name}' (use cpu or cuda[:N])") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device: '{name}' requested but CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device: unsupported device type '{device.type}' (use cpu or cuda[:N])")
    return device


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
