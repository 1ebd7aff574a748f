"""The process settings the command-line entry points apply (scripts/_threads.py, scripts/_allocator.py):
torch's thread counts, and the allocator policy that keeps freed blocks for reuse, so a loop that
allocates and frees the same large tensors stops page-faulting once its heap has grown."""
import subprocess
import sys
import textwrap

import pytest
import torch
from _threads import ThreadPlan, configure_threads, thread_plan

# 25 tensors of 4 MB allocated and freed per cycle, like a training step's per-edge tensors; prints the
# page faults (minor faults) of each cycle. Run in a fresh interpreter, so the heap starts as glibc's.
FAULTS_PER_CYCLE = textwrap.dedent("""
    import resource, sys, torch
    from _allocator import keep_freed_memory
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
                          cwd=scripts_dir, check=True)
    applied, *faults = done.stdout.split()
    assert applied == "True"
    # the first cycles grow the heap (about 25,000 faults); later cycles reuse it (glibc's defaults give
    # back part of it every cycle and fault it in again)
    assert int(faults[0]) > 10_000
    assert sum(int(count) for count in faults[3:]) < 100


def test_thread_plan_gives_training_every_core():
    assert thread_plan(2) == ThreadPlan(intra_op=2, inter_op=1)
    assert thread_plan(16).intra_op == 16
    assert thread_plan(0).intra_op == 1


def test_configure_threads_applies_the_plan_to_torch():
    current = torch.get_num_threads()
    assert configure_threads(current) == thread_plan(current)
    assert torch.get_num_threads() == current
