"""Versioned node-memory store shared by the pipeline's stages."""
from memory.store import CheckpointError, MemoryBatch, MemoryStore

__all__ = ["CheckpointError", "MemoryBatch", "MemoryStore"]
