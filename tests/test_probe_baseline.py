"""The probe as every run's baseline: fitted on the train split, chosen on val, saved with the run,
and set beside the model by train, evaluate, runs ls, compare and the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from msgvip.cli import main
from msgvip.data.synthetic import DemoDataConfig, write_demo_data
from msgvip.pipelines.extract import run_extract
from msgvip.ranker.dataset import StoreDataset
from msgvip.ranker.metrics import ranking_metrics
from msgvip.ranker.probe import FittedProbe, _fitted, _geometry_columns, _person_rows, _score, _Split, _sweep_suite, probe_store
from msgvip.store.feature_store import FeatureStore


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> FeatureStore:
    """Demo clips whose geometry a probe reads well (test Rank@1 far above chance)."""
    root = tmp_path_factory.mktemp("probe-baseline")
    write_demo_data(root / "data", DemoDataConfig(clips=90, frames=12, persons=5, height=48, width=80, seed=3))
    return FeatureStore.open(Path(run_extract(root / "data", cache_dir=root / "cache", progress=False).store))


@pytest.fixture(scope="module")
def starved_run(store, tmp_path_factory) -> tuple[Path, str]:
    """A run whose model barely learns (one epoch at a tiny learning rate, without the probe in the
    model): its probe wins by construction. Returns (run directory, what `train` printed)."""
    run = tmp_path_factory.mktemp("runs") / "starved"
    result = CliRunner().invoke(main, ["train", "--store", str(store.path), "--out", str(run), "--epochs", "1", "--lr", "1e-9",
                                       "--set", "model.probe_prior=false"])  # fmt: skip
    assert result.exit_code == 0, result.output
    return run, result.output


def test_a_run_below_its_probe_says_so_in_train_and_evaluate(store, starved_run):
    run, printed = starved_run
    config = json.loads((run / "config.json").read_text())
    probe = config["probe"]
    assert probe["scorer"] in ("logreg", "linear_svm", "knn") and probe["families"] == ["geometry"] and probe["val"]["rank@1"] > 0.6
    assert "\nprobe " in printed and "val split" in printed
    assert "NOTE: the model's best val Rank@1" in printed and "is below its probe's" in printed
    history = (run / "metrics.csv").read_text().splitlines()
    assert "probe_val_rank@1" in history[0].split(",")

    evaluated = CliRunner().invoke(main, ["evaluate", str(run), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    record = json.loads(evaluated.stdout)
    assert record["probe"]["about"].startswith(probe["scorer"]) and record["probe"]["val_rank@1"] == probe["val"]["rank@1"]
    assert set(record["probe"]["intervals"]) >= {"rank@1", "mrr"} and record["probe"]["n"] == record["model"]["n"]
    assert record["below_probe"] and record["probe"]["rank@1"] > record["model"]["rank@1"]
    text = CliRunner().invoke(main, ["evaluate", str(run)])
    assert "\nprobe " in text.output and "is below its probe's" in text.output


def test_runs_ls_compare_and_the_report_show_the_probe(store, starved_run):
    run, _ = starved_run
    assert CliRunner().invoke(main, ["evaluate", str(run)]).exit_code == 0  # writes evaluate-test.json, which runs ls reads
    listing = json.loads(CliRunner().invoke(main, ["runs", "ls", str(run), "--json"]).stdout)
    (row,) = listing["runs"]
    assert {"probe_val_rank@1", "probe_test_rank@1"} <= set(row["metrics"]) and "probe_test_rank@1" in row["intervals"]

    compared = CliRunner().invoke(main, ["compare", str(run), "--probe", "--json"])
    assert compared.exit_code == 0, compared.output
    result = json.loads(compared.stdout)
    assert result["run_a"].startswith("probe of") and result["paired"]["n"] == result["a"]["n"] == result["b"]["n"]
    assert result["paired"]["metrics"]["rank@1"]["diff"] == pytest.approx(result["b"]["rank@1"] - result["a"]["rank@1"])
    both = CliRunner().invoke(main, ["compare", str(run)])
    assert both.exit_code == 2 and "--probe" in both.output

    page = CliRunner().invoke(main, ["report", str(run), "--out", str(run / "page")])
    assert page.exit_code == 0, page.output
    html = (run / "page" / "index.html").read_text()
    assert "<td>probe</td>" in html and "is below its probe" in html


def test_no_probe_trains_without_one(store, tmp_path):
    run = tmp_path / "bare"
    result = CliRunner().invoke(main, ["train", "--store", str(store.path), "--out", str(run), "--epochs", "1", "--no-probe"])
    assert result.exit_code == 0, result.output
    assert "probe" not in json.loads((run / "config.json").read_text()) and not (run / "probe.npz").exists()
    assert "probe" not in json.loads(CliRunner().invoke(main, ["evaluate", str(run), "--json"]).stdout)
    compared = CliRunner().invoke(main, ["compare", str(run), "--probe"])
    assert compared.exit_code == 1 and "has no probe baseline" in compared.output


def test_the_saved_probe_scores_as_it_was_chosen(store, starved_run):
    run, _ = starved_run
    probe = FittedProbe.load(run / "probe.npz")
    data = {s: StoreDataset(store, s, ["geometry"], "yes") for s in ("train", "val", "test")}
    val = ranking_metrics(probe.scores(data["val"]), data["val"].targets.numpy(), data["val"].valid_slots().numpy())
    assert val["rank@1"] == probe.val["rank@1"] and val["mrr"] == pytest.approx(probe.val["mrr"])
    # the same choice `msgvip probe` reports: the row with the best val Rank@1 (then MRR)
    rows = [r for r in probe_store(store, families=["geometry"]).rows if r.param is not None]
    chosen = max(rows, key=lambda r: (r.val["rank@1"], r.val["mrr"]))
    assert (chosen.scorer, chosen.value) == (probe.scorer, probe.value)
    test = ranking_metrics(probe.scores(data["test"]), data["test"].targets.numpy(), data["test"].valid_slots().numpy())
    assert test["rank@1"] == pytest.approx(chosen.test["rank@1"])


def test_every_scorer_of_the_suite_scores_like_its_fitted_pipeline(store):
    # linear scorers keep their weights, k-NN its standardised training persons
    data = {s: StoreDataset(store, s, ["geometry"], "yes") for s in ("train", "val")}
    geometry = _geometry_columns(store)
    persons = {s: _person_rows(d, geometry) for s, d in data.items()}
    splits = {s: _Split(data[s], persons[s]) for s in data}
    labeled = splits["train"].labeled
    fits = _sweep_suite(["geometry"], persons, splits)
    assert {f[2] for f in fits} == {"logreg", "linear_svm", "knn"}
    for fit in fits:
        probe = _fitted(fit, ["geometry"], geometry, persons["train"].columns[labeled], splits["train"].is_target[labeled], 0.0)
        mine, theirs = probe.person_scores(persons["val"].columns), _score(fit[6], persons["val"].columns[:, fit[1]])
        np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-4, err_msg=fit[2])


def test_a_damaged_probe_file_is_a_one_line_error(store, starved_run, tmp_path):
    path = tmp_path / "probe.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="unreadable probe"):
        FittedProbe.load(path)


def test_cross_fitted_scores_of_a_clip_come_from_probes_fitted_without_it(store, starved_run):
    run, _ = starved_run
    probe = FittedProbe.load(run / "probe.npz")
    train = StoreDataset(store, "train", ["geometry"], "yes")
    clip = int(np.flatnonzero(train.valid_slots().numpy().sum(1) >= 3)[0])
    entry, others = train.entries[clip], np.flatnonzero(train.valid_slots().numpy()[clip])
    moved = int(others[others != int(train.targets[clip])][0])
    relabeled = StoreDataset(store, "train", ["geometry"], "yes", labels={entry.key: {"target": moved}})
    before, after = probe.cross_fitted(train), probe.cross_fitted(relabeled)
    np.testing.assert_array_equal(before[clip], after[clip])  # its own label never reached the fit that scores it
    assert not np.array_equal(before, after)  # ... but the fits that learned from it moved
    valid = train.valid_slots().numpy()
    assert np.all(before[~valid] == 0) and before.dtype == np.float32


def test_a_probe_prior_model_starts_as_its_probe_and_is_scored_with_it(store, tmp_path):
    run = tmp_path / "prior"
    result = CliRunner().invoke(main, ["train", "--store", str(store.path), "--out", str(run), "--epochs", "1", "--lr", "1e-9", "--set", "model.probe_prior=true"])
    assert result.exit_code == 0, result.output
    record = json.loads(CliRunner().invoke(main, ["evaluate", str(run), "--json"]).stdout)
    # zero-initialised score layers and a learning rate too small to move them: the model is its probe
    assert record["model"]["rank@1"] == record["probe"]["rank@1"] and record["model"]["mrr"] == pytest.approx(record["probe"]["mrr"])
    alone = CliRunner().invoke(main, ["train", "--store", str(store.path), "--out", str(tmp_path / "no"), "--epochs", "1",
                                      "--set", "model.probe_prior=true", "--no-probe"])  # fmt: skip
    assert alone.exit_code == 0 and "model.probe_prior is off for this run: it has no probe (train.probe is off)" in alone.output
    assert json.loads((tmp_path / "no" / "config.json").read_text())["model"]["probe_prior"] is False


def test_a_probe_prior_model_starts_exactly_as_its_prior():
    import torch

    from msgvip.ranker.model import ImportanceRanker, RankerConfig

    model = ImportanceRanker(RankerConfig(hidden=16, gat_heads=2, temporal_heads=2, probe_prior=True), {"geometry": 18}).eval()
    mask = torch.ones(2, 3, 4, dtype=torch.bool)
    features = {"geometry": torch.randn(2, 3, 4, 18)}
    prior = torch.randn(2, 4)
    torch.testing.assert_close(model(features, mask, prior=prior), prior)  # untrained: the probe's ranking, exactly
    with pytest.raises(ValueError, match=r"prior \(the probe's scores\) must be \(B, N\) = \(2, 4\)"):
        model(features, mask, prior=prior[:, :3])
