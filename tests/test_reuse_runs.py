"""One way to say what a run is: a run's config.json as --config, --from-run, and --resume from the run's own record."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from msgvip.cli import main
from msgvip.ranker.trainer import load_checkpoint
from msgvip.pipelines.extract import run_extract
from conftest import save_clip, tiny_clip

# the fields of a run's record that describe this run, not its settings
RUN_FIELDS = ("store", "cache_root", "probe", "runtime")


@pytest.fixture
def run(tmp_path: Path, cache_dir: Path) -> tuple[Path, Path]:
    """(store, run): a 2-epoch run trained with settings nobody would guess from the defaults."""
    data = tmp_path / "data"
    for i in range(14):
        save_clip(data / ("train" if i < 8 else "val" if i < 11 else "test") / f"clip_{i:02d}.npz", tiny_clip(seed=i, slots=4, people=2 + i % 2))
    store = Path(run_extract(data, cache_dir=cache_dir, progress=False).store)
    run = tmp_path / "first"
    result = CliRunner().invoke(main, ["train", "--store", str(store), "--out", str(run), "--epochs", "2", "--batch-size", "4", "--seed", "3",
                                       "--set", "model.hidden=16", "--set", "model.gat_heads=2", "--set", "model.temporal_heads=2",
                                       "--set", "train.lr=0.002", "--set", "model.probe_prior=false"])  # fmt: skip
    assert result.exit_code == 0, result.output
    return store, run


def settings(run: Path) -> dict:
    record = json.loads((run / "config.json").read_text())
    return {k: v for k, v in record.items() if k not in RUN_FIELDS}


@pytest.mark.parametrize("how", ["config", "from-run"])
def test_a_run_reproduces_from_its_record(run, tmp_path, how):
    store, first = run
    again = tmp_path / how
    reuse = ["--config", str(first / "config.json")] if how == "config" else ["--from-run", str(first)]
    result = CliRunner().invoke(main, ["train", "--store", str(store), "--out", str(again), *reuse])
    assert result.exit_code == 0, result.output
    assert settings(again) == settings(first)
    assert (again / "metrics.csv").read_text().count("\n") == (first / "metrics.csv").read_text().count("\n")


def test_from_run_with_a_setting_changes_only_that(run, tmp_path):
    store, first = run
    again = tmp_path / "wider"
    result = CliRunner().invoke(main, ["train", "--store", str(store), "--out", str(again), "--from-run", str(first), "--set", "model.hidden=24", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    was, now = settings(first), settings(again)
    assert (now["model"]["hidden"], now["train"]["epochs"]) == (24, 1)
    now["model"]["hidden"], now["train"]["epochs"] = was["model"]["hidden"], was["train"]["epochs"]
    assert now == was


def test_resume_takes_everything_from_the_run(run):
    store, first = run
    recorded = settings(first)
    more = CliRunner().invoke(main, ["train", "--out", str(first), "--resume", "--epochs", "3"])  # no --store, no settings
    assert more.exit_code == 0, more.output
    now = settings(first)
    assert now["train"]["epochs"] == 3 and now["model"] == recorded["model"] and now["train"]["lr"] == recorded["train"]["lr"]
    rows = [line.split(",")[0] for line in (first / "metrics.csv").read_text().splitlines()[1:]]
    assert rows == ["1", "2", "3"]

    again = CliRunner().invoke(main, ["train", "--out", str(first), "--resume"])
    assert again.exit_code == 0, again.output  # finished: nothing left to train, and nothing refused


@pytest.mark.parametrize(
    ("flags", "field"),
    [(["--lr", "0.01"], "train.lr"), (["--set", "model.hidden=32"], "model.hidden"), (["--epochs", "1"], "train.epochs"), (["--seed", "4"], "train.seed")],
)
def test_resume_refuses_a_change_of_the_model_or_its_training(run, flags, field):
    _, first = run
    before = (first / "metrics.csv").read_text()
    result = CliRunner().invoke(main, ["train", "--out", str(first), "--resume", *flags])
    assert result.exit_code == 1 and field in result.output and "--from-run" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert (first / "metrics.csv").read_text() == before


def test_a_config_file_that_is_neither_settings_nor_a_run_is_still_refused(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": {}, "allow_duplicates": False}))
    result = CliRunner().invoke(main, ["train", "--store", "x", "--config", str(bad)])
    assert result.exit_code != 0 and "unknown sections ['allow_duplicates']" in result.output


@pytest.mark.parametrize("keep", ["both", "best", "latest"])
def test_keep_says_which_checkpoints_a_run_keeps(run, tmp_path, keep):
    store, first = run
    out = tmp_path / keep
    result = CliRunner().invoke(main, ["train", "--store", str(store), "--out", str(out), "--from-run", str(first), "--set", f"train.keep={keep!r}"])
    assert result.exit_code == 0, result.output
    kept = {"both": ["best.pt", "latest.pt"], "best": ["best.pt"], "latest": ["latest.pt"]}[keep]
    assert sorted(p.name for p in out.glob("*.pt")) == kept
    assert "kept " in result.output and all(f"{name} (" in result.output for name in kept)
    if "best.pt" in kept:
        assert "optimizer" not in load_checkpoint(out / "best.pt")  # nothing resumes from it
    evaluated = CliRunner().invoke(main, ["evaluate", str(out), "--split", "val", "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    last = int((out / "metrics.csv").read_text().splitlines()[-1].split(",")[0])
    epoch = load_checkpoint(out / kept[0])["epoch"] + 1
    assert epoch == last if keep == "latest" else epoch <= last
    resumed = CliRunner().invoke(main, ["train", "--out", str(out), "--resume", "--epochs", "3"])
    if keep == "best":
        assert resumed.exit_code == 1 and "kept only best.pt" in resumed.output and "--from-run" in resumed.output
    else:
        assert resumed.exit_code == 0, resumed.output


def test_evaluate_keeps_the_scores_its_figures_come_from(run):
    _, first = run
    result = CliRunner().invoke(main, ["evaluate", str(first), "--split", "test", "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)["model"]["rank@1"]
    with open(first / "predictions-test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {row["split"] for row in rows} == {"test"}
    clips = {}
    for row in rows:
        clips.setdefault(row["clip_id"], []).append(row)
    hits = [any(r["rank"] == "1" and int(r["slot"]) == int(r["target"]) for r in persons) for persons in clips.values()]
    assert len(clips) == 3 and sum(hits) / len(hits) == pytest.approx(printed)
