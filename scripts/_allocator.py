"""The host allocator's policy for a training process: keep freed memory for reuse instead of returning it.

A training step allocates and frees the same large tensors every batch (per-edge keys and values of a
few MB each). glibc's malloc serves blocks above its mmap threshold with fresh `mmap` pages and unmaps
them on free, and trims freed memory off the top of each thread's heap, so later batches page-fault it
back in. Raising the mmap and trim thresholds keeps those pages in the heap, where the next batch reuses
them.

A heap kept this way holds on to its peak, and glibc gives threads heaps (arenas) of their own, up to 8
per core. The runner starts new stage threads every epoch, which may land on arenas not used before, so
with unlimited arenas the resident memory grows epoch after epoch; two arenas bound it to about two
peaks, and the stage threads make a few hundred allocations per batch, too few to queue on two locks.
The page faults and resident memory this saves are in docs/results.md ("Memory over a long run").
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

logger = logging.getLogger(__name__)

# mallopt(3) parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
# The largest mmap threshold glibc accepts on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX): blocks above it stay mmapped.
MAX_MMAP_THRESHOLD = 32 * 1024 * 1024
# Free heap memory above this is returned to the system.
TRIM_THRESHOLD = 1024 * 1024 * 1024
ARENAS = 2


def keep_freed_memory() -> bool:
    """Make glibc's malloc reuse freed blocks up to 32 MB instead of unmapping them, in at most two arenas;
    return whether it did (False where the C library is not glibc: there the allocator is left as it is).
    Call it before starting threads: arenas that already exist stay."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        logger.debug("no glibc mallopt; keeping the allocator's defaults")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = ((M_MMAP_THRESHOLD, MAX_MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_ARENA_MAX, ARENAS))
    return all([bool(mallopt(option, value)) for option, value in settings])
