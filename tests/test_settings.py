"""`train --set SECTION.KEY=VALUE`: one setting on the command line, typed and checked like the config file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from msgvip.cli import main
from msgvip.config import ConfigError, parse_settings
from msgvip.pipelines.extract import run_extract
from conftest import save_clip, tiny_clip


def test_values_are_read_as_toml_else_as_text():
    assert parse_settings(["model.hidden=32", "train.lr=2e-3", "model.dual_head=false", "model.input_norm=layer", "train.train_split=\"a b\""]) == {
        "model": {"hidden": 32, "dual_head": False, "input_norm": "layer"},
        "train": {"lr": 0.002, "train_split": "a b"},
    }


@pytest.mark.parametrize(
    ("pair", "message"),
    [("hidden=32", "write SECTION.KEY=VALUE"), ("model.hidden", "write SECTION.KEY=VALUE"), ("data.x=1", "unknown section 'data'")],
)
def test_a_malformed_setting_is_named(pair, message):
    with pytest.raises(ConfigError, match=message):
        parse_settings([pair])


def test_a_setting_given_twice_is_refused():
    with pytest.raises(ConfigError, match="given twice"):
        parse_settings(["model.hidden=32", "model.hidden=64"])


def test_train_takes_settings_and_refuses_unknown_ones(tmp_path: Path, cache_dir: Path):
    data = tmp_path / "data"
    for i in range(10):
        save_clip(data / ("train" if i < 7 else "val") / f"clip_{i:02d}.npz", tiny_clip(seed=i, slots=4, people=2 + i % 2))
    store = run_extract(data, cache_dir=cache_dir, progress=False).store
    run = tmp_path / "run"
    base = ["train", "--store", str(store), "--out", str(run), "--no-probe"]
    result = CliRunner().invoke(main, [*base, "--set", "model.hidden=16", "--set", "model.gat_heads=2", "--set", "model.temporal_heads=2",
                                       "--set", "train.epochs=1", "--set", "train.lr=0.01"])  # fmt: skip
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert (config["model"]["hidden"], config["model"]["gat_heads"], config["train"]["epochs"], config["train"]["lr"]) == (16, 2, 1, 0.01)

    unknown = CliRunner().invoke(main, [*base, "--overwrite", "--set", "model.hiden=16"])
    assert unknown.exit_code == 1 and "unknown RankerConfig keys ['hiden']" in unknown.output and "'hidden'" in unknown.output
    wrong = CliRunner().invoke(main, [*base, "--overwrite", "--set", "train.epochs=many"])
    assert wrong.exit_code == 1 and "TrainConfig.epochs must be int, got 'many'" in wrong.output
    both = CliRunner().invoke(main, [*base, "--overwrite", "--set", "train.epochs=2", "--epochs", "3"])
    assert both.exit_code == 1 and "--set train.epochs and its flag --epochs" in both.output
    assert json.loads((run / "config.json").read_text())["model"]["hidden"] == 16  # the refused commands changed nothing


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("batch_size", 0, "batch_size must be an integer >= 1, got 0"), ("eval_batch_size", 0, "eval_batch_size must be an integer >= 1"),
        ("epochs", 0, "epochs must be an integer >= 1"), ("patience", -1, "patience must be an integer >= 1"), ("lr", -1.0, "lr must be a finite number >= 0"),
        ("lr", float("nan"), "lr must be a finite number >= 0, got nan"), ("weight_decay", -1.0, "weight_decay must be a finite number >= 0"),
        ("margin", float("nan"), "margin must be a finite number >= 0"), ("warmup_fraction", 5.0, r"warmup_fraction must be a finite number in \[0, 1\]"),
        ("grad_clip", -1.0, r"grad_clip must be a number > 0 \(inf: no clipping\), got -1.0"), ("grad_clip", 0.0, "grad_clip must be a number > 0"),
        ("in_memory", "maybe", r"in_memory must be one of \['auto', 'yes', 'no'\], got 'maybe'"), ("threads", -2, "threads must be an integer in \\[0, 4096\\]"),
        ("probe_p_value", 0.0, r"probe_p_value must be a finite number in \(0, 1\]"), ("seed", -1, "seed must be an integer in"),
    ],
)  # fmt: skip
def test_a_training_value_out_of_range_is_refused_before_any_work(field, value, message):
    from msgvip.ranker import TrainConfig

    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})


def test_no_gradient_clipping_is_spelled_inf():
    from msgvip.ranker import TrainConfig

    assert TrainConfig(grad_clip=float("inf")).grad_clip == float("inf")
