"""Training from a store: slot permutation, streaming, exact resume, DDP, evaluate/predict CLI."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import save_clip, tiny_clip

from msgvip.cli import main
from msgvip.pipelines import run_extract
from msgvip.ranker import RankerConfig, StoreDataset, TrainConfig, read_label_overrides, train
from msgvip.store import FeatureStore

SMALL_MODEL = RankerConfig(hidden=16, gat_heads=2, temporal_heads=2, event_heads=2, pool_heads=2, relation_heads=2, ff_mult=2)
SMALL_TOML = "[model]\nhidden = 16\ngat_heads = 2\ntemporal_heads = 2\nevent_heads = 2\npool_heads = 2\nrelation_heads = 2\nff_mult = 2\n"


@pytest.fixture
def store(tmp_path, cache_dir) -> FeatureStore:
    data = tmp_path / "data"
    for i in range(16):
        save_clip(data / ("train" if i < 12 else "val") / f"clip_{i:02d}.npz", tiny_clip(seed=i, slots=5, people=2 + i % 3))
    return FeatureStore.open(Path(run_extract(data, cache_dir=cache_dir, progress=False).store))


def test_slot_permutation_moves_target_with_its_person(store):
    data = StoreDataset(store, "train", in_memory="yes")
    plain = next(data.batches(12))
    permuted = next(data.batches(12, permute_slots=True, seed=3))
    assert not torch.equal(permuted.slot_order, plain.slot_order)
    for b in range(12):
        order = permuted.slot_order[b]
        np.testing.assert_array_equal(permuted.features["geometry"][b], plain.features["geometry"][b][:, order])
        np.testing.assert_array_equal(permuted.person_mask[b], plain.person_mask[b][:, order])
        assert order[permuted.target[b]] == plain.target[b]


def test_streaming_and_in_memory_give_the_same_batches(store):
    ram = list(StoreDataset(store, "train", in_memory="yes").batches(5, shuffle=True, permute_slots=True, seed=1, window_clips=4))
    disk = list(StoreDataset(store, "train", in_memory="no").batches(5, shuffle=True, permute_slots=True, seed=1, window_clips=4))
    assert len(ram) == len(disk) == 3
    for a, b in zip(ram, disk):
        assert torch.equal(a.index, b.index) and torch.equal(a.target, b.target)
        assert torch.equal(a.features["geometry"], b.features["geometry"]) and torch.equal(a.person_mask, b.person_mask)


def test_ranks_split_the_clips(store):
    data = StoreDataset(store, "train")
    seen = [torch.cat([b.index for b in data.batches(2, shuffle=True, seed=0, rank=r, world_size=2)]) for r in range(2)]
    assert sorted(torch.cat(seen).tolist()) == list(range(12))


def test_resume_matches_an_uninterrupted_run(store, tmp_path):
    config = TrainConfig(epochs=4, batch_size=4, seed=7, patience=100)
    whole = train(store, tmp_path / "whole", config, SMALL_MODEL, progress=False)
    first = train(store, tmp_path / "resumed", config, SMALL_MODEL, progress=False, max_epochs_this_call=2)
    assert first.epochs_run == 2 and not (tmp_path / "resumed" / "predictions.csv").exists()
    resumed = train(store, tmp_path / "resumed", config, SMALL_MODEL, progress=False, resume=True)
    assert resumed.epochs_run == whole.epochs_run == 4

    def metrics(run):
        with open(tmp_path / run / "metrics.csv") as f:
            return [{k: v for k, v in row.items() if k not in ("seconds", "data_wait_fraction")} for row in csv.DictReader(f)]

    assert metrics("resumed") == metrics("whole")
    assert (tmp_path / "resumed" / "predictions.csv").read_text() == (tmp_path / "whole" / "predictions.csv").read_text()
    for name in ("config.json", "metrics.csv", "curves.png", "best.pt", "latest.pt", "predictions.csv"):
        assert (tmp_path / "whole" / name).stat().st_size > 0
    state = torch.load(tmp_path / "whole" / "latest.pt", weights_only=True)
    assert state["fingerprint"] == store.fingerprint and {"model", "optimizer", "scheduler", "rng", "config"} <= set(state)
    best = torch.load(tmp_path / "whole" / "best.pt", weights_only=True)  # nothing resumes from best.pt: it holds the model alone
    assert best["fingerprint"] == store.fingerprint and "model" in best and not {"optimizer", "scheduler", "rng"} & set(best)


def test_resume_with_other_model_options_names_them(store, tmp_path):
    from msgvip.config import ConfigError

    config = TrainConfig(epochs=2, batch_size=4, patience=100)
    train(store, tmp_path / "run", config, SMALL_MODEL, progress=False, max_epochs_this_call=1)
    with pytest.raises(ConfigError, match=r"run: was trained with other model options \(scene_layers 2 -> 0\); resume with the options in its config.json"):
        train(store, tmp_path / "run", config, replace(SMALL_MODEL, scene_layers=0), progress=False, resume=True)
    # a run recorded before an option existed resumes under the value it meant, and only then
    state = torch.load(tmp_path / "run" / "latest.pt", weights_only=True)
    state["config"]["model"].pop("input_norm")
    torch.save(state, tmp_path / "run" / "latest.pt")
    with pytest.raises(ConfigError, match=r"input_norm 'layer' -> 'auto'"):
        train(store, tmp_path / "run", config, SMALL_MODEL, progress=False, resume=True)


def test_train_evaluate_predict_cli(store, tmp_path, cache_dir):
    (tmp_path / "small.toml").write_text(SMALL_TOML)
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--store", store.fingerprint[:8], "--out", str(run_dir), "--epochs", "2", "--config", str(tmp_path / "small.toml")])
    assert result.exit_code == 0, result.output
    assert "largest_box" in result.output and "most_central" in result.output
    evaluation = CliRunner().invoke(main, ["evaluate", str(run_dir), "--split", "val", "--json"])
    assert evaluation.exit_code == 0, evaluation.output
    record = json.loads(evaluation.stdout)
    assert record["clips"] == 4 and {"model", "largest_box", "most_central"} <= set(record)
    assert set(record["model"]) >= {"rank@1", "rank@2", "rank@3", "mrr", "map_trapezoid", "map_standard", "intervals", "by_persons"}
    out = tmp_path / "ranking.csv"
    predicted = CliRunner().invoke(main, ["predict", str(run_dir), str(tmp_path / "data"), "--out", str(out)])
    assert predicted.exit_code == 0, predicted.output
    rows = list(csv.DictReader(open(out)))
    assert len({r["clip_id"] for r in rows}) == 16 and {r["rank"] for r in rows} >= {"1", "2"}
    bad = CliRunner().invoke(main, ["evaluate", str(run_dir), "--split", "nope"])
    assert bad.exit_code == 1 and "no clips in split 'nope'" in bad.output


def test_config_file_errors(store, tmp_path):
    for text, words in [("[train]\nbogus = 1\n", "unknown TrainConfig keys ['bogus']"), ("[train]\nepochs = 'ten'\n", "epochs must be int"), ("[extra]\n", "unknown sections")]:
        (tmp_path / "c.toml").write_text(text)
        result = CliRunner().invoke(main, ["train", "--store", store.fingerprint, "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "r")])
        assert result.exit_code == 1 and words in result.output, result.output


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None, reason="torchrun not installed")
def test_ddp_two_cpu_processes_train_one_epoch(store, tmp_path, cache_dir):
    (tmp_path / "small.toml").write_text(SMALL_TOML)
    run_dir = tmp_path / "ddp"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MSGVIP_CACHE": str(cache_dir)}
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "msgvip", "train", "--store", store.fingerprint,
         "--out", str(run_dir), "--epochs", "1", "--batch-size", "3", "--device", "cpu", "--config", str(tmp_path / "small.toml")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert (run_dir / "best.pt").exists() and (run_dir / "predictions.csv").exists()
    assert [row["epoch"] for row in csv.DictReader(open(run_dir / "metrics.csv"))] == ["0", "1"]  # the probe before training, then the epoch
    assert proc.stdout.count("run: ") == 1  # only rank 0 reports and writes


def test_batches_are_full_across_windows(tmp_path, cache_dir):
    """Streamed windows of a few clips must not cut batches short."""
    data = tmp_path / "data"
    for i in range(23):
        save_clip(data / "train" / f"clip_{i:02d}.npz", tiny_clip(seed=i, slots=5))
    store = FeatureStore.open(Path(run_extract(data, cache_dir=cache_dir, progress=False).store))
    dataset = StoreDataset(store, "train", in_memory="no")
    sizes = [len(b.index) for b in dataset.batches(8, shuffle=True, window_clips=2)]
    assert sizes == [8, 8, 7]
    seen = torch.cat([b.index for b in dataset.batches(8, shuffle=True, window_clips=2)])
    assert sorted(seen.tolist()) == list(range(23))


def test_label_and_split_overrides_from_a_manifest(store, tmp_path):
    first, second = StoreDataset(store, "train").entries[:2]
    manifest = tmp_path / "fix.csv"
    source = Path(first.source).relative_to(tmp_path)  # the extraction manifest's format: path, split, target
    manifest.write_text(f"path,split,target\n{source},val,\n{Path(second.source).relative_to(tmp_path)},,{first.target}\n")
    labels = read_label_overrides(manifest)
    train_split, val_split = StoreDataset(store, "train", labels=labels), StoreDataset(store, "val", labels=labels)
    assert first.content_hash in {e.content_hash for e in val_split.entries}
    assert first.content_hash not in {e.content_hash for e in train_split.entries} and len(train_split) == 11
    moved = [e.content_hash for e in train_split.entries].index(second.content_hash)
    assert int(train_split.targets[moved]) == first.target
    by_id = tmp_path / "ids.csv"
    by_id.write_text(f"clip_id,target\n{second.key},-1\n")
    relabeled = StoreDataset(store, "train", labels=read_label_overrides(by_id))
    assert int(relabeled.targets[[e.key for e in relabeled.entries].index(second.key)]) == -1


def test_tensorboard_logger_writes_what_metrics_csv_holds(store, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from msgvip.ranker.loggers import scalar_tag

    train(store, tmp_path / "run", TrainConfig(epochs=3, batch_size=4, logger="tensorboard"), SMALL_MODEL, progress=False)
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == sorted(scalar_tag(c) for c in rows[0] if c != "epoch")
    for column in rows[0]:
        if column != "epoch":
            got = [(s.step, s.value) for s in events.Scalars(scalar_tag(column))]
            logged = [r for r in rows if math.isfinite(float(r[column]))]  # epoch 0 has no training loss to draw
            assert got == [(int(r["epoch"]), pytest.approx(float(r[column]), rel=1e-6)) for r in logged], column


def test_packed_batches_hold_the_padded_rows_and_score_the_same(store):
    from msgvip.ranker import ImportanceRanker

    data = StoreDataset(store, "train", in_memory="yes")
    model = ImportanceRanker(SMALL_MODEL, data.feature_dims).eval()
    dense = data.batches(5, permute_slots=True, seed=1, prefetch=0)
    packed = data.batches(5, permute_slots=True, seed=1, prefetch=0, packed=True)
    for padded, rows in zip(dense, packed, strict=True):
        assert torch.equal(padded.person_mask, rows.person_mask) and torch.equal(padded.target, rows.target)
        for name, values in rows.features.items():
            assert torch.equal(values, padded.features[name][padded.person_mask])  # (b, t, n) order
        with torch.no_grad():
            torch.testing.assert_close(model(rows.features, rows.person_mask), model(padded.features, padded.person_mask))


def test_the_skip_path_is_scored_on_its_own_in_training_only():
    from msgvip.ranker import ImportanceRanker
    from msgvip.ranker.losses import ranking_loss_terms

    torch.manual_seed(0)
    mask = torch.rand(4, 6, 5) < 0.7
    mask[:, 0, :2] = True
    features = {"geometry": torch.randn(4, 6, 5, 18)}
    target = torch.tensor([0, 1, 0, 1])
    valid = mask.any(1)
    config = replace(SMALL_MODEL, linear_skip=True)
    model = ImportanceRanker(config, {"geometry": 18})
    torch.nn.init.normal_(model.skip.weight)
    cfg = TrainConfig()
    model.train()
    logits = model(features, mask)
    plain = ranking_loss_terms(logits, target, valid, cfg.margin, cfg.pairwise_weight).total
    alone = ranking_loss_terms(model._skip_logits, target, valid, pairwise_weight=0.0).ce
    assert float(alone.detach()) > 0
    torch.testing.assert_close(model.loss_terms(logits, target, valid, cfg).total, plain + config.skip_loss_weight * alone)
    model.eval()
    with torch.no_grad():
        logits = model(features, mask)
        assert model._skip_logits is None
        torch.testing.assert_close(model.loss_terms(logits, target, valid, cfg).total, ranking_loss_terms(logits, target, valid, cfg.margin, cfg.pairwise_weight).total)


def test_a_run_recorded_before_later_model_options_loads_as_it_was_trained(store, tmp_path):
    """Options added after a run was written (absent from its record) take the values that rebuild
    the model it trained, not today's defaults: its weights load and score as before."""
    from msgvip.ranker.model import RECORD_DEFAULTS
    from msgvip.ranker.trainer import load_checkpoint, load_run, score_dataset, Runtime

    old = replace(SMALL_MODEL, **RECORD_DEFAULTS)
    train(store, tmp_path / "run", TrainConfig(epochs=1, batch_size=4), old, progress=False)
    before, _ = load_run(tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "best.pt")
    for key in RECORD_DEFAULTS:
        assert key in state["config"]["model"]
        del state["config"]["model"][key]
    torch.save(state, tmp_path / "run" / "best.pt")
    after, record = load_run(tmp_path / "run")
    assert after.config == old and after.scene is None
    data = StoreDataset(store, "val", in_memory="yes")
    runtime = Runtime(torch.device("cpu"))
    assert np.array_equal(score_dataset(before, data, runtime, 4, amp=False), score_dataset(after, data, runtime, 4, amp=False))


def test_a_better_checkpoint_has_higher_val_rank1_or_the_same_with_lower_loss():
    from msgvip.ranker.trainer import improves

    assert improves(0.6, 0.9, 0.5, 0.1, min_delta=0.0)  # higher Rank@1 wins whatever the loss
    assert not improves(0.55, 0.1, 0.5, 0.9, min_delta=0.1)  # not by more than min_delta
    assert improves(0.5, 0.8, 0.5, 0.9, min_delta=0.0)  # a tie: the lower loss wins
    assert not improves(0.5, 0.9, 0.5, 0.9, min_delta=0.0) and not improves(0.5, 1.0, 0.5, 0.9, min_delta=0.0)
    assert not improves(0.4, 0.1, 0.5, 0.9, min_delta=0.0)
