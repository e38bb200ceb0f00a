"""Probes (msgvip.ranker.probe): simple scorers on time-pooled per-person statistics of a store.

The store holds synthetic demo clips: geometry computed by the geometry extractor itself, plus an
``appearance`` family written here whose only cue is a direction the target's embedding usually
leans along, so each family has a cue of its own.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from click.testing import CliRunner

from msgvip.cli import main
from msgvip.config import ConfigError
from msgvip.data.clip import read_clip
from msgvip.data.synthetic import DemoDataConfig, write_demo_data
from msgvip.extract.geometry import GEOMETRY_FEATURES, GeometryExtractor
from msgvip.ranker import StoreDataset
from msgvip.ranker.probe import PROBE_SPLITS, _geometry_relations, _reduce, format_probe_table, probe_store
from msgvip.store import ArraySpec, FeatureStore, Snapshot, SnapshotEntry, fingerprint, open_storage
from msgvip.store.feature_store import MASK_ARRAY

DATA = DemoDataConfig(clips=200, frames=8, persons=6, height=48, width=80, seed=5)
APPEARANCE_DIM = 32
P_TARGET_LEANS = 0.7  # how often the target's embedding carries the appearance cue
SCORERS = ("logreg", "linear_svm", "knn")
HEURISTICS = ("largest_box", "most_central")
G = len(GEOMETRY_FEATURES)


def _appearance(clip, index: int) -> np.ndarray:
    """(T, N, APPEARANCE_DIM) float16: a random vector per person plus per-frame noise; the
    target's leans along one fixed direction in P_TARGET_LEANS of the clips."""
    rng = np.random.default_rng([11, index])
    t, n = clip.person_mask.shape
    person = rng.normal(0.0, 1.0, (n, APPEARANCE_DIM))
    if rng.random() < P_TARGET_LEANS:
        person[clip.target, 0] += 2.5
    embedding = person[None] + rng.normal(0.0, 0.3, (t, n, APPEARANCE_DIM))  # (T, N, D)
    return np.where(clip.person_mask[..., None], embedding, 0.0).astype(np.float16)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> FeatureStore:
    """Demo clips in a store of two families, snapshot 'demo' with the demo's train/val/test splits."""
    root = tmp_path_factory.mktemp("probe")
    write_demo_data(root / "data", DATA)
    geometry = GeometryExtractor()
    specs = [*geometry.arrays(), ArraySpec("appearance", (APPEARANCE_DIM,), "float16")]
    config = {"features": {"geometry": geometry.spec(), "appearance": {"test_probe": APPEARANCE_DIM}}}
    store = FeatureStore.create(open_storage(root / "cache"), fingerprint(config), config, specs)
    entries = []
    with store.writer() as writer:
        for index, path in enumerate(sorted((root / "data").rglob("*.npz"))):
            clip = read_clip(path)
            writer.add(clip.content_hash, {MASK_ARRAY: clip.person_mask, **geometry.extract([clip])[0], "appearance": _appearance(clip, index)})
            entries.append(SnapshotEntry(f"{path.parent.name}/{path.name}", clip.content_hash, path.parent.name, clip.target, clip.scene, str(path)))
    store.write_snapshot(Snapshot("demo", str(root / "data"), time.time(), tuple(entries)))
    return FeatureStore.open(store.path)


@pytest.fixture(scope="module")
def geometry_report(store):
    return probe_store(store, "demo", ["geometry"])


def chance_rank1(store: FeatureStore, split: str = "test") -> float:
    """Expected Rank@1 of a random ranking: the mean of 1 / persons over the split's clips."""
    return float(np.mean(1.0 / StoreDataset(store, split, ["geometry"], "yes", dataset="demo").valid_slots().numpy().sum(1)))


def row(report, features: str, scorer: str):
    (found,) = [r for r in report.rows if r.features == features and r.scorer == scorer]
    return found


def test_time_statistics_of_runs_of_rows():
    # person A seen 3 times (1, 3, 2), person B once (5): rows grouped by person, time-ordered
    values = np.array([[1.0, 0.0], [3.0, 0.0], [2.0, 0.0], [5.0, -1.0]], np.float32)  # (V=4, D=2)
    mean, top, std, delta, change = _reduce(values, np.array([0, 3]), np.array([3, 1]))
    np.testing.assert_allclose(mean, [[2, 0], [5, -1]])
    np.testing.assert_allclose(top, [[3, 0], [5, -1]])
    np.testing.assert_allclose(std, [[np.sqrt(2 / 3), 0], [0, 0]], rtol=1e-6)
    np.testing.assert_allclose(delta, [[1, 0], [0, 0]])
    np.testing.assert_allclose(change, [[1.5, 0], [0, 0]])  # (|3 - 1| + |2 - 3|) / 2; B's jump from A's last row is not B's


def test_inflow_is_the_others_motion_toward_a_person():
    """Slot 0 stands still, slot 1 walks toward it, slot 2 is absent (with garbage that must not count)."""
    columns = list(GEOMETRY_FEATURES)
    geometry = np.full((1, 2, 3, G), 9.0, np.float32)  # (B, T, N, G)
    cx, cy, vx, vy = (columns.index(c) for c in ("cx", "cy", "vx", "vy"))
    for t, x1 in enumerate((0.1, 0.2)):
        geometry[0, t, 0, [cx, cy, vx, vy]] = 0.5, 0.5, 0.0, 0.0
        geometry[0, t, 1, [cx, cy, vx, vy]] = x1, 0.5, 0.1 * t, 0.0
    mask = np.array([[[True, True, False], [True, True, False]]])  # (B, T, N)
    relations = _geometry_relations(geometry, mask, columns)  # (B, N, 2): inflow, distance
    np.testing.assert_allclose(relations[0, :2], [[0.1 / 2, 0.35], [0.0, 0.35]], rtol=1e-5)  # slot 1 moves in the second frame only


def test_geometry_probe_finds_the_demo_cues_the_heuristics_miss(store, geometry_report):
    report, chance = geometry_report, chance_rank1(store)
    assert report.families == ("geometry",) and report.dataset == "demo" and report.fingerprint == store.fingerprint
    assert {(r.features, r.scorer) for r in report.rows} == {("geometry", s) for s in (*SCORERS, *HEURISTICS)}  # no "all" for one family
    assert sum(report.clips.values()) == DATA.clips and all(report.persons[s] > report.clips[s] for s in PROBE_SPLITS)
    # presence (3) + mean and its 4 geometry extras, max, std, last - first, mean change, (mean + extras) minus the clip's
    assert row(report, "geometry", "logreg").columns == 3 + (G + 4) + 4 * G + (G + 4)
    best_heuristic = max(row(report, "geometry", h).test["rank@1"] for h in HEURISTICS)
    logreg = row(report, "geometry", "logreg").test
    print(f"chance {chance:.3f}, heuristics {best_heuristic:.3f}, geometry logreg {logreg}")
    assert logreg["n"] == report.clips["test"]
    assert logreg["rank@1"] >= chance + 0.3 and logreg["rank@1"] >= best_heuristic + 0.2
    for scorer in SCORERS:
        metrics = row(report, "geometry", scorer).test
        assert metrics["rank@1"] > chance + 0.1
        assert metrics["rank@1"] <= metrics["rank@2"] <= metrics["rank@3"] <= 1 and metrics["rank@1"] <= metrics["mrr"] <= 1


def test_each_family_alone_and_all_together(store):
    report = probe_store(store, "demo")
    assert set(report.families) == {"appearance", "geometry"}
    expected = {(f, s) for f in ("appearance", "geometry", "all") for s in SCORERS} | {("geometry", h) for h in HEURISTICS}
    assert [(r.features, r.scorer) for r in report.rows if r.features == "all"] == [("all", s) for s in SCORERS]
    assert {(r.features, r.scorer) for r in report.rows} == expected
    width = {f: row(report, f, "logreg").columns for f in ("appearance", "geometry", "all")}
    assert width["appearance"] == 3 + 6 * APPEARANCE_DIM and width["all"] == width["appearance"] + width["geometry"] - 3  # presence shared
    chance = chance_rank1(store)
    appearance = row(report, "appearance", "logreg").test["rank@1"]
    print(f"chance {chance:.3f}, appearance {appearance:.3f}, all {row(report, 'all', 'logreg').test['rank@1']:.3f}")
    # the cue leans the target's embedding in 70% of clips: well above chance, but below what a probe
    # that also saw geometry would reach
    assert chance + 0.3 <= appearance < 0.95
    # "all" sees geometry's cues too, which hold in more clips than appearance's
    assert row(report, "all", "logreg").test["rank@1"] >= appearance + 0.05


def test_hyper_parameters_are_chosen_on_val_only(store, geometry_report):
    """Moving every test target to another person changes the test metrics, not what val chose."""
    test = StoreDataset(store, "test", ["geometry"], "yes", dataset="demo")
    valid = test.valid_slots().numpy()
    moved = {}
    for entry, target, slots in zip(test.entries, test.targets.tolist(), valid):
        others = np.flatnonzero(slots)
        moved[entry.key] = {"target": int(others[others != target][0])}
    report = probe_store(store, "demo", ["geometry"], labels=moved)
    assert len(report.rows) == len(geometry_report.rows)
    for before, after in zip(geometry_report.rows, report.rows):
        assert (after.features, after.scorer, after.param, after.value, after.val) == (before.features, before.scorer, before.param, before.value, before.val)
    assert row(report, "geometry", "logreg").test["rank@1"] < row(geometry_report, "geometry", "logreg").test["rank@1"] - 0.3


def test_table_and_json(geometry_report):
    table = format_probe_table(geometry_report)
    lines = table.splitlines()
    assert geometry_report.fingerprint[:12] in lines[0] and f"test {geometry_report.clips['test']} clips" in lines[0]
    assert lines[2].split() == ["FEATURES", "SCORER", "PARAM", "COLUMNS", "VAL@1", "CLIPS", "RANK@1", "RANK@2", "RANK@3", "MRR"]
    assert len(lines) == 3 + len(geometry_report.rows)
    for line, r in zip(lines[3:], geometry_report.rows):
        metrics = [f"{r.val['rank@1']:.3f}", str(r.test["n"]), *(f"{r.test[k]:.3f}" for k in ("rank@1", "rank@2", "rank@3", "mrr"))]
        assert line.split() == [r.features, r.scorer, r.param_str, str(r.columns or "-"), *metrics]
    assert row(geometry_report, "geometry", "logreg").param_str.startswith("C=") and row(geometry_report, "geometry", "knn").param_str.startswith("k=")
    record = json.loads(json.dumps(geometry_report.to_json(), allow_nan=False))  # standard JSON: no NaN anywhere
    assert record["fingerprint"] == geometry_report.fingerprint and record["families"] == ["geometry"]
    assert [(r["features"], r["scorer"]) for r in record["rows"]] == [(r.features, r.scorer) for r in geometry_report.rows]
    assert record["rows"][0]["test"] == geometry_report.rows[0].test and set(record["clips"]) == set(PROBE_SPLITS)


def test_a_dataset_without_val_or_test_is_refused_naming_store_and_splits(store):
    entries = [e for e in store.snapshot("demo").entries if e.split != "test"]
    store.write_snapshot(Snapshot("no-test", "/nowhere", time.time(), tuple(entries)))
    with pytest.raises(ConfigError) as caught:
        probe_store(store, dataset="no-test", families=["geometry"])
    message = str(caught.value)
    counts = {s: sum(e.split == s for e in entries) for s in ("train", "val")}
    assert "\n" not in message and store.location in message and "'no-test'" in message and str(counts) in message, message


def test_a_target_slot_without_a_person_is_refused_naming_the_clip(store):
    test = StoreDataset(store, "test", ["geometry"], "yes", dataset="demo")
    clip = int(np.flatnonzero(~test.valid_slots().numpy().all(1))[0])  # a clip with an empty slot
    empty = int(np.flatnonzero(~test.valid_slots().numpy()[clip])[0])
    key = test.entries[clip].key
    with pytest.raises(ConfigError, match=f"clip {key} \\({empty}\\) holds no person"):
        probe_store(store, dataset="demo", families=["geometry"], labels={key: {"target": empty}})


def test_probe_command_prints_json_and_names_a_bad_family(store):
    result = CliRunner().invoke(main, ["probe", "--store", str(store.path), "--dataset", "demo", "--features", "geometry", "--json"])
    assert result.exit_code == 0, result.output
    assert [(r["features"], r["scorer"]) for r in json.loads(result.stdout)["rows"]][0] == ("geometry", "logreg")
    bad = CliRunner().invoke(main, ["probe", "--store", str(store.path), "--dataset", "demo", "--features", "nope"])
    assert bad.exit_code == 1 and "no feature arrays ['nope']" in bad.output
