"""A batch's memory write-back (TGN semantics, as in TGL): new memory of the positive roots and the mails
built from it, delivered to the roots themselves and, for APAN, to their sampled neighbours."""
from __future__ import annotations

import dgl
import torch
from torch import Tensor

from memory.batch import MemoryUpdate


def event_order(num_pos: int, device: torch.device) -> Tensor:
    """Positions of the roots `[src (B), dst (B)]` in event order `[src_0, dst_0, src_1, dst_1, ...]`."""
    index = torch.arange(num_pos, device=device)
    return torch.stack([index, index + num_pos], dim=1).flatten()


def endpoint_mails(new_mem: Tensor, edge_feat: Tensor, partner: Tensor | None = None) -> Tensor:
    """Mails of the roots `[src (B), dst (B)]`: `[mem'_src || p_dst || e]` and `[mem'_dst || p_src || e]`.

    `p` describes the event's other endpoint: its new memory by default, its embedding for DyRep.
    """
    mem_src, mem_dst = new_mem.chunk(2)
    partner_src, partner_dst = (new_mem if partner is None else partner).chunk(2)
    return torch.cat([
        torch.cat([mem_src, partner_dst, edge_feat], dim=1),
        torch.cat([mem_dst, partner_src, edge_feat], dim=1),
    ])


def neighbour_deliveries(block: dgl.DGLBlock, num_targets: int) -> tuple[Tensor, Tensor]:
    """`(neighbour ids, root index)` for every sampled edge of the first `num_targets` roots of `block`."""
    src, dst = block.edges()
    keep = dst < num_targets
    return block.srcdata["ID"][src[keep].long()], dst[keep].long()


def memory_update(new_mem: Tensor, roots: Tensor, root_ts: Tensor, edge_feat: Tensor,
                  deliveries: tuple[Tensor, Tensor] | None = None, partner: Tensor | None = None) -> MemoryUpdate:
    """The detached write-back of the positive roots `[src (B), dst (B)]` at their event times.

    Each root gets its new memory and its own mail; with `deliveries` (APAN), each listed neighbour also
    gets the mail of its root. Mails are ordered by time (stable, a root's own mail after deliveries of
    the same time), so under the store's "last occurrence wins" a node keeps its latest mail. `partner`
    (the roots' embeddings, for DyRep) replaces the new memory as the mail's other-endpoint part.
    """
    new_mem = new_mem.detach()
    order = event_order(len(roots) // 2, roots.device)
    mails = endpoint_mails(new_mem, edge_feat.detach(), None if partner is None else partner.detach())
    nodes, mem_ts, own_mail = roots[order], root_ts[order], mails[order]
    mail_nodes, mail, mail_ts = nodes, own_mail, mem_ts
    if deliveries is not None:
        neighbours, root_index = deliveries
        mail_nodes = torch.cat([neighbours, nodes])
        mail = torch.cat([mails[root_index], own_mail])
        mail_ts = torch.cat([root_ts[root_index], mem_ts])
        chronological = torch.sort(mail_ts, stable=True).indices
        mail_nodes, mail, mail_ts = mail_nodes[chronological], mail[chronological], mail_ts[chronological]
    return MemoryUpdate(nodes=nodes, mem=new_mem[order], mem_ts=mem_ts, mail_nodes=mail_nodes, mail=mail,
                        mail_ts=mail_ts)
