"""A toy memory updater, registered as "decay": each node's new memory is a learned blend of its old
memory and its latest mail, `mem' = a * mem + (1 - a) * tanh(W @ mail)` with `a = sigmoid(keep_logit)`.

The walk-through of docs/extending.md: importing this file (the config's `plugins` key does) registers
the updater, and `memory: {updater: decay}` selects it.
"""
import torch
from torch import Tensor, nn

from models.memory_updaters import UPDATERS, MemoryRows, MemoryUpdater, UpdaterSpec


@UPDATERS.register("decay")
class DecayUpdater(MemoryUpdater):
    """Exponential moving average of a node's projected mails, with a learned keep rate `a` in (0, 1)."""

    def __init__(self, spec: UpdaterSpec) -> None:
        super().__init__()
        self.mail_map = nn.Linear(spec.dim_mail, spec.dim_memory)
        self.keep_logit = nn.Parameter(torch.zeros(()))

    def update(self, rows: MemoryRows) -> Tensor:
        """New memory of nodes that all have mail: blend the stored memory with the most recent mail."""
        slot = (rows.mail_count - 1) % rows.mail.shape[1]
        latest = rows.mail[torch.arange(len(rows.mail), device=rows.mail.device), slot]
        keep = torch.sigmoid(self.keep_logit)
        return keep * rows.mem + (1 - keep) * torch.tanh(self.mail_map(latest))
