"""Comparing runs: the listing of a sweep folder (differing options, seed groups, damaged runs)
and the paired comparison of two runs on the same clips, on tiny runs trained here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import save_clip, tiny_clip

from msgvip.cli import json_ready
from msgvip.config import ConfigError, ExtractConfig
from msgvip.pipelines import run_extract
from msgvip.pipelines.runs import (
    EVALUATE_FILE,
    compare_runs,
    comparison_summary_str,
    comparison_table,
    group_by_seed,
    groups_table,
    list_runs,
    problems as runs_problems,
    runs_json,
    runs_table,
    shared_options,
    shared_options_str,
    sort_runs,
)
from msgvip.ranker import RankerConfig, TrainConfig, evaluate_run, train
from msgvip.store import FeatureStore

SMALL_MODEL = RankerConfig(hidden=16, gat_heads=2, temporal_heads=2, event_heads=2, pool_heads=2, relation_heads=2, ff_mult=2)
SPLITS = (("train", 40), ("val", 12), ("test", 60))
EPOCHS = 6
# no probe: its prior would make every seed start, and here stay, at the same epoch 0 (the cue is the probe's)
SETTING = TrainConfig(epochs=EPOCHS, batch_size=8, lr=3e-3, warmup_fraction=0.0, device="cpu", patience=100, probe=False)
IN_PROCESS = ExtractConfig(num_workers=0)  # geometry of tiny clips: decode workers cost more than they save


def largest_is_target_clip(seed: int) -> dict[str, np.ndarray]:
    """A tiny clip of 3 to 5 people whose target has the largest box: a cue geometry carries, so a
    few epochs learn it (and an untrained model may stumble on it: the box is an outlier in every
    standardised size column, which random weights can score high or low)."""
    clip = tiny_clip(seed=seed, slots=5, people=3 + seed % 3, height=48, width=80)
    target = int(clip["target_index"])
    box = clip["bboxes"][:, target]  # (T, 4)
    centre, half = (box[:, :2] + box[:, 2:]) / 2, (box[:, 2:] - box[:, :2]) * 0.9  # twice the size
    clip["bboxes"][:, target] = np.clip(np.concatenate([centre - half, centre + half], 1), 0, [80, 48, 80, 48])
    clip["scene_category"] = np.array(f"{seed % 3 + 1:02d}")
    return clip


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Iterator[tuple[FeatureStore, Path]]:
    """A store of 112 clips and a sweep folder of three runs trained on it: seeds 0 and 1 of one
    setting and, with lr 0, a run that never learns (it keeps its random initial weights)."""
    # a model this small runs fastest on one thread, and several times slower with two threads
    # on cores other processes share (measured 4.6 s against 44 s per run)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("runs")
    data = root / "data"
    index = 0
    for split, count in SPLITS:
        for _ in range(count):
            save_clip(data / split / f"clip_{index:03d}.npz", largest_is_target_clip(index))
            index += 1
    store = FeatureStore.open(Path(run_extract(data, IN_PROCESS, cache_dir=root / "cache", progress=False).store))
    runs = root / "sweep"
    for name, config in [("seed-0", SETTING), ("seed-1", replace(SETTING, seed=1)), ("lr-0", replace(SETTING, lr=0.0))]:
        train(store, runs / name, config, SMALL_MODEL, progress=False)
    for name in ("seed-0", "lr-0"):  # what `msgvip evaluate` writes beside the run
        (runs / name / EVALUATE_FILE).write_text(json.dumps(json_ready(evaluate_run(runs / name, store, "test"))))
    yield store, runs
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def misled(sweep, tmp_path_factory) -> Path:
    """A run of the sweep's setting taught another person than the target of every training clip:
    it learns to pass over the large box."""
    store, runs = sweep
    labels = {}
    for index in range(SPLITS[0][1]):  # the train clips come first
        clip = largest_is_target_clip(index)
        others = np.flatnonzero(clip["person_mask"].any(0) & (np.arange(clip["person_mask"].shape[1]) != clip["target_index"]))
        labels[str((runs.parent / "data" / "train" / f"clip_{index:03d}.npz").resolve())] = {"target": int(others[0])}
    run = tmp_path_factory.mktemp("misled") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(store, run, SETTING, SMALL_MODEL, labels=labels, progress=False)
    finally:
        torch.set_num_threads(threads)
    return run


def test_list_runs_shows_options_metrics_and_seed_groups(sweep):
    _, runs = sweep
    (runs / "notes").mkdir(exist_ok=True)  # a folder of no run is not listed
    rows = {r.name: r for r in list_runs(runs.parent)}
    assert set(rows) == {"sweep/lr-0", "sweep/seed-0", "sweep/seed-1"}
    common = {"train.epochs": EPOCHS, "train.lr": 3e-3, "train.warmup_fraction": 0.0, "train.patience": 100, "model.hidden": 16}
    for name, row in rows.items():
        assert row.problem is None and row.preset == "msgvip" and row.epochs_run == EPOCHS, name
        assert row.options.items() >= {**common, **({"train.lr": 0.0} if name.endswith("lr-0") else {})}.items(), name
        assert not {"train.seed", "train.device", "model.max_frames"} & set(row.options)  # never set runs apart
        assert {"val_rank@1", "val_mrr", "val_loss"} <= set(row.metrics) and 0 <= row.best_epoch <= EPOCHS
    assert rows["sweep/seed-1"].seed == 1
    assert "train.lr=0.0" in rows["sweep/lr-0"].options_str and "train.lr=0.003" in rows["sweep/seed-0"].options_str
    # the best row is the trainer's best epoch: best.pt's val metrics
    best = torch.load(runs / "seed-0" / "best.pt", weights_only=True)
    assert rows["sweep/seed-0"].best_epoch == best["epoch"] + 1 and rows["sweep/seed-0"].metrics["val_rank@1"] == pytest.approx(best["val"]["rank@1"])
    # test metrics come with their intervals from evaluate-test.json, only where it exists
    tested = rows["sweep/seed-0"]
    assert tested.test_clips == 60 and set(tested.intervals) >= {"test_rank@1", "test_mrr", "test_map_trapezoid"}
    lo, hi = tested.intervals["test_rank@1"]
    assert lo <= tested.metrics["test_rank@1"] <= hi
    assert "test_rank@1" not in rows["sweep/seed-1"].metrics and rows["sweep/seed-1"].metric_str("test_rank@1") == "-"

    (group,) = group_by_seed(list(rows.values()))  # the lr-0 run has no seed sibling
    assert group.runs == ("sweep/seed-0", "sweep/seed-1") and group.seeds == (0, 1) and group.options == rows["sweep/seed-0"].options
    values = [rows[n].metrics["val_loss"] for n in group.runs]  # the seeds differ here
    assert values[0] != values[1]
    assert group.mean["val_loss"] == pytest.approx(np.mean(values)) and group.std["val_loss"] == pytest.approx(np.std(values, ddof=1))
    assert "test_rank@1" not in group.mean  # only one of the two runs was evaluated
    assert group.metric_str("val_loss") == f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def test_best_epoch_follows_the_trainers_rule(sweep, tmp_path):
    # the trainer keeps the first epoch that beats the best val Rank@1 by more than min_delta,
    # which need not be the epoch of the highest value, and breaks ties on the val loss
    _, runs = sweep
    run = tmp_path / "run"
    shutil.copytree(runs / "seed-0", run, ignore=shutil.ignore_patterns("*.pt"))
    config = json.loads((run / "config.json").read_text())
    config["train"]["min_delta"] = 0.1
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.csv").write_text("epoch,val_loss,val_rank@1,val_mrr\n1,0.9,0.5,0.7\n2,0.8,0.58,0.75\n3,0.7,0.55,0.8\n")
    (row,) = list_runs(run)
    assert (row.name, row.epochs_run, row.best_epoch) == (".", 3, 1)
    assert row.metrics == {"val_loss": 0.9, "val_rank@1": 0.5, "val_mrr": 0.7, **{k: v for k, v in row.metrics.items() if k.startswith(("test_", "probe_"))}}
    assert row.options["train.min_delta"] == 0.1

    # a tie on val Rank@1 goes to the lower val loss: epoch 3, not epoch 2 (nor epoch 4, whose loss is higher)
    config["train"]["min_delta"] = 0.0
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.csv").write_text("epoch,val_loss,val_rank@1,val_mrr\n1,0.9,0.5,0.7\n2,0.8,0.6,0.75\n3,0.7,0.6,0.8\n4,0.75,0.6,0.9\n")
    (row,) = list_runs(run)
    assert (row.epochs_run, row.best_epoch, row.metrics["val_loss"]) == (4, 3, 0.7)


def test_a_run_from_before_an_option_shows_what_it_trained_with(sweep, tmp_path):
    """An old record lacks options added since; it is listed (and grouped) with the values it
    meant, so it never passes for a seed of today's default model."""
    from msgvip.ranker.model import RECORD_DEFAULTS

    _, runs = sweep
    run = tmp_path / "old"
    shutil.copytree(runs / "seed-0", run, ignore=shutil.ignore_patterns("*.pt"))
    config = json.loads((run / "config.json").read_text())
    for key in RECORD_DEFAULTS:
        del config["model"][key]
    (run / "config.json").write_text(json.dumps(config))
    (old,) = list_runs(run)
    assert {f"model.{k}": v for k, v in RECORD_DEFAULTS.items()}.items() <= old.options.items()
    (new,) = list_runs(runs / "seed-0")
    # (the fixture's runs train without a probe, so their model carries none: probe_prior is off in their record)
    assert not any(k in new.options for k in (f"model.{k}" for k in RECORD_DEFAULTS if k != "probe_prior"))


def test_damaged_runs_are_listed_with_their_problem(sweep, tmp_path):
    _, runs = sweep
    root = tmp_path / "runs"
    shutil.copytree(runs / "seed-0", root / "good", ignore=shutil.ignore_patterns("*.pt"))
    (root / "bad-config").mkdir()
    (root / "bad-config" / "config.json").write_text("{not json")
    (root / "no-config").mkdir()
    (root / "no-config" / "metrics.csv").write_text("epoch,val_rank@1\n1,0.5\n")
    shutil.copytree(root / "good", root / "wrong-types")
    config = json.loads((root / "good" / "config.json").read_text())
    (root / "wrong-types" / "config.json").write_text(json.dumps({**config, "families": 5}))
    shutil.copytree(root / "good", root / "bad-metrics")
    (root / "bad-metrics" / "metrics.csv").write_text("epoch,val_rank@1\n1,zero\n")
    shutil.copytree(root / "good", root / "bad-test")
    (root / "bad-test" / EVALUATE_FILE).write_text("[]")
    rows = {r.name: r for r in list_runs(root)}
    assert list(rows) == ["bad-config", "bad-metrics", "bad-test", "good", "no-config", "wrong-types"]
    assert rows["good"].problem is None
    problems = {name: r.problem for name, r in rows.items()}
    assert "config.json: unreadable" in problems["bad-config"] and "damaged" in problems["bad-config"]
    assert "no config.json" in problems["no-config"]
    assert "config.json: not an msgvip run config (TypeError" in problems["wrong-types"]
    assert "metrics.csv: unreadable" in problems["bad-metrics"] and rows["bad-metrics"].metrics.get("test_rank@1") is not None
    assert f"{EVALUATE_FILE}: unreadable" in problems["bad-test"] and "val_rank@1" in rows["bad-test"].metrics
    assert all("\n" not in p for p in problems.values() if p)  # one line each
    # a damaged config is in no group; the rest still render, as table and as JSON
    assert all("bad-config" not in g.runs for g in group_by_seed(list(rows.values())))
    headers, cells = runs_table(list(rows.values()))
    assert len(cells) == 6 and cells[0][headers.index("OK")] == "no" and cells[3][headers.index("OK")] == "yes"
    assert runs_problems(list(rows.values()))[0] == f"bad-config: {problems['bad-config']}"
    assert json.loads(json.dumps(json_ready(runs_json(list(rows.values()), []))))["runs"][3]["name"] == "good"
    with pytest.raises(ConfigError, match="no such folder of runs"):
        list_runs(tmp_path / "nowhere")


def test_sort_and_render(sweep):
    _, runs = sweep
    rows = list_runs(runs)
    by_rank = sort_runs(rows, "val_rank@1")
    assert [r.metrics["val_rank@1"] for r in by_rank] == sorted((r.metrics["val_rank@1"] for r in rows), reverse=True)
    by_loss = sort_runs(rows, "val_loss")
    assert [r.metrics["val_loss"] for r in by_loss] == sorted(r.metrics["val_loss"] for r in rows)
    tested = sort_runs(rows, "test_mrr")
    assert [r.name for r in tested][-1] == "seed-1"  # no test metrics: last
    with pytest.raises(ConfigError, match="--sort val_nope: no run has that metric; choose from"):
        sort_runs(rows, "val_nope")
    # the settings all runs share are stated once; the table shows what sets each apart
    shared = shared_options(rows)
    assert shared["model.hidden"] == 16 and shared["train.epochs"] == EPOCHS and "train.lr" not in shared
    assert shared_options_str(rows).startswith("model.event_heads=2 ") and shared_options(rows[:1]) == {}
    headers, cells = runs_table(rows)
    by_name = {c[0]: c for c in cells}
    assert by_name["seed-0"][headers.index("OPTIONS")] == "train.lr=0.003" and by_name["lr-0"][headers.index("OPTIONS")] == "train.lr=0.0"
    assert by_name["seed-0"][headers.index("TEST R@1")].count("[") == 1  # the value and its interval
    headers, cells = groups_table(group_by_seed(rows), shared)
    assert len(cells) == 1 and cells[0][headers.index("SEEDS")] == "0,1" and cells[0][headers.index("OPTIONS")] == "train.lr=0.003"
    assert "±" in cells[0][headers.index("VAL R@1")]
    record = json.loads(json.dumps(json_ready(runs_json(rows, group_by_seed(rows))), allow_nan=False))
    assert {r["name"] for r in record["runs"]} == {"seed-0", "seed-1", "lr-0"} and record["groups"][0]["seeds"] == [0, 1]
    assert runs_json([], []) == {"runs": [], "groups": []}


def test_compare_two_seeds_and_a_misled_run(sweep, misled):
    store, runs = sweep
    seeds = compare_runs(runs / "seed-0", runs / "seed-1", store)
    assert seeds["clips"] == 60 and seeds["split"] == "test" and seeds["paired"]["n"] == 60
    for name in ("rank@1", "mrr"):
        metric = seeds["paired"]["metrics"][name]
        assert metric["a"] == pytest.approx(seeds["a"][name]) and metric["b"] == pytest.approx(seeds["b"][name])
        assert metric["interval"][0] <= 0 <= metric["interval"][1] and not metric["excludes_zero"], (name, metric)

    worse = compare_runs(misled, runs / "seed-0", store)
    for name in ("rank@1", "mrr"):
        metric = worse["paired"]["metrics"][name]
        assert metric["diff"] > 0.2 and metric["interval"][0] > 0 and metric["excludes_zero"], (name, metric)
    assert worse["b"]["rank@1"] == pytest.approx(json.loads((runs / "seed-0" / EVALUATE_FILE).read_text())["model"]["rank@1"])
    reverse = compare_runs(runs / "seed-0", misled, store)["paired"]["metrics"]["rank@1"]
    assert reverse["diff"] == pytest.approx(-worse["paired"]["metrics"]["rank@1"]["diff"]) and reverse["interval"][1] < 0

    headers, cells = comparison_table(worse)
    assert headers == ["METRIC", "A", "B", "B - A", "95% INTERVAL", "DIFFERENT"] and [c[0] for c in cells] == ["rank@1", "mrr"]
    assert cells[0][3].startswith("+") and cells[0][5] == "yes"
    assert comparison_summary_str(worse).startswith("60 labeled clips of split 'test'")
    assert json.loads(json.dumps(json_ready(worse), allow_nan=False))["paired"]["metrics"]["mrr"]["excludes_zero"] is True


def test_compare_refuses_runs_on_different_clips(sweep, tmp_path):
    store, runs = sweep
    # run B scored from another store whose dataset of the same name holds other clips
    data = tmp_path / "data"
    for i in range(3):
        save_clip(data / "val" / f"x_{i}.npz", largest_is_target_clip(500 + i))
    other = FeatureStore.open(Path(run_extract(data, IN_PROCESS, cache_dir=tmp_path / "cache", progress=False).store))
    with pytest.raises(ConfigError, match=r"seed-0 and \S*seed-1 are not scored on the same clips of split 'val': 12 only in \S*seed-0, 3 only in \S*seed-1 \(e.g. val/"):
        compare_runs(runs / "seed-0", runs / "seed-1", store, split="val", store_b=other)


def test_runs_ls_groups_what_differs_only_where_it_runs_and_fits_120_columns(sweep, tmp_path):
    from click.testing import CliRunner

    from msgvip.cli import main

    _, runs = sweep
    folder = tmp_path / "runs"
    shutil.copytree(runs, folder)
    for name, changes in (("seed-2", {"seed": 2, "logger": "tensorboard", "keep": "best", "threads": 1, "device": "cuda"}),
                          ("odd-lr", {"lr": 0.0027082428815641815, "weight_decay": 0.123456789, "margin": 0.77777777, "pairwise_weight": 0.3333333})):  # fmt: skip
        shutil.copytree(runs / "seed-1", folder / name)
        config = json.loads((folder / name / "config.json").read_text())
        config["train"].update(changes)
        (folder / name / "config.json").write_text(json.dumps(config))
    (group,) = [g for g in group_by_seed(list_runs(folder)) if len(g.runs) > 1]
    assert group.runs == ("seed-0", "seed-1", "seed-2")
    result = CliRunner().invoke(main, ["runs", "ls", str(folder)], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert max(map(len, result.output.splitlines())) <= 120, result.output
    wide = CliRunner().invoke(main, ["runs", "ls", str(folder), "--wide"], env={"COLUMNS": "120"})
    assert "train.lr=0.00271 " in wide.output and "0.0027082428815641815" not in wide.output
    assert "VAL MRR" in wide.output and "VAL MRR" not in result.output
