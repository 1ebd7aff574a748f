"""`attention`: DGL's message-passing kernels against torch-only ones on the `compare` cases' batch
shapes (forward + backward of the attention's scores, edge softmax and weighted sum): what keeping DGL off
the training device (blocks on the host, plain tensors moved) would cost on the CPU.

    python scripts/benchmark.py attention --repeat 15 --out runs/bench_attention.json
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import dgl
import torch

from _cli import configure_process
from benchmarks.shared import add_parser, git_commit, library_versions
from benchmarks.compare import COMPARE_DIM

TABLE = ["roots", "edges", "dgl_ms", "torch_ms", "torch_over_dgl"]


def add_command(commands: argparse._SubParsersAction) -> None:
    """The `attention` subcommand and its options."""
    parser = add_parser(commands, "attention", "the attention's message passing: DGL kernels against torch ops",
                        __doc__)
    parser.add_argument("--roots", default="600,1800",
                        help="comma-separated roots per batch (600: UCI at batch 200; 1800: Wikipedia at batch 600)")
    parser.add_argument("--fanout", type=int, default=10, help="neighbours per root")
    parser.add_argument("--repeat", type=int, default=15, help="timed steps per implementation, alternating")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.set_defaults(run=run, table=TABLE)


def attention_with_dgl(block: dgl.DGLBlock, key: torch.Tensor, value: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """The model's message passing (models/attention.py): scores, edge softmax, weighted sum, DGL kernels."""
    scores = torch.nn.functional.leaky_relu(dgl.ops.e_dot_v(block, key, query), 0.2)
    return dgl.ops.copy_e_sum(block, dgl.nn.functional.edge_softmax(block, scores) * value)


def attention_with_torch(dst: torch.Tensor, num_dst: int, key: torch.Tensor, value: torch.Tensor,
                         query: torch.Tensor) -> torch.Tensor:
    """The same with torch gathers and scatters only: what device code without DGL would run."""
    scores = torch.nn.functional.leaky_relu((key * query.index_select(0, dst)).sum(-1, keepdim=True), 0.2)
    index = dst.view(-1, 1, 1).expand_as(scores)
    peak = torch.full((num_dst, *scores.shape[1:]), float("-inf")).scatter_reduce(0, index, scores, "amax")
    weights = torch.exp(scores - peak.index_select(0, dst))
    total = torch.zeros(num_dst, *scores.shape[1:]).index_add_(0, dst, weights)
    return torch.zeros(num_dst, *value.shape[1:]).index_add_(0, dst, weights / total.index_select(0, dst) * value)


def attention_case(roots: int, args: argparse.Namespace) -> dict:
    """Median forward + backward time of both implementations on one batch shape, alternating."""
    heads, head_dim = 2, COMPARE_DIM // 2
    edges = roots * args.fanout
    dst = torch.arange(roots).repeat_interleave(args.fanout)
    block = dgl.create_block((torch.arange(roots, roots + edges), dst), num_src_nodes=roots + edges,
                             num_dst_nodes=roots)
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(edges, heads, head_dim, generator=generator), torch.randn(edges, heads, head_dim, generator=generator),
              torch.randn(roots, heads, head_dim, generator=generator)]
    variants = {"dgl": lambda k, v, q: attention_with_dgl(block, k, v, q),
                "torch": lambda k, v, q: attention_with_torch(dst, roots, k, v, q)}

    def step(name: str) -> tuple[float, torch.Tensor]:
        key, value, query = (x.clone().requires_grad_() for x in inputs)
        started = time.perf_counter()
        out = variants[name](key, value, query)
        out.square().sum().backward()
        return time.perf_counter() - started, out.detach()

    outputs = [step(name)[1] for name in variants]
    if not torch.allclose(*outputs, atol=1e-4):
        raise RuntimeError("the torch-only attention does not compute what DGL's does")
    timed = {name: [] for name in variants}
    for _ in range(args.repeat):
        for name in variants:
            timed[name].append(step(name)[0])
    median = {name: 1000 * statistics.median(seconds) for name, seconds in timed.items()}
    return {"roots": roots, "edges": edges, "dgl_ms": median["dgl"], "torch_ms": median["torch"],
            "torch_over_dgl": median["torch"] / median["dgl"]}


def run(args: argparse.Namespace) -> dict:
    """DGL's message-passing kernels against torch-only ones on the compare cases' batch shapes: what
    keeping DGL off the training device (blocks on the host, plain tensors moved) would cost on the CPU."""
    plan = configure_process(args.threads)
    return {"benchmark": "attention", "dataset": "synthetic shapes", "command": " ".join(sys.argv),
            "commit": git_commit(), "torch_threads": plan.intra_op, "versions": library_versions(),
            "note": "forward + backward of scores, edge softmax and weighted sum (2 heads of 50); median of "
                    "alternating steps",
            "results": [attention_case(int(roots), args) for roots in args.roots.split(",")]}
