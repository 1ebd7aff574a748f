"""Hostile data files and options (issue 29, round two): reads are bounded and single-pass.

- A FIFO or device given as data (`--data /dev/zero`, a named pipe) is refused in one line before it is
  read, so nothing hangs or fills memory.
- Each events file is opened and read once: format detection looks at the stream the parser reads.
- A line longer than MAX_LINE_BYTES, or a first line with more than MAX_COLUMNS fields, is one line naming
  the file and the line, however large the file is; real files (172 feature columns, the bundled data) load.
- `--columns` naming one column for two roles is a user error naming the option and the column.
- A pipeline log with an unknown stage (or anything else that is not a log) is one `error:` line from
  scripts/plot_timeline.py, exit 2, and no half-written image or temporary file is left.
Error messages never hold a whole value read from a file or an option.
"""
from __future__ import annotations

import gzip
import importlib
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from common.errors import DataError, UserError
from graph import loaders
from graph.datasets import BUILTIN_DATASETS, load_dataset
from graph.loaders import MAX_COLUMNS, MAX_LINE_BYTES, ColumnChoice, load_events, parse_columns
from pipeline.engine.profiler import STAGES
from pipeline.engine.runner import StageEvent
from pipeline.run.timeline import save_figure, timeline_figure

pytestmark = pytest.mark.faults

MAX_MESSAGE = 400  # an error line about a hostile input stays short, whatever the input holds
ROWS = "".join(f"{i % 7},{7 + i % 5},{float(i)}\n" for i in range(40))


def assert_short_error(err: pytest.ExceptionInfo, *fragments: str) -> str:
    message = str(err.value)
    assert "\n" not in message and len(message) < MAX_MESSAGE, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def load_within(seconds: float, path: Path, **kwargs) -> BaseException | None:
    """Load `path` in a thread; fail if it does not finish in time (it hung), return what it raised."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            load_events(path, **kwargs)
            outcome.append(None)
        except BaseException as err:  # noqa: BLE001  (handed to the test)
            outcome.append(err)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"loading {path} did not finish within {seconds} s"
    return outcome[0]


# --- FIFOs and devices ------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null", "/dev/urandom"])
def test_a_device_is_refused_before_it_is_read(device):
    if not Path(device).exists():
        pytest.skip(f"{device} not present")
    err = load_within(10, Path(device))
    assert isinstance(err, DataError), err
    assert str(err).startswith(f"{device}: is a character device, not a regular file")


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "events.csv"
    os.mkfifo(fifo)
    err = load_within(10, fifo)
    assert isinstance(err, DataError) and "is a FIFO (named pipe), not a regular file" in str(err), err


def test_a_fifo_named_edges_csv_in_a_tgl_directory_is_refused(tmp_path):
    os.mkfifo(tmp_path / "edges.csv")
    err = load_within(10, tmp_path)
    assert isinstance(err, DataError) and str(err).startswith(f"{tmp_path / 'edges.csv'}: is a FIFO"), err


def test_a_symlink_to_a_device_is_refused(tmp_path):
    link = tmp_path / "ml_x.csv"
    link.symlink_to("/dev/zero")
    err = load_within(10, link)
    assert isinstance(err, DataError) and "character device" in str(err), err


def test_a_fifo_as_a_feature_file_is_refused(tmp_path):
    (tmp_path / "edges.csv").write_text(",src,dst,time\n0,0,1,1.0\n1,1,2,2.0\n")
    os.mkfifo(tmp_path / "edge_features.pt")
    err = load_within(10, tmp_path)
    assert isinstance(err, DataError) and "edge_features.pt: is a FIFO" in str(err), err


def test_a_path_too_long_for_the_system_is_one_short_line():
    with pytest.raises(DataError) as err:
        load_dataset("x" * 5000)
    assert_short_error(err, "cannot read")


# --- read once --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, fmt, columns", [
    ("events.csv", None, None), ("events.csv.gz", None, None), ("events.csv", "csv", None),
    ("events.csv", None, ColumnChoice(0, 1, 2)), ("events.txt", None, None),
])
def test_each_file_is_opened_once(tmp_path, monkeypatch, name, fmt, columns):
    text = ROWS.replace(",", " ") if name.endswith(".txt") else ROWS
    path = tmp_path / name
    path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    opened: list[Path] = []
    real_open = loaders.open_regular_file

    def counting_open(target):
        opened.append(Path(target))
        return real_open(target)

    monkeypatch.setattr(loaders, "open_regular_file", counting_open)
    events = load_events(path, fmt=fmt, columns=columns)
    assert events.num_events == 40
    assert opened == [path]


def test_the_bundled_datasets_load_unchanged():
    for name in BUILTIN_DATASETS:
        events = load_dataset(name)
        assert events.num_events > 50_000 and np.all(np.diff(events.t) >= 0)


# --- long lines and wide tables ---------------------------------------------------------------------------

def test_a_line_without_line_breaks_is_refused_at_the_limit(tmp_path):
    """The issue's case: a 50 MB line of numbers (here 6 MB; anything past the limit is refused alike)."""
    path = tmp_path / "one_line.csv"
    path.write_text("1,2,3.0," * (6 * 2**20 // 8))
    with pytest.raises(DataError) as err:
        load_events(path)
    assert_short_error(err, str(path), "line 1 is longer than 4 MiB")


def test_a_huge_file_without_line_breaks_is_refused_after_reading_a_few_mib(tmp_path):
    """20 GB of zero bytes (a sparse file): refused after the first MAX_LINE_BYTES, never read whole."""
    path = tmp_path / "zeros.csv"
    with open(path, "wb") as handle:
        handle.truncate(20 * 2**30)
    err = load_within(30, path)
    assert isinstance(err, DataError) and "line 1 is longer than 4 MiB" in str(err), err


def test_a_long_line_later_in_the_file_is_named(tmp_path):
    path = tmp_path / "events.txt"
    path.write_text(ROWS.replace(",", " ") + "9 " * (MAX_LINE_BYTES // 2 + 10) + "\n" + ROWS.replace(",", " "))
    with pytest.raises(DataError) as err:
        load_events(path)
    assert_short_error(err, str(path), "line 41 is longer")


def test_a_compressed_bomb_is_refused_by_the_line_limit(tmp_path):
    path = tmp_path / "ml_bomb.csv.gz"
    with gzip.open(path, "wb", compresslevel=9) as handle:
        for _ in range(64):
            handle.write(b"0" * 2**20)  # 64 MiB of one line, 64 KB on disk
    assert path.stat().st_size < 2**20
    with pytest.raises(DataError) as err:
        load_events(path)
    assert_short_error(err, "line 1 is longer")


def test_a_quoted_field_cannot_span_lines(tmp_path):
    """Quotes are not special: an opened quote does not make the parser read on to the next line."""
    path = tmp_path / "events.csv"
    path.write_text('src,dst,t\n"1,2,3\n' + "4,5,6\n" * 10)
    with pytest.raises(DataError) as err:
        load_events(path)
    assert_short_error(err, "data row 1")


def test_quoted_header_names_and_cells_still_load(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text('"src","dst","t"\n"1","2","3.5"\n2,3,4\n')
    events = load_events(path)
    assert events.num_events == 2 and list(events.t) == [3.5, 4.0]


def test_too_many_columns_is_refused_before_parsing(tmp_path):
    path = tmp_path / "wide.csv"
    path.write_text(",".join(["1"] * (MAX_COLUMNS + 1)) + "\n")
    with pytest.raises(DataError) as err:
        load_events(path)
    assert_short_error(err, str(path), "line 1 has more than 4,096 columns")


def test_too_many_whitespace_columns_is_refused(tmp_path):
    path = tmp_path / "wide.txt"
    path.write_text(" ".join(["1"] * 200_000) + "\n")
    with pytest.raises(DataError) as err:
        load_events(path)
    assert_short_error(err, "line 1 has more than")


def test_a_later_row_wider_than_the_first_names_its_line(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("1,2,3\n" + ",".join(["1"] * 100_000) + "\n")
    with pytest.raises(DataError) as err:
        load_events(path)
    assert_short_error(err, str(path), "line 2")


def test_wide_real_layouts_load(tmp_path):
    """JODIE's wikipedia.csv layout (user, item, time, label, 172 features) and a table at the column limit."""
    rng = np.random.default_rng(0)
    features = rng.standard_normal((50, 172))
    path = tmp_path / "wikipedia.csv"
    rows = "".join(f"{i % 9},{100 + i % 4},{float(i)},0," + ",".join(map(repr, row)) + "\n"
                   for i, row in enumerate(features))
    path.write_text("user_id,item_id,timestamp,state_label," + ",".join(f"f{j}" for j in range(172)) + "\n" + rows)
    spec = "src=0,dst=1,t=2,feat=" + "+".join(str(j) for j in range(4, 176))
    events = load_events(path, columns=parse_columns(spec))
    assert events.edge_feat.shape == (50, 172)
    np.testing.assert_allclose(events.edge_feat, features.astype(np.float32))

    widest = tmp_path / "widest.csv"
    widest.write_text("".join(f"{i},{i + 1},{float(i)}," + ",".join(["0.5"] * (MAX_COLUMNS - 3)) + "\n"
                              for i in range(5)))
    assert load_events(widest).edge_feat.shape == (5, MAX_COLUMNS - 3)


def test_a_megabyte_cell_is_not_copied_into_the_message(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("src,dst,t\n1,2," + "x" * 2**20 + "\n")
    with pytest.raises(DataError) as err:
        load_events(path)
    assert_short_error(err, "data row 1", "timestamp is not a finite number", "...")


def test_a_huge_header_is_not_listed_whole(tmp_path):
    path = tmp_path / "ml_x.csv"
    path.write_text(",".join("n" * 10_000 + str(j) for j in range(100)) + "\n" + ",".join(["1"] * 100) + "\n")
    with pytest.raises(DataError) as err:
        load_events(path)
    assert_short_error(err, "missing column")


# --- --columns ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, fragment", [
    ("src=0,dst=0,t=2", "column 0 is named for both src and dst"),
    ("src=0,dst=1,t=0", "column 0 is named for both src and t"),
    ("src=0,dst=1,t=2,feat=2", "column 2 is named for both t and feat"),
    ("src=0,dst=1,t=2,feat=3+3", "column 3 is named twice for feat"),
    ("src=user,dst=user,t=2", "column 'user' is named for both src and dst"),
])
def test_a_column_named_for_two_roles_is_refused(spec, fragment):
    with pytest.raises(DataError) as err:
        parse_columns(spec)
    assert_short_error(err, "--columns", fragment)


def test_a_name_and_a_position_of_the_same_column_are_refused(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("user,item,when\n" + ROWS)
    with pytest.raises(DataError) as err:
        load_events(path, columns=parse_columns("src=user,dst=0,t=2"))
    assert_short_error(err, str(path), "--columns", "column 1 ('user') (position 0) is named for both src and dst")


def test_a_huge_columns_option_is_not_echoed_whole():
    with pytest.raises(DataError) as err:
        parse_columns("src=0,dst=1,t=2,bogus=" + "9" * 100_000)
    assert_short_error(err, "--columns")


# --- the scripts that share the loader --------------------------------------------------------------------

@pytest.fixture
def script_cli(scripts_dir, monkeypatch, capsys) -> Callable[..., tuple[int, str]]:
    """Run a script's command line in this process through run_cli; return (exit code, stderr)."""
    monkeypatch.syspath_prepend(str(scripts_dir))
    from _cli import run_cli

    def run(script: str, *args: str) -> tuple[int, str]:
        module = importlib.import_module(script)
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", [f"{script}.py", *args])
        with pytest.raises(SystemExit) as exit_:
            if script == "benchmark":  # prints its own error line and returns 2
                sys.exit(module.main(list(args)))
            run_cli(module.main)
        return exit_.value.code, capsys.readouterr().err

    return run


def hostile_inputs(folder: Path) -> dict[str, tuple[list[str], str]]:
    """Data options and the fragment their error line must hold."""
    fifo = folder / "pipe.csv"
    if not fifo.exists():
        os.mkfifo(fifo)
    one_line = folder / "one_line.csv"
    one_line.write_text("1,2,3.0," * (5 * 2**20 // 8))
    plain = folder / "plain.csv"
    plain.write_text(ROWS)
    return {
        "device": (["--data", "/dev/zero"], "/dev/zero: is a character device"),
        "fifo": (["--data", str(fifo)], "is a FIFO (named pipe)"),
        "long line": (["--data", str(one_line)], "line 1 is longer than 4 MiB"),
        "same column twice": (["--data", str(plain), "--columns", "src=0,dst=0,t=2"],
                              "--columns 'src=0,dst=0,t=2': column 0 is named for both src and dst"),
    }


@pytest.mark.parametrize("case", ["device", "fifo", "long line", "same column twice"])
@pytest.mark.parametrize("script", ["train", "evaluate", "prepare_data", "benchmark"])
def test_scripts_refuse_hostile_data_in_one_line(script_cli, tmp_path, script, case):
    data, fragment = hostile_inputs(tmp_path)[case]
    out = tmp_path / "out"
    args = {
        "train": [*data, "--out", str(out), "--threads", "1", "--no-progress"],
        "evaluate": ["--run", str(out), *data],
        "prepare_data": [*data, "--out", str(out)],
        "benchmark": ["sampler", *data, "--out", str(out / "bench.json")],
    }[script]
    code, stderr = script_cli(script, *args)
    assert code == 2, stderr
    assert stderr.startswith("error: ") and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert fragment in stderr and len(stderr) < MAX_MESSAGE
    assert not out.exists()


def test_a_file_too_large_for_memory_is_one_line(script_cli, monkeypatch, tmp_path):
    import _cli

    def out_of_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(_cli, "load_dataset", out_of_memory)
    code, stderr = script_cli("prepare_data", "--data", "huge.csv", "--out", str(tmp_path / "out"), "--layout", "tgl")
    assert code == 2 and stderr.startswith("error: huge.csv: not enough memory to load it") and stderr.count("\n") == 1


def test_train_on_dev_zero_exits_at_once(scripts_dir, tmp_path):
    """The issue's command line, as a process: one line and exit 2, not a kill at 23.5 GB."""
    result = subprocess.run([sys.executable, str(scripts_dir / "train.py"), "--data", "/dev/zero",
                             "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr == ("error: /dev/zero: is a character device, not a regular file; only regular files "
                             "are read (save the data to a file first)\n")


# --- scripts/plot_timeline.py -------------------------------------------------------------------------------

LOG_HEADER = "batch,stage,start_s,end_s,k,staleness\n"
LOG_ROWS = "".join(f"{b},{stage},{b + j / 10:.6f},{b + j / 10 + 0.05:.6f},1,0\n"
                   for b in range(3) for j, stage in enumerate(STAGES))


def test_plot_timeline_with_an_unknown_stage_is_one_line(script_cli, tmp_path):
    (tmp_path / "pipeline_events.csv").write_text(LOG_HEADER + LOG_ROWS + "3,warp_drive,3.0,3.1,1,0\n")
    code, stderr = script_cli("plot_timeline", str(tmp_path))
    assert code == 2, stderr
    assert stderr == (f"error: {tmp_path / 'pipeline_events.csv'}: line 17: unknown stage 'warp_drive' "
                      f"(stages: {', '.join(STAGES)})\n")
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob(".*tmp"))


@pytest.fixture
def read_log(scripts_dir, monkeypatch) -> Callable[[Path], list[StageEvent]]:
    monkeypatch.syspath_prepend(str(scripts_dir))
    plot_timeline = importlib.import_module("plot_timeline")
    return lambda path: plot_timeline.read_events(path, 0, None)


@pytest.mark.parametrize("text, fragment", [
    ("a,b\n1,2\n", "header lacks batch, stage, start_s, end_s"),
    (LOG_HEADER + "0,sample,0.1\n", "line 2: has 3 fields"),
    (LOG_HEADER + "x,sample,0.1,0.2,1,0\n", "line 2: batch must be an integer"),
    (LOG_HEADER + "0,sample,nan,0.2,1,0\n", "line 2: start_s and end_s must be finite"),
    (LOG_HEADER + "0,sample,0.3,0.2,1,0\n", "start_s <= end_s"),
    (LOG_HEADER + "99999999999999999999999,sample,0,1,1,0\n", "line 2: batch '9999999999999999999999"),
    (LOG_HEADER + "0," + "s" * 3000 + ",0,1,1,0\n", "line 2: unknown stage 'ssss"),
    (LOG_HEADER + "0," + "s" * 10_000 + ",0,1,1,0\n", "line 2 is longer than 4,096 characters"),
    (LOG_HEADER + "0,sample,0,1,1,0\n" * 2 + "1,samp\xe9le,0,1,1,0\n", "line 4: unknown stage"),
])
def test_malformed_logs_are_one_short_line(read_log, tmp_path, text, fragment):
    path = tmp_path / "pipeline_events.csv"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        read_log(path)
    assert_short_error(err, str(path), fragment)


def test_a_log_that_is_not_utf8_or_not_a_file(read_log, tmp_path):
    path = tmp_path / "pipeline_events.csv"
    path.write_bytes(LOG_HEADER.encode() + b"0,sam\xffple,0,1,1,0\n")
    with pytest.raises(UserError) as err:
        read_log(path)
    assert_short_error(err, "not UTF-8 text")
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(UserError) as err:
        read_log(path)
    assert_short_error(err, "is a FIFO")


def test_a_good_log_is_read_and_drawn(read_log, script_cli, tmp_path):
    path = tmp_path / "pipeline_events.csv"
    path.write_text(LOG_HEADER + LOG_ROWS)
    assert len(read_log(path)) == 3 * len(STAGES)
    code, stderr = script_cli("plot_timeline", str(tmp_path), "--last", "1", "--out", str(tmp_path / "two"))
    assert code == 0, stderr
    assert (tmp_path / "two.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*tmp"))


def test_a_failed_image_write_leaves_no_file(tmp_path, monkeypatch):
    figure = timeline_figure([StageEvent(0, "sample", 0.0, 0.1)])

    def failing_savefig(target, **kwargs):
        target.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(figure, "savefig", failing_savefig)
    with pytest.raises(OSError):
        save_figure(figure, tmp_path / "timeline.png")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match="unknown image format 'weird'"):
        save_figure(figure, tmp_path / "timeline.weird")


def test_timeline_figure_names_an_unknown_stage():
    with pytest.raises(ValueError, match="unknown pipeline stage 'warp_drive'"):
        timeline_figure([StageEvent(0, "sample", 0.0, 0.1), StageEvent(0, "warp_drive", 0.1, 0.2)])
