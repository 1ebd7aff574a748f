"""Scores of one evaluation batch against negatives of its own choosing, as a ranking needs them: each
event's negatives `(B, K)` (a list per event, or `np.broadcast_to(candidates, (B, C))` for candidates
shared by every event) are scored in chunks of columns, each chunk as the negatives of the whole batch
through the batch's stage functions, so whatever the model computes per batch is that of the batch and a
negative gets the score it would get as a negative of its event."""
from __future__ import annotations

import dataclasses

import numpy as np

from pipeline.stages.link_prediction import BatchContext, LinkPredictionStages, Scoring


def score_in_chunks(stages: LinkPredictionStages, i: int, ctx: BatchContext, negatives: np.ndarray,
                    roots_per_chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores of batch `i`'s positives `(B,)` and of `negatives` `(B, K)` (stream node ids), at most about
    `roots_per_chunk` negative roots per forward pass; called before the batch's memory is written. With no
    column, the positives' scores are those the batch's own pass kept."""
    per_chunk = max(1, roots_per_chunk // len(ctx.events))
    pos, columns = stages.step.pos_scores[-1], [np.empty((len(negatives), 0))]
    for start in range(0, negatives.shape[1], per_chunk):
        group = negatives[:, start:start + per_chunk]
        scorer = dataclasses.replace(
            stages, batches=[ctx.events], num_neg=group.shape[1], mitigation=None, step=Scoring(),
            negatives=lambda j, events, group=group: (group.T.reshape(-1), None),
            sample_seed=lambda j: stages.sample_seed(i))
        chunk = scorer.sample(0)
        scorer.fetch_features(0, chunk)
        scorer.fetch_memory(0, chunk, 0)
        scorer.train(0, chunk)
        pos = scorer.step.pos_scores[0]
        columns.append(scorer.step.neg_scores[0])
    return pos, np.hstack(columns)
