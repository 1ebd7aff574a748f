"""Hostile data, round three (issue 40): each ends in one line naming the file and its row, before training.

- A row with fewer (or more) fields than the header or first line is refused naming its line and the two
  counts, instead of a timestamp "found nan" the file does not hold (pandas fills a short row with NaN) or,
  for a first data row one field wider than the header, every column silently shifted by one.
- An empty or "NA" cell is quoted as the file writes it; blank lines before the header are skipped, as pandas
  skips them (a file that started with one was "file is empty" whatever followed).
- A timestamp beyond ±MAX_TIME (1e300, -1e300, times whose span overflows float32) is refused at load, naming
  the row and the limit, instead of "training diverged" after a float32 overflow warning.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.errors import DataError
from graph import loaders
from graph.loaders import MAX_TIME, iter_event_chunks, load_events

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
