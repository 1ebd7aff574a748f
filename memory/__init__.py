"""Versioned node-memory store shared by the pipeline's stages."""
from common.errors import CheckpointError
from memory.batch import MemoryBatch, MemoryUpdate
from memory.store import MemoryStore

__all__ = ["CheckpointError", "MemoryBatch", "MemoryStore", "MemoryUpdate"]
