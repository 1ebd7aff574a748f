"""Training runs as a pipeline, in three parts that import one way (`run` -> `stages` -> `engine`):

- `pipeline.engine`: a generic stage engine that knows nothing of temporal GNNs: the runner that moves
  batches through five stages in threads, the schedulers that decide what overlaps and how stale a read
  may be, and the stage-time profiler;
- `pipeline.stages`: what each stage does for memory-based link prediction (sample, fetch features, fetch
  memory, train, update memory), staleness mitigation and device placement;
- `pipeline.run`: what builds a run from a config and drives it (config and plugins, setup, the world a
  process runs in, epochs, evaluation, checkpoints, logs and timeline, baselines, data-parallel runs).
"""
