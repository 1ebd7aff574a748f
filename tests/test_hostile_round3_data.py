"""Hostile data, round three (issue 40): each ends in one line naming the file and its row, before training.

- A row with fewer (or more) fields than the header or first line is refused naming its line and the two
  counts, instead of a timestamp "found nan" the file does not hold (pandas fills a short row with NaN) or,
  for a first data row one field wider than the header, every column silently shifted by one.
- An empty or "NA" cell is quoted as the file writes it; blank lines before the header are skipped, as pandas
  skips them (a file that started with one was "file is empty" whatever followed).
- A timestamp beyond ±MAX_TIME (1e300, -1e300, times whose span overflows float32) is refused at load, naming
  the row and the limit, instead of "training diverged" after a float32 overflow warning.
- Historical or inductive negatives on a stream whose (source, destination) pairs all fall within one
  evaluation batch (one node; one source and one destination) are a data error naming the file and the
  strategy, as DyGLib's sampler has no fallback for it, instead of numpy's "a cannot be empty" traceback.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.errors import DataError
from graph.events import EventStream
from graph import loaders
from graph.loaders import MAX_TIME, iter_event_chunks, load_events
from graph.negatives import batch_without_negatives, edge_negatives
from pipeline.run.config import RunConfig, validate_config
from pipeline.run.evaluation import require_negative_pairs

MAX_MESSAGE = 400


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode())
    return path


def load_error(path: Path, chunk_rows: int = 1) -> str:
    """The message loading `path` fails with, whole and chunk by chunk (both must fail alike)."""
    with pytest.raises(DataError) as whole:
        load_events(path)
    with pytest.raises(DataError) as chunked, iter_event_chunks(path, chunk_rows=chunk_rows) as chunks:
        for _ in chunks:
            pass
    message = str(whole.value)
    assert str(chunked.value) == message
    assert "\n" not in message and len(message) < MAX_MESSAGE and message.startswith(str(path)), message
    return message


# --- rows of the wrong width ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, text, expected", [
    ("short.csv", "src,dst,t\n1,2,3\n2,3\n3,4,5\n", "line 3 (data row 2) has 2 columns where the header has 3"),
    ("last.csv", "src,dst,t\n1,2,3\n2,3,4\n3,4", "line 4 (data row 3) has 2 columns where the header has 3"),
    ("crlf.csv", "src,dst,t\r\n1,2,3\r\n\r\n2,3\r\n", "line 4 (data row 2) has 2 columns where the header has 3"),
    ("cr.csv", "src,dst,t\r1,2,3\r2\r", "line 3 (data row 2) has 1 column where the header has 3"),
    ("bare.csv", "1,2,3\n2,3\n", "line 2 (data row 2) has 2 columns where line 1 has 3"),
    ("ml_dy.csv", ",u,i,ts,label,idx\n0,1,2,3.0,0,1\n1,2,3,4.0\n",  # short only in columns never read
     "line 3 (data row 2) has 4 columns where the header has 6"),
    ("spaces.txt", "1 2 3\n  2 3 4  \n\n3 4\n", "line 4 (data row 3) has 2 columns where line 1 has 3"),
    ("wide_first.csv", "src,dst,t\n1,2,3,9\n2,3,4\n", "line 2 (data row 1) has 4 columns where the header has 3"),
    ("wide_later.csv", "src,dst,t\n1,2,3\n2,3,4,7\n", "line 3 (data row 2) has 4 columns where the header has 3"),
])
def test_a_row_of_another_width_names_its_line_and_both_counts(tmp_path, name, text, expected):
    message = load_error(write(tmp_path / name, text))
    assert expected in message and "nan" not in message, message


def test_a_first_data_row_wider_than_the_header_no_longer_shifts_the_columns(tmp_path):
    """Before: pandas took the first column as the index, so src read 2, 3 and t read 9 then 'found nan'."""
    message = load_error(write(tmp_path / "events.csv", "src,dst,t\n1,2,3,9\n2,3,4,9\n"))
    assert "line 2 (data row 1) has 4 columns" in message


def test_blank_lines_and_line_ends_of_every_kind_still_load(tmp_path):
    for name, text in {
        "blank.csv": "src,dst,t\n1,2,3\n\n  \n\t\n2,3,4\n3,4,5\n",
        "crlf.csv": "src,dst,t\r\n1,2,3\r\n2,3,4\r\n3,4,5",
        "spaces.txt": "  1 2 3\n2\t3 4 \n\n \n3 4 5",
    }.items():
        events = load_events(write(tmp_path / name, text))
        assert events.t.tolist() == [3.0, 4.0, 5.0], name
        with iter_event_chunks(tmp_path / name, chunk_rows=1) as chunks:
            assert sum(len(chunk.t) for chunk in chunks) == 3


def test_a_short_row_after_many_reads_names_its_line(tmp_path):
    """A file of several of the parser's reads (256 KiB each) with its short row at the end."""
    rows = "".join(f"{i % 97},{i % 89},{float(i)}\r\n" for i in range(120_000))
    message = load_error(write(tmp_path / "long.csv", "src,dst,t\r\n" + rows + "5,6\r\n"), chunk_rows=50_000)
    assert "line 120,002 (data row 120,001) has 2 columns" in message


@pytest.mark.parametrize("text, sep, header, expected", [
    (b"src,dst,t\r\n1,2,3\r\n\r\n \t\r\n2,3,4\r5,6\n7,8,9\n", ",", True, "line 6 (data row 3) has 2 columns"),
    (b"1 2 3\n\t4  5 6 \r\n\n7 8", r"\s+", False, "line 4 (data row 3) has 2 columns where line 1 has 3"),
])
def test_rows_are_checked_wherever_the_reads_split_them(text, sep, header, expected):
    """Fed in two reads split at every byte (a CR LF pair, a field or a blank line cut in two), the same line."""
    for cut in range(len(text) + 1):
        widths = loaders._RowWidths(Path("x.csv"), text.splitlines()[0].decode(), sep, header)
        with pytest.raises(DataError) as err:
            for piece in (text[:cut], text[cut:], b""):
                widths.feed(piece)
        assert expected in str(err.value), (cut, str(err.value))


def test_blank_lines_before_the_header_are_skipped_not_an_empty_file(tmp_path):
    """Before: a file starting with a blank line was "file is empty" whatever followed (pandas skips them)."""
    events = load_events(write(tmp_path / "events.csv", "\n \t\r\n\rsrc,dst,t\n1,2,3\n2,3,4\n"))
    assert events.t.tolist() == [3.0, 4.0]
    assert load_events(write(tmp_path / "events.txt", "\n\n1 2 3\n")).t.tolist() == [3.0]
    message = load_error(write(tmp_path / "short.txt", "\r\n\r\n1 2 3\n4 5\n"))
    assert "line 4 (data row 2) has 2 columns where line 3 has 3" in message
    many = write(tmp_path / "many.csv", "\n" * 3_000_000 + "1,2,3\n")  # more blank lines than one read holds
    assert load_events(many).num_events == 1


@pytest.mark.parametrize("text, expected", [
    ("", "file is empty (no header and no events)"),
    ("\n \n\t\r\n", "file is empty (no header and no events)"),
    ("src,dst,t\n", "no events (the file has a header but no data rows)"),
    ("src,dst,t\n\n  \n", "no events (the file has a header but no data rows)"),
])
def test_a_file_without_events_says_so(tmp_path, text, expected):
    assert expected in load_error(write(tmp_path / "events.csv", text))


@pytest.mark.parametrize("cell, shown", [("", "''"), ("NA", "'NA'"), ("null", "'null'")])
def test_an_empty_or_na_cell_is_quoted_as_written(tmp_path, cell, shown):
    message = load_error(write(tmp_path / "events.csv", f"src,dst,t\n1,2,3\n2,3,{cell}\n"))
    assert f"line 3 (data row 2), column 3 ('t'): timestamp is not a finite number (found {shown})" in message


# --- times the model cannot encode ------------------------------------------------------------------------

@pytest.mark.parametrize("time", ["1e300", "-1e300", "3e38", "-2e30", "1.0000001e30"])
def test_a_time_beyond_the_limit_is_refused_naming_its_row(tmp_path, time):
    message = load_error(write(tmp_path / "events.csv", f"src,dst,t\n1,2,3\n2,3,4\n3,4,{time}\n5,6,7\n"))
    assert "line 4 (data row 3), column 3 ('t'): timestamp is out of range" in message
    assert "±1e30" in message and "float32" in message, message


def test_a_span_that_overflows_float32_is_refused(tmp_path):
    """-3e38 and 3e38 each fit a float32, their difference (6e38) does not."""
    message = load_error(write(tmp_path / "events.csv", "src,dst,t\n1,2,-3e38\n2,3,3e38\n"))
    assert "line 2 (data row 1)" in message and "out of range" in message


def test_times_up_to_the_limit_load(tmp_path):
    events = load_events(write(tmp_path / "events.csv", f"src,dst,t\n1,2,{-MAX_TIME!r}\n2,3,0\n3,4,{MAX_TIME!r}\n"))
    assert events.t.tolist() == [-MAX_TIME, 0.0, MAX_TIME]
    assert np.isfinite(np.float32(events.t[-1] - events.t[0]))


def test_train_refuses_a_huge_time_in_one_line(train_cli, tmp_path):
    rows = "".join(f"{i % 7},{7 + i % 5},{float(i)}\n" for i in range(60))
    data = write(tmp_path / "events.csv", "src,dst,t\n" + rows.replace(",30.0\n", ",1e300\n"))
    code, _, err = train_cli("--data", str(data), "--epochs", "1", "--out", str(tmp_path / "run"), "--no-progress")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"error: {data}: line 32 (data row 31), column 3 ('t'): timestamp is out of range" in err


# --- negatives on a stream of very few nodes -------------------------------------------------------------

def stream(src: list[int], dst: list[int]) -> EventStream:
    nodes = int(max(max(src), max(dst))) + 1
    return EventStream(name="tiny", src=np.array(src), dst=np.array(dst), t=np.arange(len(src), dtype=float),
                       num_nodes=nodes, node_ids=np.arange(nodes), source="/data/tiny.csv")


def test_a_batch_that_holds_every_pair_is_found():
    batches = [np.arange(0, 4), np.arange(4, 8)]
    assert batch_without_negatives(np.zeros(8, int), np.zeros(8, int), 1, batches) == 0  # one node
    assert batch_without_negatives(np.zeros(8, int), np.ones(8, int), 2, batches) == 0  # one source, one destination
    alternating = np.arange(8) % 2
    assert batch_without_negatives(alternating, 1 - alternating, 2, batches) is None  # (0, 0) and (1, 1) are left
    two_sources = np.array([0, 0, 0, 0, 0, 1, 0, 0])
    assert batch_without_negatives(two_sources, np.full(8, 5), 6, batches) == 1  # only batch 2 holds (1, 5)
    assert batch_without_negatives(np.arange(8), np.arange(8), 8, batches) is None  # 8 sources: more than a batch


def test_edge_negatives_draw_where_a_pair_is_left():
    """The degenerate streams that still have a pair outside each batch: every negative is a real pair
    outside its batch (self-loops included), every destination already seen (inductive has nothing new)."""
    alternating = np.arange(40) % 2
    for strategy in ("historical", "inductive"):
        src, dst = edge_negatives(strategy, alternating, 1 - alternating, np.arange(40.0),
                                  [np.arange(i, i + 10) for i in range(0, 40, 10)], observed_until=20.0, seed=0)
        assert len(src) == 40 and set(zip(src.tolist(), dst.tolist())) <= {(0, 0), (1, 1), (0, 1), (1, 0)}


@pytest.mark.parametrize("src, dst, counts", [
    ([0] * 60, [0] * 60, "1 source and 1 destination make 1 pair"),
    ([0] * 60, [1] * 60, "1 source and 1 destination make 1 pair"),
    ([i % 2 for i in range(60)], [5] * 60, "2 sources and 1 destination make 2 pairs"),
])
@pytest.mark.parametrize("strategy", ["historical", "inductive"])
def test_negatives_without_a_pair_to_draw_are_a_data_error(src, dst, counts, strategy):
    cfg = validate_config({"model": "edgebank", "eval": {"negatives": ["random", strategy]}}, "test")
    with pytest.raises(DataError) as err:
        require_negative_pairs(cfg, stream(src, dst), {"val": np.arange(40, 50), "test": np.arange(50, 60)})
    message = str(err.value)
    assert message.startswith(f"/data/tiny.csv: {strategy} negatives (eval.negatives) need a (source, destination) pair")
    assert counts in message and "val batch 1" in message and "eval.negatives: [random]" in message
    require_negative_pairs(RunConfig(), stream(src, dst), {"val": np.arange(40, 50)})  # random only: nothing to check


def one_node_file(folder: Path) -> Path:
    return write(folder / "one_node.csv", "src,dst,t\n" + "".join(f"0,0,{i}\n" for i in range(200)))


@pytest.mark.parametrize("config, extra", [
    ("configs/edgebank.yml", []),
    ("configs/tgn.yml", ["--set", "eval.negatives=[random,historical]"]),
    ("configs/tgn.yml", ["--set", "eval.negatives=[random,inductive]", "--set", "eval.protocol=dyglib"]),
])
def test_train_refuses_historical_negatives_on_one_node_in_one_line(train_cli, tmp_path, config, extra):
    data = one_node_file(tmp_path)
    root = Path(__file__).resolve().parents[1]
    code, _, err = train_cli("--config", str(root / config), "--data", str(data), "--epochs", "1",
                             "--out", str(tmp_path / "run"), "--no-progress", "--threads", "1", *extra)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: {data}: ") and "negatives (eval.negatives) need a (source, destination) pair" in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()  # refused before anything was trained


def test_random_negatives_on_one_node_still_run(train_cli, tmp_path):
    data = one_node_file(tmp_path)
    root = Path(__file__).resolve().parents[1]
    code, _, err = train_cli("--config", str(root / "configs/edgebank.yml"), "--data", str(data),
                             "--out", str(tmp_path / "run"), "--no-progress", "--set", "eval.negatives=[random]",
                             "--set", "eval.ranking=none")
    assert code == 0, err
