"""Registries of named parts and config plugins: lookup and its one-line errors, refusal of a taken name,
the built-in parts each registry holds, and a plugin file that makes a new part valid in a config."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from common.errors import ConfigError, PluginError, RegistryError, UserError
from common.registry import Registry
from models.config import PredictorConfig
from models.embedding import EMBEDDINGS
from models.memory_updaters import UPDATERS, MemoryRows, build_updater
from models.predictor import PREDICTORS
from models.tgnn import build_model
from pipeline.engine.schedulers import SCHEDULERS, make_scheduler
from pipeline.run.config import apply_overrides, load_config, validate_config
from sampler.temporal import STRATEGIES

TOY_UPDATER = Path(__file__).resolve().parents[1] / "examples" / "toy_updater.py"


def test_registry_returns_parts_by_name_in_registration_order():
    shapes = Registry("shape", "draw.shape")
    shapes.register("square")(str.upper)
    shapes.register("circle")(str.lower)
    assert shapes.get("square") is str.upper
    assert shapes.names() == ("square", "circle") == tuple(shapes)
    assert "circle" in shapes and "triangle" not in shapes


def test_unknown_name_is_a_one_line_user_error_listing_the_known_names():
    shapes = Registry("shape", "draw.shape")
    shapes.register("square")(str.upper)
    with pytest.raises(RegistryError) as err:
        shapes.get("squre")
    assert isinstance(err.value, UserError) and isinstance(err.value, ValueError)
    assert str(err.value) == "draw.shape: unknown shape 'squre' (known: square)"


def test_a_taken_name_is_refused_unless_it_is_the_same_part():
    shapes = Registry("shape")
    shapes.register("square")(str.upper)
    shapes.register("square")(str.upper)
    with pytest.raises(RegistryError, match="shape 'square' is already registered"):
        shapes.register("square")(str.lower)
    assert shapes.get("square") is str.upper


def test_builtin_registries_hold_the_shipped_parts():
    assert {"gru", "rnn", "transformer"} <= set(UPDATERS)
    assert {"attention", "jodie", "identity"} <= set(EMBEDDINGS)
    assert "mlp" in PREDICTORS
    assert {"recent", "uniform"} <= set(STRATEGIES)
    assert {"sequential", "presample", "fixed-k", "mspipe"} <= set(SCHEDULERS)


def test_unknown_mode_lists_the_registered_schedulers():
    with pytest.raises(UserError, match=r"pipeline\.mode: unknown pipeline scheduler 'async' \(known: sequential"):
        make_scheduler("async")


def test_predictor_key_defaults_to_mlp_and_is_checked_against_its_registry(tmp_path):
    assert validate_config({}).predictor == PredictorConfig("mlp")
    path = tmp_path / "bad.yml"
    path.write_text("predictor: {module: dot}\n")
    expected = f"{re.escape(str(path))}: key 'predictor.module' is 'dot', expected one of mlp"
    with pytest.raises(ConfigError, match=expected):
        load_config(path)


def test_a_plugin_file_relative_to_the_config_makes_its_part_valid(tmp_path):
    path = tmp_path / "toy.yml"
    path.write_text(f"plugins: [{os.path.relpath(TOY_UPDATER, tmp_path)}]\nmemory: {{dim: 8, updater: decay}}\n")
    cfg = load_config(path)
    assert cfg.plugins == (str(TOY_UPDATER),)
    assert "decay" in UPDATERS
    model = build_model(cfg, dim_node_feat=0, dim_edge_feat=0)
    assert type(model.updater).__name__ == "DecayUpdater"
    assert apply_overrides(cfg, {"train.epochs": 2}).memory.updater == "decay"


def test_the_toy_updater_changes_only_nodes_with_mail():
    validate_config({"plugins": [str(TOY_UPDATER)]})
    updater = build_updater("decay", dim_memory=4, dim_mail=8, dim_time=4, heads=1, dropout=0.0)
    mail_count = torch.tensor([0, 1, 3])
    rows = MemoryRows(mem=torch.randn(3, 4), mem_ts=torch.zeros(3, dtype=torch.float64),
                      mail=torch.randn(3, 2, 8), mail_ts=torch.ones(3, 2, dtype=torch.float64),
                      mail_count=mail_count, ts=torch.full((3,), 2.0, dtype=torch.float64))
    new_mem = updater(rows)
    torch.testing.assert_close(new_mem[0], rows.mem[0], rtol=0, atol=0)
    assert not torch.allclose(new_mem[1:], rows.mem[1:])


def test_a_plugin_may_be_an_importable_module():
    assert validate_config({"plugins": ["models.predictor"]}).plugins == ("models.predictor",)


@pytest.mark.parametrize("entry, message", [
    ("missing.py", "names .*missing.py, which is not a file"),
    ("no_such_plugin_module", "names module 'no_such_plugin_module', which cannot be found"),
])
def test_a_missing_plugin_is_a_config_error_naming_the_file_and_key(tmp_path, entry, message):
    path = tmp_path / "cfg.yml"
    path.write_text(f"plugins: [{entry}]\n")
    with pytest.raises(PluginError, match=f"{re.escape(str(path))}: key 'plugins' {message}") as err:
        load_config(path)
    assert "\n" not in str(err.value)


def test_a_bug_inside_a_plugin_keeps_its_traceback(tmp_path):
    plugin = tmp_path / "broken.py"
    plugin.write_text("import no_such_dependency_of_the_plugin\n")
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_of_the_plugin"):
        validate_config({"plugins": [str(plugin)]})


def test_plugins_must_be_a_list_of_strings():
    with pytest.raises(ConfigError, match="key 'plugins' must be a list of strings"):
        validate_config({"plugins": "toy_updater.py"})
