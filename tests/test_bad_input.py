"""Bad input gives one-line `DataError`s that name the file and the row/column, and the scripts turn any
`UserError` into `error: ...` on stderr with exit code 2 and no traceback."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common.errors import DataError, UserError
from graph import load_dataset, load_events

DYGLIB_HEADER = ",u,i,ts,label,idx\n"
DYGLIB_ROWS = "0,1,2,10.0,0,1\n1,2,3,20.0,0,2\n2,3,1,30.0,0,3\n"
TGL_ROWS = ",src,dst,time,ext_roll\n0,0,1,1.0,0\n1,1,2,2.0,1\n2,2,0,3.0,2\n"

# name, file name, file text, expected fragments of the message (besides the file name)
BAD_FILES = [
    ("empty file", "ml_x.csv", "", ["empty"]),
    ("header only", "ml_x.csv", DYGLIB_HEADER, ["no events"]),
    ("missing column", "ml_x.csv", ",u,i,label,idx\n0,1,2,0,1\n", ["missing column 'ts'"]),
    ("non-numeric time", "ml_x.csv", DYGLIB_HEADER + "0,1,2,10,0,1\n1,2,3,soon,0,2\n",
     ["data row 2", "column 4 ('ts')", "soon"]),
    ("NaN time", "events.csv", "1,2,5.0\n2,3,nan\n", ["data row 2", "column 3", "finite"]),
    ("inf time", "edges.csv", ",src,dst,time\n0,0,1,1.0\n1,1,2,2.0\n2,2,0,inf\n",
     ["data row 3", "column 4 ('time')", "finite"]),
    ("negative id", "wiki.txt", "1 2 0\n3 -4 1\n", ["data row 2", "column 2", "negative"]),
    ("non-numeric id", "ml_x.csv", DYGLIB_HEADER + "0,1,2,10,0,1\n1,2,3,20,0,2\n2,bob,3,30,0,3\n",
     ["data row 3", "column 2 ('u')", "bob"]),
    ("fractional id", "events.csv", "src,dst,t\n1.5,2,5\n", ["data row 1", "column 1 ('src')", "integer"]),
    ("bad ext_roll", "edges.csv", ",src,dst,time,ext_roll\n0,0,1,1.0,0\n1,1,2,2.0,7\n",
     ["data row 2", "column 5 ('ext_roll')", "0, 1 or 2"]),
    ("too few columns", "events.csv", "1,2\n3,4\n", ["at least 3 columns"]),
    ("ragged row", "events.csv", "1,2,5\n2,3,6\n3,4,7,8,9\n", ["line 3"]),
]


def _assert_one_line_naming(err: pytest.ExceptionInfo, path: Path, fragments: list[str]) -> None:
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize("case, filename, text, fragments", BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_bad_file_raises_data_error_naming_file_and_cell(tmp_path, case, filename, text, fragments):
    path = tmp_path / filename
    path.write_text(text)
    with pytest.raises(DataError) as err:
        load_events(path)
    _assert_one_line_naming(err, path, fragments)


def test_edge_feature_rows_must_match_events(tmp_path):
    (tmp_path / "edges.csv").write_text(TGL_ROWS)
    torch.save(torch.zeros(5, 2), tmp_path / "edge_features.pt")
    with pytest.raises(DataError) as err:
        load_events(tmp_path)
    _assert_one_line_naming(err, tmp_path / "edge_features.pt", ["5 rows", "expected 3"])


def test_dyglib_edge_features_allow_only_one_padding_row(tmp_path):
    (tmp_path / "ml_x.csv").write_text(DYGLIB_HEADER + DYGLIB_ROWS)
    np.save(tmp_path / "ml_x.npy", np.zeros((5, 2)))
    with pytest.raises(DataError) as err:
        load_events(tmp_path / "ml_x.csv")
    _assert_one_line_naming(err, tmp_path / "ml_x.npy", ["5 rows", "expected 3 or 4"])


def test_node_features_must_cover_every_node_id(tmp_path):
    (tmp_path / "ml_x.csv").write_text(DYGLIB_HEADER + DYGLIB_ROWS)
    np.save(tmp_path / "ml_x_node.npy", np.zeros((3, 2)))
    with pytest.raises(DataError) as err:
        load_events(tmp_path / "ml_x.csv")
    _assert_one_line_naming(err, tmp_path / "ml_x_node.npy", ["3 rows", "node id 3"])


def test_feature_file_that_is_not_a_tensor(tmp_path):
    (tmp_path / "edges.csv").write_text(TGL_ROWS)
    torch.save({"features": torch.zeros(3, 2)}, tmp_path / "edge_features.pt")
    with pytest.raises(DataError) as err:
        load_events(tmp_path)
    _assert_one_line_naming(err, tmp_path / "edge_features.pt", ["expected a torch tensor"])


def test_unknown_format(tmp_path):
    path = tmp_path / "ml_x.csv"
    path.write_text(DYGLIB_HEADER + DYGLIB_ROWS)
    with pytest.raises(DataError) as err:
        load_events(path, fmt="parquet")
    _assert_one_line_naming(err, path, ["unknown format 'parquet'", "tgl"])


def test_missing_path(tmp_path):
    with pytest.raises(DataError) as err:
        load_events(tmp_path / "nowhere.csv")
    _assert_one_line_naming(err, tmp_path / "nowhere.csv", ["no such file"])


def test_directory_without_edges_csv(tmp_path):
    with pytest.raises(DataError) as err:
        load_events(tmp_path)
    _assert_one_line_naming(err, tmp_path, ["edges.csv"])


def test_corrupt_compressed_file(tmp_path):
    path = tmp_path / "ml_x.csv.xz"
    path.write_bytes(b"not xz at all")
    with pytest.raises(DataError) as err:
        load_events(path)
    _assert_one_line_naming(err, path, ["cannot read"])


def test_unknown_dataset_name_lists_the_known_ones():
    with pytest.raises(DataError) as err:
        load_dataset("wikipeda")
    assert "wikipeda" in str(err.value)
    assert all(name in str(err.value) for name in ("uci", "wikipedia", "enron"))


# --- scripts: exit code 2 and a one-line message, no traceback ----------------------------------------

@pytest.fixture
def run_cli(scripts_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(scripts_dir))
    from _cli import run_cli
    return run_cli


def test_run_cli_turns_user_error_into_exit_2(run_cli, capsys):
    def main(argv):
        raise UserError("config.yml: unknown key 'lrr'")

    with pytest.raises(SystemExit) as stop:
        run_cli(main)
    assert stop.value.code == 2
    assert capsys.readouterr().err == "error: config.yml: unknown key 'lrr'\n"


def test_run_cli_exits_130_on_interrupt_and_passes_return_codes(run_cli):
    def interrupted(argv):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as stop:
        run_cli(interrupted)
    assert stop.value.code == 130
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda argv: 0)
    assert stop.value.code == 0


SCRIPT_CASES = [
    ("missing file", lambda tmp: ["--data", str(tmp / "nowhere.csv")]),
    ("unknown dataset", lambda tmp: ["--data", "wikipeda"]),
    ("bad timestamp", lambda tmp: ["--data", str(_write(tmp / "bad.csv", "1,2,5\n2,3,oops\n"))]),
]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("case, arguments", SCRIPT_CASES, ids=[case[0] for case in SCRIPT_CASES])
def test_prepare_data_reports_bad_input_in_one_line(tmp_path, scripts_dir, case, arguments):
    script = str(scripts_dir / "prepare_data.py")
    command = [sys.executable, script, *arguments(tmp_path), "--out", str(tmp_path / "out")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "out").exists()


def test_a_stream_too_short_for_the_split_stops_train_with_one_line(tmp_path, scripts_dir):
    data = _write(tmp_path / "tiny.csv", "1,2,5\n2,3,6\n3,1,7\n")
    command = [sys.executable, str(scripts_dir / "train.py"), "--data", str(data), "--epochs", "1",
               "--out", str(tmp_path / "run")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "3 events" in result.stderr and "at least one event" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
