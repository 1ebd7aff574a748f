"""The link-prediction stages that the engine runs: sample, fetch features, fetch memory, train and update
memory for a memory-based temporal GNN, the staleness mitigation applied at memory fetch, and where tensors
live (device placement, decided in one place)."""
import common  # noqa: F401  (selects DGL's backend before dgl loads)
