"""The pipeline engine: batches through the five stages (sample, fetch features, fetch memory, train,
update memory) under a scheduler that decides what overlaps and how stale a memory read may be. Threads and
timing live here and nowhere else."""
