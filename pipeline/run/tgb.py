"""TGB's link-prediction protocol (`eval.protocol: tgb`) and its ranking of each positive against a fixed list
of negative destinations (`eval.ranking: tgb` reads TGB's evaluation-negative files; `eval.ranking: sampled`
draws the lists as TGB's generator mixes them).

TGB's split (tgb/linkproppred/dataset.py, `generate_splits`): `val_time, test_time = np.quantile(t, [0.70,
0.85])`; training is `t <= val_time`, validation `val_time < t <= test_time`, test `t > test_time`, and no node
is held out. TGB's negatives (tgb/linkproppred/negative_sampler.py) are a pickled dict, one file per split,
`{(src, dst, t): array of negative destinations}`, keyed by TGB's node ids and timestamps; a positive is ranked
against exactly the destinations its key lists, ties counting as the mean of the optimistic and pessimistic
rank (`ranks_against_candidates`, as tgb/linkproppred/evaluate.py).

A pickle is code: the files are read by `NegativesUnpickler`, which builds only the few types such a file
holds (a dict, tuples, numbers, numpy arrays and scalars) and refuses any other global before it is loaded.
"""
from __future__ import annotations

import dataclasses
import io
import pickle
from pathlib import Path

import numpy as np

from common.errors import PATH_CHARS, DataError, shorten
from graph.events import EventStream
from graph.loaders import open_regular_file, path_status
from graph.negatives import named_seed
from graph.split import Split
from pipeline.run.config import RunConfig
from pipeline.run.evaluation import ranks_against_candidates
from pipeline.run.negative_scores import score_in_chunks
from pipeline.run.ranking import ROOTS_PER_CHUNK, CandidateRanker
from pipeline.stages.link_prediction import BatchContext, LinkPredictionStages

HIST_RATIO = 0.5  # at most this share of a positive's negatives are historical (NegativeEdgeGenerator.hist_ratio)

ALLOWED_GLOBALS = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),  # an array: _reconstruct(ndarray, ...) then its dtype and bytes
    *((f"numpy.{core}.multiarray", name) for core in ("core", "_core") for name in ("_reconstruct", "scalar")),
    *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")),  # an array in pickle protocol 5
    ("_codecs", "encode"),  # bytes in pickle protocol 2 (a numpy scalar's or array's data)
})


@dataclasses.dataclass(frozen=True)
class RankingNegatives:
    """Each positive's negative destinations (stream node ids), `dst` `(n, K)`; `valid` `(n, K)` is False where
    a row with fewer than K negatives is padded (those columns are not ranked against)."""

    dst: np.ndarray
    valid: np.ndarray


class NegativesUnpickler(pickle.Unpickler):
    """Unpickler of TGB's evaluation-negative files: admits only `ALLOWED_GLOBALS` (numpy's array and
    scalar reconstruction; dicts, tuples, lists and numbers need none) and refuses every other global."""

    def __init__(self, file: io.BufferedIOBase, name: str) -> None:
        super().__init__(file)
        self.name = name

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in ALLOWED_GLOBALS:
            raise DataError(f"{self.name}: refused to load: the pickle asks for {shorten(f'{module}.{name}')}, which "
                            f"a TGB negatives file does not hold (it holds a dict of numpy arrays)")
        try:
            return super().find_class(module, name)
        except ImportError:  # numpy 2 renamed numpy.core to numpy._core; a file may name either
            _, package, rest = module.split(".", 2)  # numpy, core or _core, multiarray or numeric
            return super().find_class(f"numpy.{'core' if package == '_core' else '_core'}.{rest}", name)

    def persistent_load(self, pid: object) -> object:
        raise DataError(f"{self.name}: refused to load: the pickle asks for a persistent object, which a TGB "
                        f"negatives file does not hold")


def load_negatives_file(path: str | Path) -> dict:
    """The dict a TGB evaluation-negative file holds, read with `NegativesUnpickler`; anything else (a
    missing file, another pickle, a truncated one) is one `DataError` naming the file."""
    name = shorten(str(path), PATH_CHARS, keep_end=True)
    if path_status(Path(path)) is None:
        raise DataError(f"{name}: TGB negatives file not found")
    with open_regular_file(Path(path)) as file:
        try:
            table = NegativesUnpickler(file, name).load()
        except DataError:
            raise
        except Exception as err:  # a damaged pickle raises anything from UnpicklingError to MemoryError
            reason = shorten(f"{type(err).__name__}: {err}")
            raise DataError(f"{name}: not a readable TGB negatives pickle ({reason})") from None
    if not isinstance(table, dict):
        raise DataError(f"{name}: a TGB negatives file holds a dict {{(src, dst, t): negatives}}, this one a "
                        f"{type(table).__name__}")
    return table


def _number(value: object) -> float | None:
    """A key's or negative's value as a float when it is a real number (Python or numpy), else None."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    try:
        return float(value)
    except OverflowError:  # an integer past float's range is no node id or time of a stream
        return None


def _node(value: float | None) -> int | None:
    return int(value) if value is not None and np.isfinite(value) and value == int(value) else None


def file_negatives(path: str | Path, events: EventStream, indices: np.ndarray, split_name: str) -> RankingNegatives:
    """The negatives a TGB file lists for each event of a split (`indices`), in the stream's node ids.

    The file must match the split exactly: each key a `(src, dst, t)` event of the split (TGB's node ids: the
    stream's file ids, `events.node_ids`), each event of the split a key, each negative a node of the stream;
    the first mismatch is one `DataError` naming the file."""
    table = load_negatives_file(path)
    name = shorten(str(path), PATH_CHARS, keep_end=True)
    rows_of: dict[tuple[int, int, float], list[int]] = {}
    keys = zip(events.node_ids[events.src[indices]].tolist(), events.node_ids[events.dst[indices]].tolist(),
               events.t[indices].tolist())
    for row, key in enumerate(keys):
        rows_of.setdefault(key, []).append(row)
    hint = (f"the file does not match the {split_name} split of {events.origin} (eval.protocol tgb: the stream must "
            f"carry TGB's node ids and timestamps, and the file be that split's)")
    lists: dict[tuple[int, int, float], np.ndarray] = {}
    for number, (key, negatives) in enumerate(table.items(), 1):
        parts = [_number(part) for part in key] if isinstance(key, tuple) and len(key) == 3 else None
        if parts is None or None in parts or _node(parts[0]) is None or _node(parts[1]) is None:
            raise DataError(f"{name}: entry {number} has key {shorten(repr(key))}, not a (src, dst, t) triple of "
                            f"node ids and a time; {hint}")
        event = (_node(parts[0]), _node(parts[1]), parts[2])
        if event not in rows_of:
            raise DataError(f"{name}: entry {number}, (src, dst, t) = {_shown(event)}, is not an event of the "
                            f"{split_name} split; {hint}")
        lists[event] = _negative_nodes(negatives, events, name, number, event)
    missing = next((key for key in rows_of if key not in lists), None)
    if missing is not None:
        event = int(indices[rows_of[missing][0]]) + 1
        raise DataError(f"{name}: no entry for the {split_name} split's event (src, dst, t) = {_shown(missing)} "
                        f"(event {event} of the stream in time order; the file has {len(table)} entries for the "
                        f"split's {len(rows_of)} distinct events); {hint}")
    width = max((len(value) for value in lists.values()), default=0)
    dst = np.zeros((len(indices), width), dtype=np.int64)
    valid = np.zeros((len(indices), width), dtype=bool)
    for key, rows in rows_of.items():
        value = lists[key]
        dst[rows, :len(value)] = value
        valid[rows, :len(value)] = True
    return RankingNegatives(dst, valid)


def _shown(event: tuple[int, int, float]) -> str:
    src, dst, t = event
    return f"({src}, {dst}, {int(t) if t == int(t) else t})"


def _negative_nodes(negatives: object, events: EventStream, name: str, number: int,
                    event: tuple[int, int, float]) -> np.ndarray:
    """A key's negatives (TGB ids; numpy writes them as floats where its generator concatenated an empty
    float array) as the stream's node ids."""
    if isinstance(negatives, (list, tuple)) and all(_number(value) is not None for value in negatives):
        negatives = np.asarray(negatives, dtype=np.float64)
    if not isinstance(negatives, np.ndarray) or negatives.ndim != 1 or negatives.dtype.kind not in "iuf":
        raise DataError(f"{name}: entry {number}, {_shown(event)}, holds {shorten(type(negatives).__name__)}, not a "
                        f"list of node ids")
    ids = negatives.astype(np.float64)
    whole = np.isfinite(ids) & (ids == np.round(ids)) & (np.abs(ids) < 2.0**62)
    position = np.searchsorted(events.node_ids, np.where(whole, ids, -1).astype(np.int64))
    position = np.minimum(position, len(events.node_ids) - 1)
    known = whole & (events.node_ids[position] == ids)
    if not known.all():
        bad = ids[np.argmin(known)]
        shown = int(bad) if np.isfinite(bad) and bad == int(bad) else bad
        raise DataError(f"{name}: entry {number}, {_shown(event)}, lists node id {shown}, which is not a node of "
                        f"{events.origin} (eval.protocol tgb: the stream must carry TGB's node ids)")
    return position.astype(np.int64)


def sampled_negatives(events: EventStream, split: Split, indices: np.ndarray, split_name: str, num: int,
                      seed: int) -> RankingNegatives:
    """`num` negative destinations for each event of a split, mixed as TGB's `hist_rnd` generator mixes them
    (NegativeEdgeGenerator.generate_negative_samples_hist_rnd): up to `HIST_RATIO` of them drawn without
    replacement from the destinations the source met in training, the rest from every destination id between
    the smallest and the largest (`first_dst_id`..`last_dst_id`) that is neither one of those nor a destination
    of the same source at the same time in the split; when too few such destinations exist, all of them.
    Drawn with a generator seeded by (`seed`, the split), so the same seed gives the same lists."""
    rng = np.random.default_rng(named_seed(seed, split_name, "sampled"))
    n = events.num_nodes
    low, high = int(events.dst.min()), int(events.dst.max()) + 1
    seen = np.unique(events.src[split.train].astype(np.int64) * n + events.dst[split.train])
    seen_start = np.searchsorted(seen, np.arange(n + 1, dtype=np.int64) * n)
    src, dst, t = events.src[indices], events.dst[indices], events.t[indices]
    _, group = np.unique(np.stack([src.astype(np.float64), t]), axis=1, return_inverse=True)
    group = group.reshape(-1)
    order = np.argsort(group, kind="stable")
    group_start = np.searchsorted(group[order], np.arange(group.max(initial=-1) + 2))
    max_hist = int(num * HIST_RATIO)
    dst_out = np.zeros((len(indices), num), dtype=np.int64)
    valid = np.zeros((len(indices), num), dtype=bool)
    for row in range(len(indices)):
        g = group[row]
        same_time = np.unique(dst[order[group_start[g]:group_start[g + 1]]])
        history = seen[seen_start[src[row]]:seen_start[src[row] + 1]] % n
        past = np.setdiff1d(history, same_time, assume_unique=True)
        hist = rng.choice(past, min(max_hist, len(past)), replace=False)
        rnd = _draw_outside(rng, low, high, np.union1d(history, same_time), num - len(hist))
        drawn = np.concatenate([hist, rnd])
        dst_out[row, :len(drawn)] = drawn
        valid[row, :len(drawn)] = True
    return RankingNegatives(dst_out, valid)


def _draw_outside(rng: np.random.Generator, low: int, high: int, excluded: np.ndarray, size: int) -> np.ndarray:
    """`size` distinct ids drawn uniformly from `low..high-1` minus the sorted `excluded` (all of them, ascending,
    when fewer remain), by rejection while the ids are many, else from the remaining ids themselves."""
    excluded = excluded[(excluded >= low) & (excluded < high)]
    remaining = high - low - len(excluded)
    if size >= remaining:
        return np.setdiff1d(np.arange(low, high), excluded, assume_unique=True)
    if high - low <= 4 * (size + len(excluded)):
        return rng.choice(np.setdiff1d(np.arange(low, high), excluded, assume_unique=True), size, replace=False)
    picked = np.empty(0, np.int64)
    while len(picked) < size:
        ids = rng.integers(low, high, 2 * size)
        ids = ids[~np.isin(ids, excluded) & ~np.isin(ids, picked)]
        _, first = np.unique(ids, return_index=True)
        picked = np.concatenate([picked, ids[np.sort(first)]])
    return picked[:size]


def ranking_negatives(cfg: RunConfig, events: EventStream, split: Split, split_name: str,
                      indices: np.ndarray) -> RankingNegatives:
    """The negatives `eval.ranking` (`tgb` or `sampled`) ranks a split's events against."""
    if cfg.eval.ranking == "tgb":
        path = cfg.eval.val_negatives_file if split_name == "val" else cfg.eval.test_negatives_file
        return file_negatives(path, events, indices, split_name)
    return sampled_negatives(events, split, indices, split_name, cfg.eval.ranking_negatives, cfg.eval.ranking_seed)


class NegativesRanker:
    """Called after an evaluation batch is scored (`Scoring.on_scored`), as `CandidateRanker` is: ranks each
    event's destination against its own negatives (`RankingNegatives`, one row per event of the split, batch
    after batch, on one process), scored by `score_in_chunks` as negatives of the event's batch."""

    def __init__(self, stages: LinkPredictionStages, negatives: RankingNegatives,
                 roots_per_chunk: int = ROOTS_PER_CHUNK):
        self.stages = stages
        self.negatives = negatives
        self.first_row = np.cumsum([0] + [len(batch) for batch in stages.batches])
        self.roots_per_chunk = roots_per_chunk
        self.ranks: list[np.ndarray] = []

    def scores(self, i: int, ctx: BatchContext) -> tuple[np.ndarray, np.ndarray]:
        """Scores of batch `i`'s positives `(B,)` and of each event's negatives `(B, K)`."""
        dst = self.negatives.dst[self.first_row[i]:self.first_row[i + 1]]
        return score_in_chunks(self.stages, i, ctx, dst, self.roots_per_chunk)

    def __call__(self, i: int, ctx: BatchContext) -> None:
        pos, scores = self.scores(i, ctx)
        valid = self.negatives.valid[self.first_row[i]:self.first_row[i + 1]]
        self.ranks.append(ranks_against_candidates(pos, scores, ~valid))

    def all_ranks(self) -> np.ndarray:
        """The ranks of every event scored so far, in order."""
        return np.concatenate(self.ranks) if self.ranks else np.empty(0)


def make_ranker(cfg: RunConfig, events: EventStream, split: Split, split_name: str, indices: np.ndarray,
                stages: LinkPredictionStages) -> CandidateRanker | NegativesRanker:
    """The ranker `eval.ranking` asks for: every destination (`all`), or each event's own negatives."""
    if cfg.eval.ranking == "all":
        return CandidateRanker(stages, events)
    return NegativesRanker(stages, ranking_negatives(cfg, events, split, split_name, indices))


def check_ranking_files(cfg: RunConfig, events: EventStream, split: Split) -> None:
    """Read and match both of `eval.ranking: tgb`'s files before a run trains, so a file that does not fit the
    stream stops it at once rather than after training."""
    if cfg.eval.ranking == "tgb":
        for name, indices in (("val", split.val), ("test", split.test)):
            ranking_negatives(cfg, events, split, name, indices)
