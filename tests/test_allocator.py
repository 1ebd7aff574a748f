"""The allocator policy training processes set: freed blocks are kept for reuse, so a loop that allocates
and frees the same large tensors stops page-faulting once its heap has grown."""
import subprocess
import sys
import textwrap

import pytest

# 25 tensors of 4 MB allocated and freed per cycle, like a training step's per-edge tensors; prints the
# page faults (minor faults) of each cycle. Run in a fresh interpreter, so the heap starts as glibc's.
FAULTS_PER_CYCLE = textwrap.dedent("""
    import resource, sys, torch
    from pipeline.engine.allocator import keep_freed_memory
    print(keep_freed_memory())
    for _ in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        tensors = [torch.ones(1024, 1024) for _ in range(25)]
        del tensors
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_freed_blocks_are_reused_without_page_faults(scripts_dir):
    done = subprocess.run([sys.executable, "-c", FAULTS_PER_CYCLE], capture_output=True, text=True, timeout=120,
                          cwd=scripts_dir.parent, check=True)
    applied, *faults = done.stdout.split()
    assert applied == "True"
    # the first cycles grow the heap (about 25,000 faults); later cycles reuse it (glibc's defaults give
    # back part of it every cycle and fault it in again)
    assert int(faults[0]) > 10_000
    assert sum(int(count) for count in faults[3:]) < 100
