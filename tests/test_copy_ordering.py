"""The side-stream copy protocol the CUDA path relies on, checked on the CPU with a recording stand-in for
`CopyStream`: every host-to-device copy is issued inside `copying()`, each fetch records an event after
its copies, and the train stage waits for both events before the model reads anything."""
from __future__ import annotations

import contextlib

import torch
from torch import nn

import pipeline.stages.link_prediction as stages_module
from graph.synthetic import synthetic_events
from memory.store import MemoryBatch
from pipeline.run.config import validate_config
from pipeline.run.setup import build_setup, training_stages


class RecordingCopies:
    """`CopyStream`'s interface, logging what a CUDA stream would be asked to do."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.recorded = 0

    @contextlib.contextmanager
    def copying(self):
        self.log.append("copying begins")
        yield
        self.log.append("copying ends")

    def done(self) -> str:
        self.recorded += 1
        self.log.append(f"records event {self.recorded}")
        return f"event {self.recorded}"

    def wait(self, event: str | None) -> None:
        self.log.append(f"waits for {event}")


class LoggingModel(nn.Module):
    def __init__(self, model: nn.Module, log: list[str]) -> None:
        super().__init__()
        self.model, self.log = model, log

    def forward(self, inputs):
        self.log.append("model reads its inputs")
        return self.model(inputs)


def test_copies_happen_on_the_side_stream_and_training_waits_for_them(monkeypatch):
    cfg = validate_config({"memory": {"dim": 8, "dim_time": 8}, "embedding": {"dim_out": 8, "dim_time": 8},
                           "train": {"batch_size": 50}, "pipeline": {"mode": "sequential"}})
    events = synthetic_events(num_nodes=30, num_events=600, dim_edge_feat=4, dim_node_feat=3, seed=1)
    setup = build_setup(cfg, events, torch.device("cpu"), seed=0)
    stages = training_stages(setup, epoch=0)
    log: list[str] = []
    stages.copies = RecordingCopies(log)
    stages.model = LoggingModel(stages.model, log)
    to_device = stages_module.to_device
    monkeypatch.setattr(stages_module, "to_device", lambda tensor, device: (log.append("copies a tensor"),
                                                                            to_device(tensor, device))[1])
    memory_to = MemoryBatch.to
    monkeypatch.setattr(MemoryBatch, "to", lambda batch, *a, **k: (log.append("copies the memory"),
                                                                    memory_to(batch, *a, **k))[1])
    setup.store.reset()
    ctx = stages.sample(0)
    stages.fetch_features(0, ctx)
    stages.fetch_memory(0, ctx, 0)
    stages.train(0, ctx)

    features = log[:log.index("records event 1")]
    assert features[0] == "copying begins" and features[-1] == "copying ends"
    assert features.count("copies a tensor") == 3, "edge features, the events' features and node features"
    memory = log[len(features) + 1:log.index("records event 2")]
    assert memory == ["copying begins", "copies the memory", "copying ends"]
    assert log[log.index("records event 2") + 1:] == ["waits for event 1", "waits for event 2", "model reads its inputs"]
