"""Versioned node-memory store shared by the pipeline's stages."""
from common.errors import CheckpointError
from memory.store import MemoryBatch, MemoryStore

__all__ = ["CheckpointError", "MemoryBatch", "MemoryStore"]
