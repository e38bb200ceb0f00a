"""The whole chain on synthetic clips: the learned ranker must clearly beat both heuristics."""

from __future__ import annotations

import json
from msgvip.data.synthetic import DemoDataConfig
from msgvip.pipelines.demo import run_demo
from msgvip.store import FeatureStore, store_info


def test_model_from_a_store_beats_both_heuristics(tmp_path):
    data = DemoDataConfig(clips=140, frames=12, persons=6, seed=3, splits=(("train", 0.6), ("val", 0.25), ("test", 0.15)))
    small = ("model.hidden=32", "model.temporal_layers=1", "train.epochs=10", "train.lr=2e-3")
    result = run_demo(tmp_path / "demo", ("geometry",), data=data, settings=small, progress=False)
    assert json.loads((result.run_dir / "config.json").read_text())["fingerprint"] == result.extract.fingerprint
    for split, metrics in (("val", result.val), ("test", result.test)):
        ours = metrics["model"]["rank@1"]
        heuristics = max(metrics["largest_box"]["rank@1"], metrics["most_central"]["rank@1"])
        print(f"{split}: model {ours:.2f}, largest box {metrics['largest_box']['rank@1']:.2f}, most central {metrics['most_central']['rank@1']:.2f}")
        assert ours >= heuristics + 0.2, f"{split}: model {ours:.2f} vs best heuristic {heuristics:.2f}"


def test_demo_runs_every_family_with_local_random_backbones(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the demo must never need the hub
    data = DemoDataConfig(clips=30, frames=6, persons=4, seed=1)
    result = run_demo(tmp_path / "demo", data=data, settings=("model.hidden=16", "model.temporal_heads=4", "train.epochs=2"))
    assert "RANDOMLY initialised" in capsys.readouterr().out
    assert result.extract.ok and result.extract.written == 30
    config = json.loads((result.run_dir / "config.json").read_text())
    assert set(config["families"]) == {"appearance", "face", "geometry", "pose"}
    assert result.test["clips"] > 0 and (result.run_dir / "best.pt").exists()
    store = FeatureStore.open(result.extract.store)
    models = store_info(store.storage, store.fingerprint).models  # what `cache ls` shows
    assert {m.split("@")[0] for m in models} == {"dinov2", "vitpose"}


def test_the_demos_run_resumes_with_its_own_settings_alone(tmp_path):
    from click.testing import CliRunner

    from msgvip.cli import main

    data = DemoDataConfig(clips=30, frames=6, persons=4, seed=2)
    result = run_demo(tmp_path / "demo", ("geometry",), data=data, settings=("model.hidden=16", "model.temporal_heads=4", "train.epochs=2"), progress=False)
    resumed = CliRunner().invoke(main, ["train", "--out", str(result.run_dir), "--resume", "--epochs", "3"])  # no store, no settings
    assert resumed.exit_code == 0, resumed.output
    record = json.loads((result.run_dir / "config.json").read_text())
    assert record["train"]["epochs"] == 3 and record["model"]["hidden"] == 16
    assert [line.split(",")[0] for line in (result.run_dir / "metrics.csv").read_text().splitlines()[1:]][-1] == "3"
