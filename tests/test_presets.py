"""Every model preset trains end to end through `train()` on a demo store and beats both
heuristics on val; presets come from the config file's [model] preset or `--model`."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from msgvip.cli import main
from msgvip.data.clip import read_clip
from msgvip.data.synthetic import DemoDataConfig, write_demo_data
from msgvip.extract.geometry import GeometryExtractor, SvipBoxExtractor
from msgvip.ranker import TrainConfig, train
from msgvip.ranker.model import RankerConfig
from msgvip.ranker.presets import PRESETS, preset_named
from msgvip.ranker.rgt import RgtConfig
from msgvip.ranker.svip import SvipConfig
from msgvip.store import ArraySpec, FeatureStore, Snapshot, SnapshotEntry, fingerprint, open_storage
from msgvip.store.feature_store import MASK_ARRAY

DATA = DemoDataConfig(clips=140, frames=12, persons=6, height=48, width=80, seed=3, splits=(("train", 0.7), ("val", 0.3)))
APPEARANCE_DIM = 16
TINY = {
    "msgvip": RankerConfig(hidden=32, gat_heads=2, temporal_heads=2, event_heads=2, pool_heads=2, relation_heads=2, ff_mult=2),
    "svip": SvipConfig(vision_dim=APPEARANCE_DIM, geom_hidden=16, geom_dim=16, fused_dim=32, gat_hidden=32, gat_heads=2, d_model=32,
                       temporal_heads=4, ff_dim=64, pool_heads=2, pool_ff_dim=32, pool_dim=32, score_hidden=16, gate_hidden=16),
    "rgt": RgtConfig(hidden=32, dropout=0.0),
}
LR = {"msgvip": 3e-3, "svip": 1e-3, "rgt": 3e-3}


def _appearance(clip, index: int) -> np.ndarray:
    """(T, N, D) float16 stand-ins for DINOv2 CLS features: a random vector per person plus noise."""
    rng = np.random.default_rng([7, index])
    t, n = clip.person_mask.shape
    embedding = rng.normal(0.0, 1.0, (n, APPEARANCE_DIM))[None] + rng.normal(0.0, 0.3, (t, n, APPEARANCE_DIM))
    return np.where(clip.person_mask[..., None], embedding, 0.0).astype(np.float16)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> FeatureStore:
    """Demo clips with geometry, svip_box and appearance rows, written with the store's writer."""
    root = tmp_path_factory.mktemp("presets")
    write_demo_data(root / "data", DATA)
    extractors = [GeometryExtractor(), SvipBoxExtractor()]
    specs = [*(a for e in extractors for a in e.arrays()), ArraySpec("appearance", (APPEARANCE_DIM,), "float16")]
    config = {"features": {**{e.name: e.spec() for e in extractors}, "appearance": {"test_presets": APPEARANCE_DIM}}}
    store = FeatureStore.create(open_storage(root / "cache"), fingerprint(config), config, specs)
    entries = []
    with store.writer() as writer:
        for index, path in enumerate(sorted((root / "data").rglob("*.npz"))):
            clip = read_clip(path)
            rows = {k: v for e in extractors for k, v in e.extract([clip])[0].items()}
            writer.add(clip.content_hash, {MASK_ARRAY: clip.person_mask, **rows, "appearance": _appearance(clip, index)})
            entries.append(SnapshotEntry(f"{path.parent.name}/{path.name}", clip.content_hash, path.parent.name, clip.target, clip.scene, str(path)))
    store.write_snapshot(Snapshot("demo", str(root / "data"), time.time(), tuple(entries)))
    return FeatureStore.open(store.path)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread on 2 shared cores only adds contention
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_preset_trains_end_to_end_and_beats_both_heuristics(store, tmp_path, name):
    families = ["geometry"] if name != "svip" else None  # svip takes its own families (appearance + svip_box)
    config = TrainConfig(epochs=8, batch_size=8, lr=LR[name], weight_decay=0.01, warmup_fraction=0.0, patience=8, device="cpu")
    summary = train(store, tmp_path / name, config, TINY[name], families=families, progress=False)
    record = (tmp_path / name / "config.json").read_text()
    assert f'"model_preset": "{name}"' in record
    ours = summary.val["model"]["rank@1"]
    heuristics = max(summary.val["largest_box"]["rank@1"], summary.val["most_central"]["rank@1"])
    print(f"{name}: val Rank@1 {ours:.3f}, best heuristic {heuristics:.3f}")
    assert ours > heuristics + 0.1, (name, ours, heuristics)


def test_the_config_file_and_the_flag_pick_the_preset_and_its_training_defaults(store, tmp_path):
    assert preset_named("svip").train_defaults["lr"] == 5e-5 != TrainConfig().lr
    toml = tmp_path / "exp.toml"
    toml.write_text('[model]\npreset = "rgt"\nhidden = 16\n[train]\nepochs = 1\nbatch_size = 16\n')
    for flags, preset in (([], "rgt"), (["--model", "msgvip"], "msgvip")):
        out = tmp_path / preset
        result = CliRunner().invoke(main, ["train", "--store", str(store.path), "--config", str(toml), "--out", str(out), "--device", "cpu", *flags])
        assert result.exit_code == 0, result.output
        record = json.loads((out / "config.json").read_text())
        assert record["model_preset"] == preset and record["model"]["hidden"] == 16 and record["train"]["epochs"] == 1
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\npreset = "nope"\n')
    result = CliRunner().invoke(main, ["train", "--store", str(store.path), "--config", str(bad), "--out", str(tmp_path / "b")])
    assert result.exit_code == 1 and "model.preset" in result.output and "unknown model preset 'nope'" in result.output
