"""TGAT and DyRep composed from their shipped configs alone: both train end to end; TGAT keeps no memory
and still tells nodes apart through two attention layers, DyRep's mails carry the other endpoint's
embedding instead of its memory."""
import json
import math
from pathlib import Path

import pytest
import torch

from common.errors import UserError
from graph.synthetic import synthetic_events
from models import ModelInputs, build_model
from models.memory_updaters import MemoryRows
from models.write_back import event_order
from pipeline.stages.link_prediction import LinkPredictionStages
from pipeline.run.config import RunConfig, apply_overrides, load_config
from pipeline.run.setup import build_setup, training_stages
from pipeline.run.trainer import train
from small import small_overrides

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def events():
    return synthetic_events(num_nodes=60, num_events=3000, seed=3)


def small_config(name: str, **overrides) -> RunConfig:
    """The shipped `configs/<name>.yml` shrunk to seconds of training."""
    cfg = load_config(CONFIGS / f"{name}.yml")
    return apply_overrides(cfg, {**small_overrides(cfg, train={"lr": 0.005}), **overrides})


def batch_inputs(stages: LinkPredictionStages, batch: int) -> ModelInputs:
    """The model inputs of `batch`, after training on and writing back every batch before it."""
    for i in range(batch + 1):
        ctx = stages.sample(i)
        stages.fetch_features(i, ctx)
        stages.fetch_memory(i, ctx, staleness=0)
        if i == batch:
            return ModelInputs(blocks=ctx.blocks, memory=ctx.memory, edge_feat=ctx.edge_feat,
                               node_feat=ctx.node_feat, root_edge_feat=ctx.root_edge_feat,
                               num_pos=len(ctx.events), num_neg=stages.num_neg)
        stages.train(i, ctx)
        stages.update_memory(i, ctx)


@pytest.mark.parametrize("name", ["tgat", "dyrep"])
def test_shipped_model_trains_end_to_end(events, tmp_path, name):
    """Sequential mode: under the shipped mspipe mode the staleness bound follows the machine's stage
    times, and DyRep's two epochs at this learning rate ended at test AP 0.42 in one run, 0.83 in another."""
    results = train(small_config(name, **{"pipeline.mode": "sequential"}), events, tmp_path, CPU, seed=0,
                    show_progress=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["model"] == name == results["model"]
    for key in ("val_ap", "test_ap"):
        assert math.isfinite(saved[key]) and 0 <= saved[key] <= 1
    assert saved["test_ap"] > 0.6, f"{name} must beat random on a stream with repeated interactions"


def test_tgat_keeps_no_memory_and_reads_two_hops(events):
    setup = build_setup(small_config("tgat"), events, CPU, seed=0)
    assert setup.store is None and not setup.model.uses_memory
    inputs = batch_inputs(training_stages(setup, epoch=0), batch=5)
    assert len(inputs.blocks) == 2 and inputs.memory is None
    setup.model.eval()
    state = torch.zeros((inputs.num_input_nodes, 0))
    with torch.no_grad():
        embeddings = setup.model.embedding(state, inputs)
        distinct = torch.unique(embeddings.round(decimals=4), dim=0)
        _, into = inputs.blocks[0].edges()
        second_hop = into >= inputs.num_roots  # blocks[0]'s edges into the roots' neighbours
        inputs.blocks[0].edata["dt"] = torch.where(second_hop, inputs.blocks[0].edata["dt"] * 2,
                                                   inputs.blocks[0].edata["dt"])
        moved = setup.model.embedding(state, inputs)
    assert embeddings.shape == (inputs.num_roots, 16) and torch.isfinite(embeddings).all()
    assert len(distinct) > inputs.num_roots // 2, "without node features the neighbourhoods must tell nodes apart"
    assert second_hop.any() and not torch.allclose(moved, embeddings), "the roots must see their 2-hop edges"


def test_dyrep_mails_carry_the_partner_embedding(events):
    setup = build_setup(small_config("dyrep"), events, CPU, seed=0)
    model = setup.model
    inputs = batch_inputs(training_stages(setup, epoch=0), batch=5)
    model.eval()
    with torch.no_grad():
        _, _, update = model(inputs)
        new_mem = model.updater(MemoryRows.first(inputs.memory, inputs.blocks[0].srcdata["ts"],
                                                 inputs.num_input_nodes))
        embeddings = model.embedding(new_mem, inputs)
    num_pos, order = inputs.num_pos, event_order(inputs.num_pos, new_mem.device)

    def partner_of_each_root(rows: torch.Tensor) -> torch.Tensor:
        """`rows` of the positive roots `[src, dst]` swapped to `[dst, src]`, in event order."""
        return torch.cat([rows[num_pos:2 * num_pos], rows[:num_pos]])[order]

    own, partner = update.mail[:, :model.dim_memory], update.mail[:, model.dim_memory:]
    assert torch.equal(own, update.mem)
    torch.testing.assert_close(partner, partner_of_each_root(embeddings))
    memory_based = partner_of_each_root(new_mem)
    assert not torch.allclose(partner, memory_based, atol=1e-3), "a TGN-style mail would carry the memory"


def test_dyrep_refuses_embeddings_wider_than_the_memory():
    cfg = small_config("dyrep", **{"embedding.dim_out": 32})
    with pytest.raises(UserError, match="'embedding.dim_out' \\(32\\) must equal 'memory.dim' \\(16\\)"):
        build_model(cfg, dim_node_feat=0, dim_edge_feat=0)
