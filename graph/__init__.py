"""Event streams: loading (TGL, DyGLib, JODIE, plain CSV), bundled datasets, synthetic streams,
the chronological split with inductive masking, and seeded negative sampling."""
from graph.datasets import BUILTIN_DATASETS, DEFAULT_DATASET, load_dataset
from graph.events import EventStream, repeated_pairs
from graph.loaders import FORMATS, detect_format, load_events
from graph.negatives import batch_seed, eval_negatives, sample_negatives
from graph.split import Split, chronological_split, split_periods
from graph.synthetic import synthetic_events

__all__ = [
    "BUILTIN_DATASETS",
    "DEFAULT_DATASET",
    "EventStream",
    "FORMATS",
    "Split",
    "batch_seed",
    "chronological_split",
    "detect_format",
    "eval_negatives",
    "load_dataset",
    "load_events",
    "repeated_pairs",
    "sample_negatives",
    "split_periods",
    "synthetic_events",
]
