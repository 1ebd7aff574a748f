"""Users' own files read right: `--columns` picks the columns, and a time column taken by position that
looks like something else is a one-line error pointing at `--columns`."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from common.errors import DataError
from graph import load_events
from graph.loaders import ColumnChoice, parse_columns

CONFIG = """memory: {dim: 8, dim_time: 8}
embedding: {dim_out: 8, dim_time: 8}
train: {batch_size: 100, epochs: 1}
eval: {batch_size: 100}
pipeline: {mode: sequential}
"""


def signed_network(path, events=1500, seed=0):
    """A `src,dst,rating,time` file without header, as public signed-network (trust rating) CSVs are laid out."""
    rng = np.random.default_rng(seed)
    src, dst = rng.integers(1, 60, events), rng.integers(1, 60, events)
    rating = rng.integers(-10, 11, events)
    time = 1_300_000_000 + np.cumsum(rng.integers(1, 5000, events))
    path.write_text("".join(f"{s},{d},{r},{t}\n" for s, d, r, t in zip(src, dst, rating, time)))
    return time


def test_parse_columns():
    assert parse_columns("src=0,dst=1,t=3") == ColumnChoice(0, 1, 3)
    assert parse_columns("src=user, dst=item, t=when, feat=4+stars") == ColumnChoice("user", "item", "when", (4, "stars"))


@pytest.mark.parametrize("spec, fragment", [
    ("src=0,dst=1", "missing t"),
    ("src=0,dst=1,time=3", "'time=3'"),
    ("src=0,dst=1,t=3,t=2", "given twice"),
    ("src=0,dst=1,t=2+3", "one column each"),
])
def test_bad_column_specs_are_one_line_errors(spec, fragment):
    with pytest.raises(DataError, match="--columns") as err:
        parse_columns(spec)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_a_rating_column_read_as_time_is_refused_with_a_hint(tmp_path):
    path = tmp_path / "signed.csv"
    signed_network(path)
    with pytest.raises(DataError) as err:
        load_events(path)
    message = str(err.value)
    assert str(path) in message and "column 3 (position 2)" in message and "--columns src=0,dst=1,t=N" in message
    assert "go back in time" in message and "\n" not in message


def test_chosen_columns_read_the_real_time(tmp_path):
    path = tmp_path / "signed.csv"
    time = signed_network(path)
    events = load_events(path, columns=parse_columns("src=0,dst=1,t=3"))
    assert events.num_events == len(time) and np.array_equal(events.t, time.astype(float))
    assert events.edge_feat is None
    with_rating = load_events(path, columns=parse_columns("src=0,dst=1,t=3,feat=2"))
    assert with_rating.dim_edge_feat == 1 and np.all(np.abs(with_rating.edge_feat) <= 10)


def test_columns_by_header_name(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text("stars,user,item,when\n5,1,2,10\n3,2,3,20\n4,3,1,30\n")
    events = load_events(path, columns=parse_columns("src=user,dst=item,t=when"))
    assert np.array_equal(events.t, [10.0, 20.0, 30.0]) and events.num_nodes == 3
    with pytest.raises(DataError, match="does not have"):
        load_events(path, columns=parse_columns("src=user,dst=item,t=time"))
    with pytest.raises(DataError, match="position 7, but the file has 4 columns"):
        load_events(path, columns=parse_columns("src=1,dst=2,t=7"))


def test_a_sorted_time_column_is_never_refused(tmp_path):
    path = tmp_path / "votes.txt"  # yearly timestamps: few distinct values, but in order
    path.write_text("".join(f"{i % 7} {i % 5 + 7} {1946 + i // 100}\n" for i in range(1000)))
    assert load_events(path).num_events == 1000


def test_columns_apply_only_to_csv_and_whitespace_files(tmp_path):
    path = tmp_path / "edges.csv"
    path.write_text(",src,dst,time,ext_roll\n0,0,1,1.0,0\n1,1,2,2.0,1\n")
    with pytest.raises(DataError, match="applies to csv and whitespace"):
        load_events(path, fmt="tgl", columns=parse_columns("src=1,dst=2,t=3"))


def test_train_script_refuses_then_trains_with_columns(tmp_path, scripts_dir):
    data, config = tmp_path / "signed.csv", tmp_path / "small.yml"
    signed_network(data)
    config.write_text(CONFIG)
    command = [sys.executable, str(scripts_dir / "train.py"), "--config", str(config), "--data", str(data),
               "--no-progress", "--threads", "1"]
    refused = subprocess.run([*command, "--out", str(tmp_path / "refused")], capture_output=True, text=True,
                             timeout=300)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("error: ") and "--columns" in refused.stderr
    trained = subprocess.run([*command, "--columns", "src=0,dst=1,t=3", "--out", str(tmp_path / "run")],
                             capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr
    assert (tmp_path / "run" / "results.json").is_file()
