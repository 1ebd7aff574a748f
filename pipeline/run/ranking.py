"""TGB's one-vs-many ranking with every destination of the stream as a candidate (`eval.ranking: all`).

Each evaluation event `(s, d, t)` ranks `d` against every destination, leaving out the other true
destinations of `s` at `t` (the filtered setting); ties count as the mean of the optimistic and the
pessimistic rank (`ranks_against_candidates`). A trained model scores the candidates of an evaluation
batch with the memory that batch reads, through the same stage functions, so a candidate is embedded at
the event's time from the same neighbours and memory as a negative of that event would be.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from graph.events import EventStream
from pipeline.stages.link_prediction import BatchContext, LinkPredictionStages, Scoring
from pipeline.run.evaluation import ranks_against_candidates

ROOTS_PER_CHUNK = 10_000  # candidate roots scored in one forward pass (bounds the memory a pass gathers)


def true_destinations(events: EventStream, src: np.ndarray, t: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """`(n, len(candidates))` mask of the candidates that are a true destination of `src[i]` at time `t[i]`
    in the stream (the destination itself included): what TGB's filtered ranking leaves out."""
    times, time_rank = np.unique(events.t, return_inverse=True)
    stride = len(times) + 1
    group = events.src.astype(np.int64) * stride + time_rank
    order = np.argsort(group, kind="stable")
    sorted_group = group[order]
    query = src.astype(np.int64) * stride + np.searchsorted(times, t)
    start, end = np.searchsorted(sorted_group, query, "left"), np.searchsorted(sorted_group, query, "right")
    counts = end - start
    rows = np.repeat(np.arange(len(src)), counts)
    events_hit = order[np.repeat(start, counts) + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)]
    columns = np.searchsorted(candidates, events.dst[events_hit])
    mask = np.zeros((len(src), len(candidates)), dtype=bool)
    mask[rows, columns] = True
    return mask


class CandidateRanker:
    """Called after an evaluation batch is scored (`Scoring.on_scored`), before its memory is
    written: scores each of the batch's sources against every candidate and keeps the filtered ranks.

    The candidates are scored in chunks, each as the negatives of the whole batch, so whatever the model
    computes per batch (the time memory is brought to under `memory.update_time: batch`, APAN's gap scale)
    is that of the batch, and a candidate gets the score it would get as a negative of its event.
    """

    def __init__(self, stages: LinkPredictionStages, events: EventStream, roots_per_chunk: int = ROOTS_PER_CHUNK):
        self.stages = stages
        self.events = events
        self.candidates = np.unique(events.dst)
        self.roots_per_chunk = roots_per_chunk
        self.ranks: list[np.ndarray] = []

    def scores(self, i: int, ctx: BatchContext) -> tuple[np.ndarray, np.ndarray]:
        """Scores of batch `i`'s positives `(B,)` and of its sources against every candidate `(B, C)`."""
        size = len(ctx.events)
        per_chunk = max(1, self.roots_per_chunk // size)
        pos, columns = None, []
        for start in range(0, len(self.candidates), per_chunk):
            group = self.candidates[start:start + per_chunk]
            scorer = dataclasses.replace(
                self.stages, batches=[ctx.events], num_neg=len(group), mitigation=None, step=Scoring(),
                negatives=lambda j, events, group=group: (np.repeat(group, len(events)), None),
                sample_seed=lambda j: self.stages.sample_seed(i))
            chunk = scorer.sample(0)
            scorer.fetch_features(0, chunk)
            scorer.fetch_memory(0, chunk, 0)
            scorer.train(0, chunk)
            pos = scorer.step.pos_scores[0]
            columns.append(scorer.step.neg_scores[0])
        return pos, np.hstack(columns)

    def __call__(self, i: int, ctx: BatchContext) -> None:
        pos, scores = self.scores(i, ctx)
        events = ctx.events
        excluded = true_destinations(self.events, self.events.src[events], self.events.t[events], self.candidates)
        self.ranks.append(ranks_against_candidates(pos, scores, excluded))

    def all_ranks(self) -> np.ndarray:
        """The ranks of every event scored so far, in order."""
        return np.concatenate(self.ranks) if self.ranks else np.empty(0)
