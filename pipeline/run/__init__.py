"""A training run: the config and its plugins, the run's objects (`setup`), epochs of the engine, evaluation,
checkpoints, TensorBoard logs and results, baselines that need no training, and data-parallel runs."""
