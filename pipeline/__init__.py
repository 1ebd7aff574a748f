"""Training runs as a pipeline, in two parts that import one way (`run` -> `engine`):

- `pipeline.engine`: what runs batches through the five stages under a scheduler (the runner and
  its threads, the schedulers, stage timing, the stage functions, device placement, staleness mitigation);
- `pipeline.run`: what builds a run from a config and drives it (config and plugins, setup, epochs,
  evaluation, checkpoints, logs and timeline, baselines without training, data-parallel runs).
"""
