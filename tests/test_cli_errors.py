"""One error style for every command: one line and exit 1 (2 for usage), never a traceback unless
--debug; strict JSON out; strict config files; devices, run directories and flag combinations
refused before anything is created. Driven in-process with CliRunner."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import click
import numpy as np
import pytest
from click.testing import CliRunner, Result
from conftest import save_clip, tiny_clip

from msgvip.cli import json_ready, main, user_errors
from msgvip.config import ConfigError, read_config_file
from msgvip.pipelines import run_extract
from msgvip.ranker import RankerConfig, TrainConfig, train
from msgvip.store import FeatureStore

SMALL_MODEL = RankerConfig(hidden=16, gat_heads=2, temporal_heads=2, event_heads=2, pool_heads=2, relation_heads=2, ff_mult=2)


def assert_no_traceback(result: Result) -> None:
    # in-process an escaping exception is kept in result.exception, not printed: only click's exits may end a run
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output and "Traceback" not in result.stderr


def run(*args, code: int = 0, env: dict | None = None) -> Result:
    result = CliRunner().invoke(main, [str(a) for a in args], env=env)
    assert result.exit_code == code, result.output
    assert_no_traceback(result)
    return result


def error_line(result: Result) -> str:
    """The one `Error: ...` line of a failed run."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def strict_json(text: str):
    def refuse(constant: str):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def leaf_commands(group: click.Group = main, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], click.Command]:
    found = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found.update(leaf_commands(command, (*path, name)))
        else:
            found[(*path, name)] = command
    return found


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> SimpleNamespace:
    """A store of 6 train + 2 val + 2 test tiny clips and a one-epoch run of a tiny ranker on it."""
    base = tmp_path_factory.mktemp("trained")
    for i in range(10):
        save_clip(base / "data" / ("train" if i < 6 else "val" if i < 8 else "test") / f"clip_{i}.npz", tiny_clip(seed=i))
    summary = run_extract(base / "data", cache_dir=base / "cache", progress=False)
    train(FeatureStore.open(summary.store), base / "run", TrainConfig(epochs=1, batch_size=4, device="cpu"), SMALL_MODEL, progress=False)
    return SimpleNamespace(data=base / "data", cache=base / "cache", fp=summary.fingerprint, run=base / "run")


# ------------------------------------------------------------------------ 1. one error style
# every command, with a library function it calls; a new command fails test_every_command_is_listed
# until it is added here
COMMANDS = {
    ("demo-data",): (["demo-data", "{tmp}/demo"], "msgvip.data.synthetic.write_demo_data"),
    ("demo",): (["demo", "{tmp}/demo"], "msgvip.pipelines.demo.run_demo"),
    ("extract",): (["extract", "{tmp}"], "msgvip.cli.run_extract"),
    ("train",): (["train", "--store", "abcd"], "msgvip.pipelines.train.store_for_training"),
    ("evaluate",): (["evaluate", "{tmp}"], "msgvip.pipelines.train.store_of_run"),
    ("predict",): (["predict", "{tmp}", "abcd"], "msgvip.pipelines.train.store_for_prediction"),
    ("cache", "ls"): (["cache", "ls"], "msgvip.store.cache.scan_cache"),
    ("cache", "info"): (["cache", "info", "abcd"], "msgvip.store.cache.resolve_store"),
    ("cache", "verify"): (["cache", "verify", "abcd"], "msgvip.store.cache.resolve_store"),
    ("cache", "compact"): (["cache", "compact", "abcd"], "msgvip.store.cache.resolve_store"),
    ("cache", "gc"): (["cache", "gc", "--keep-last", "1"], "msgvip.store.cache.scan_cache"),
    ("cache", "pin"): (["cache", "pin", "abcd"], "msgvip.store.cache.resolve_store"),
    ("cache", "unpin"): (["cache", "unpin", "abcd"], "msgvip.store.cache.resolve_store"),
    ("show",): (["show", "{tmp}", "worst:1"], "msgvip.pipelines.train.store_of_run"),
    ("report",): (["report", "{tmp}"], "msgvip.pipelines.train.store_of_run"),
    ("sweep",): (["sweep", "--store", "abcd", "--space", __file__], "msgvip.store.cache.resolve_store"),
    ("probe",): (["probe", "--store", "abcd"], "msgvip.store.cache.resolve_store"),
    ("runs", "ls"): (["runs", "ls", "{tmp}"], "msgvip.pipelines.runs.list_runs"),
    ("compare",): (["compare", "{tmp}", "{tmp}"], "msgvip.pipelines.train.store_of_run"),
    ("import-checkpoint", "svip"): (["import-checkpoint", "svip", __file__, "--store", "abcd", "--out", "{tmp}/run"], "msgvip.store.cache.resolve_store"),
}


def test_every_command_is_listed_and_wears_user_errors():
    commands = leaf_commands()
    assert set(commands) == set(COMMANDS)
    wrapper_code = user_errors(lambda: None).__code__
    assert [path for path, c in commands.items() if c.callback.__code__ is not wrapper_code] == []


def break_command(monkeypatch, tmp_path, command: tuple[str, ...], error: BaseException) -> list[str]:
    args, target = COMMANDS[command]

    def broken(*_, **__):
        raise error

    monkeypatch.setattr(target, broken)
    return [a.format(tmp=tmp_path) for a in args]


@pytest.mark.parametrize("command", list(COMMANDS), ids=" ".join)
def test_a_bug_is_one_line_asking_for_debug(command, tmp_path, cache_dir, monkeypatch):
    args = break_command(monkeypatch, tmp_path, command, RuntimeError("boom\nsecond line"))
    line = error_line(run(*args, code=1))
    assert line.startswith("Error: unexpected RuntimeError: boom")
    assert "--debug (or MSGVIP_DEBUG=1)" in line and "report it" in line


@pytest.mark.parametrize("command", list(COMMANDS), ids=" ".join)
def test_ctrl_c_is_one_line_and_exit_130(command, tmp_path, cache_dir, monkeypatch):
    args = break_command(monkeypatch, tmp_path, command, KeyboardInterrupt())
    result = run(*args, code=130)
    assert result.stderr.strip().splitlines()[-1] == "interrupted"


def test_debug_lets_the_traceback_through(tmp_path, cache_dir, monkeypatch):
    args = break_command(monkeypatch, tmp_path, ("cache", "ls"), RuntimeError("boom"))
    for flags, env in [(["--debug"], None), ([], {"MSGVIP_DEBUG": "1"})]:
        result = CliRunner().invoke(main, [*flags, *args], env=env)
        assert result.exit_code == 1 and isinstance(result.exception, RuntimeError)
    # a user error too keeps its own exception under --debug
    result = CliRunner().invoke(main, ["--debug", "cache", "info", "ffff"])
    assert result.exit_code == 1 and type(result.exception).__name__ == "StoreError"
    run("cache", "info", "ffff", code=1, env={"MSGVIP_DEBUG": "0"})


def test_a_real_process_prints_one_line_or_with_debug_the_traceback(tmp_path):
    env = {**os.environ, "MSGVIP_CACHE": str(tmp_path)}
    env.pop("MSGVIP_DEBUG", None)
    plain = subprocess.run([sys.executable, "-m", "msgvip", "cache", "info", "ffff"], env=env, capture_output=True, text=True)
    lines = plain.stderr.strip().splitlines()
    assert plain.returncode == 1 and len(lines) == 1 and lines[0].startswith("Error: no store"), plain.stderr
    debug = subprocess.run([sys.executable, "-m", "msgvip", "--debug", "cache", "info", "ffff"], env=env, capture_output=True, text=True)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "StoreError" in debug.stderr


def test_os_errors_are_one_line_naming_the_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = error_line(run("demo-data", blocker / "out", "--clips", "1", code=1))
    assert str(blocker) in line
    assert "frames must be >= 4" in error_line(run("demo-data", tmp_path / "out", "--frames", "2", code=2))


# ------------------------------------------------------------------------ 2. strict JSON
def test_json_ready_replaces_every_non_finite_number():
    record = {"a": float("nan"), "b": [np.float32("inf"), (np.float64("-inf"), 1.5)], "c": np.array([1.0, np.nan]), "d": {"e": np.int64(3)}}
    assert json_ready(record) == {"a": None, "b": [None, [None, 1.5]], "c": [1.0, None], "d": {"e": 3}}
    assert type(json_ready(np.int64(3))) is int and type(json_ready(np.float32(0.5))) is float


def test_every_json_output_is_standard_json(trained):
    cache = ["--cache-dir", trained.cache]
    outputs = {
        ("extract",): run("extract", trained.data, "--json", *cache).stdout,
        ("evaluate",): run("evaluate", trained.run, "--split", "val", "--json", *cache).stdout,
        ("cache", "ls"): run("cache", "ls", "--json", *cache).stdout,
        ("cache", "info"): run("cache", "info", trained.fp, "--json", *cache).stdout,
        ("cache", "verify"): run("cache", "verify", trained.fp, "--json", *cache).stdout,
        ("cache", "compact"): run("cache", "compact", trained.fp, "--json", *cache).stdout,
        ("probe",): run("probe", "--store", trained.fp, "--json", *cache).stdout,
        ("runs", "ls"): run("runs", "ls", Path(trained.run).parent, "--json").stdout,
        ("compare",): run("compare", trained.run, trained.run, "--split", "val", "--json", *cache).stdout,
    }
    assert set(outputs) == {path for path, c in leaf_commands().items() if any(p.name == "as_json" for p in c.params)}
    records = {command: strict_json(text) for command, text in outputs.items()}
    by_persons = records[("evaluate",)]["model"]["by_persons"]
    empty = [bucket for bucket in by_persons.values() if bucket["n"] == 0]
    assert empty and all(bucket["rank@1"] is None for bucket in empty)  # NaN in the library, null on the wire
    assert all(math.isfinite(b["rank@1"]) for b in by_persons.values() if b["n"])


# ------------------------------------------------------------------------ 3. config files
def test_read_config_file_accepts_toml_and_json(tmp_path):
    (tmp_path / "c.toml").write_text("[model]\nhidden = 16\n[train]\nepochs = 2\n")
    (tmp_path / "c.json").write_text('{"train": {"lr": 0.001}}')
    assert read_config_file(tmp_path / "c.toml") == {"model": {"hidden": 16}, "train": {"epochs": 2}}
    assert read_config_file(tmp_path / "c.json") == {"train": {"lr": 0.001}}


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("c.yaml", "train:\n  epochs: 2\n", "must be TOML (.toml) or JSON (.json), got .yaml"),
        ("config", "[train]\n", "got no extension"),
        ("c.toml", "[train]\nepochs = \n", "invalid TOML: Invalid value (at line 2, column 10)"),
        ("c.json", '{"train":\n {"epochs": 2,}}', "invalid JSON at line 2, column 15"),
        ("c.json", '{"train": {"lr": NaN}}', "NaN is not standard JSON"),
        ("c.json", '{"train": {"lr": 1, "lr": 2}}', "key 'lr' appears twice"),
        ("c.json", "[1, 2]", "the top level must be an object"),
        ("c.toml", "[extra]\n", "unknown sections ['extra']"),
        ("c.toml", "train = 3\n", "section 'train' must be a table"),
        ("c.toml", b"[train]\n# caf\xe9\n", "not UTF-8 text"),
    ],
)
def test_bad_config_files_are_one_line_naming_the_file(tmp_path, name, content, words):
    path = tmp_path / name
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        read_config_file(path)
    assert str(caught.value).startswith(f"{path}: ") and words in str(caught.value), str(caught.value)
    line = error_line(run("train", "--store", "0" * 32, "--config", path, "--out", tmp_path / "run", code=1))
    assert line == f"Error: {caught.value}"
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------ 4. devices
@pytest.fixture
def cpu_only(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_cuda_on_a_machine_without_it_is_refused_before_the_store_exists(tiny_data, cache_dir, cpu_only):
    for device in ("cuda", "cuda:1"):
        line = error_line(run("extract", tiny_data, "--device", device, code=1))
        assert f"device '{device}': CUDA is not available" in line and "--device cpu" in line
    assert "not a device name" in error_line(run("extract", tiny_data, "--device", "gpu", code=1))
    assert not cache_dir.exists()


def test_cuda_index_out_of_range_is_refused(tiny_data, cache_dir, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    line = error_line(run("extract", tiny_data, "--device", "cuda:2", code=1))
    assert "this machine has 2 CUDA device(s), cuda:0 to cuda:1" in line
    assert not cache_dir.exists()


def test_train_device_is_checked_from_flag_and_config_file(tmp_path, cache_dir, cpu_only):
    assert "CUDA is not available" in error_line(run("train", "--store", "0" * 32, "--device", "cuda", code=1))
    (tmp_path / "c.toml").write_text('[train]\ndevice = "cuda:0"\n')
    assert "CUDA is not available" in error_line(run("train", "--store", "0" * 32, "--config", tmp_path / "c.toml", code=1))


# ------------------------------------------------------------------------ 5. run directories
@pytest.fixture
def fake_train(monkeypatch) -> list[list[str]]:
    """Replaces the trainer; records the files of the run dir it was handed."""
    seen = []

    def fake(store, run_dir, *args, **kwargs):
        seen.append(sorted(p.name for p in Path(run_dir).iterdir()) if Path(run_dir).exists() else [])
        return SimpleNamespace(rank=1)  # not rank 0: the command prints nothing more

    monkeypatch.setattr("msgvip.ranker.train", fake)
    return seen


def test_an_existing_run_needs_resume_or_overwrite(trained, tmp_path, fake_train):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run("train", "--store", trained.fp, "--cache-dir", trained.cache, "--out", run_dir)  # an empty folder is no run
    old = {"config.json": "{}", "best.pt": "x", "metrics.csv": "epoch\n", "notes.txt": "mine"}
    for name, text in old.items():
        (run_dir / name).write_text(text)
    train_args = ["train", "--store", trained.fp, "--cache-dir", trained.cache, "--out", run_dir]

    line = error_line(run(*train_args, code=2))
    assert str(run_dir) in line and "--resume to continue" in line and "--overwrite to replace" in line
    assert "pass one" in error_line(run(*train_args, "--resume", "--overwrite", code=2))
    run("train", "--store", "f" * 32, "--cache-dir", trained.cache, "--out", run_dir, "--overwrite", code=1)  # no such store
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(old)  # nothing removed on the way

    run(*train_args, "--resume")
    run(*train_args, "--overwrite")
    assert fake_train == [[], sorted(old), ["notes.txt"]]  # --overwrite removes msgvip's files only


# ------------------------------------------------------------------------ 6. extraction flags with --store
def test_extraction_flags_with_store_are_refused(trained, fake_train):
    base = ["train", "--store", trained.fp, "--cache-dir", trained.cache]
    for flags in (["--backbone", "x"], ["--features", "geometry"], ["--pooling", "mean", "--dtype", "float32"], ["--local-files-only"]):
        line = error_line(run(*base, *flags, code=2))
        assert all(f in line for f in flags if f.startswith("--")) and "already fixes the features" in line and "--data" in line
    run(*base)  # the defaults are not "given"
    assert len(fake_train) == 1


def test_a_misspelt_family_lists_the_known_ones(tiny_data, cache_dir, tmp_path):
    for args in (["extract", tiny_data], ["train", "--data", tiny_data, "--out", tmp_path / "run"]):
        line = error_line(run(*args, "--features", "geometry,geomtry", code=1))
        assert "unknown feature families ['geomtry']; choose from ['appearance', 'face', 'geometry', 'pose', 'svip_box']" in line
    assert not cache_dir.exists()
