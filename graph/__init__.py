"""Event streams: loading (TGL, DyGLib, JODIE, plain CSV), bundled datasets, synthetic streams,
the chronological split with inductive masking, and seeded negative sampling."""
from common.errors import DataError, UserError
from graph.datasets import BUILTIN_DATASETS, DEFAULT_DATASET, load_dataset
from graph.events import EventStream
from graph.loaders import FORMATS, detect_format, load_events
from graph.negatives import eval_negatives, negative_seed, sample_negatives
from graph.split import Split, chronological_split, split_periods
from graph.synthetic import synthetic_events

__all__ = [
    "BUILTIN_DATASETS",
    "DEFAULT_DATASET",
    "FORMATS",
    "DataError",
    "EventStream",
    "Split",
    "UserError",
    "chronological_split",
    "detect_format",
    "eval_negatives",
    "load_dataset",
    "load_events",
    "negative_seed",
    "sample_negatives",
    "split_periods",
    "synthetic_events",
]
