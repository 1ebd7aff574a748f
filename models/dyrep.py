"""DyRep's memory updater (Trivedi et al. 2019, as in DyGLib), registered as "dyrep": an RNN cell over mails
that describe the event's other endpoint by its embedding, DyRep's aggregated neighbourhood
representation, instead of its memory. With `embedding: {module: attention}` the embedding is temporal
attention over the endpoint's sampled neighbours, so the mail of `u` for event `(u, v)` is
`[mem'_u || emb_v || e]`.
"""
from __future__ import annotations

from models.memory_updaters import UPDATERS, RecurrentUpdater, UpdaterSpec


@UPDATERS.register("dyrep")
class DyRepUpdater(RecurrentUpdater):
    """JODIE's RNN step on the latest mail, reading mails built from the partner's embedding."""

    mails_carry_embedding = True

    def __init__(self, spec: UpdaterSpec) -> None:
        super().__init__("rnn", spec.dim_memory, spec.dim_mail, spec.dim_time)
