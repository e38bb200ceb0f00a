"""The svip preset: its model on tiny inputs (training, invariances, empty slots), its loss, its
box features, and the import of an svip checkpoint into a run directory."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import garbage_like, random_batch, save_clip, tiny_clip, with_garbage

from msgvip.config import ConfigError, ExtractConfig
from msgvip.data.clip import read_clip
from msgvip.extract.backbones import DEMO_CROP_SIZE, make_demo_backbones
from msgvip.extract.geometry import SVIP_BOX_FEATURES, svip_box_features
from msgvip.pipelines.extract import run_extract
from msgvip.ranker import StoreDataset
from msgvip.ranker.model import INVALID_LOGIT
from msgvip.ranker.svip import SvipConfig, SvipRanker, svip_loss_terms
from msgvip.ranker.svip_import import import_svip_checkpoint, svip_name
from msgvip.ranker.trainer import load_checkpoint
from msgvip.store import FeatureStore
from msgvip.store.feature_store import ArraySpec
from msgvip.store.storage import open_storage

TINY = SvipConfig(
    vision_dim=16, geom_hidden=8, geom_dim=8, fused_dim=24, gat_hidden=16, gat_heads=2, d_model=16, temporal_heads=4,
    ff_dim=32, pool_heads=2, pool_ff_dim=16, pool_dim=12, score_hidden=8, gate_hidden=8,
)  # fmt: skip
DIMS = {"appearance": 20, "svip_box": 14}


def make_model(config: SvipConfig = TINY, dims: dict[str, int] = DIMS, seed: int = 0) -> SvipRanker:
    torch.manual_seed(seed)
    return SvipRanker(config, dims).eval()


def make_batch(B: int = 3, T: int = 6, N: int = 5, p: float = 0.6, seed: int = 1):
    return random_batch(DIMS, B, T, N, p, torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------- model
@pytest.mark.parametrize("freeze_geom", [True, False])
def test_tiny_model_trains(freeze_geom):
    no_dropout = {f"{part}_dropout": 0.0 for part in ("features", "gat", "temporal", "scoring", "gate")}  # a smooth descent
    model = make_model(replace(TINY, freeze_geom=freeze_geom, **no_dropout)).train()
    features, mask = make_batch(B=4)
    valid = mask.any(1)
    target = torch.tensor([int(valid[b].nonzero()[-1]) for b in range(4)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        terms = model.loss_terms(model(features, mask), target, valid, None)
        optimizer.zero_grad()
        terms.total.backward()
        if not losses:
            for name, p in model.named_parameters():
                assert (p.grad is None) == (name.startswith("geom.") and freeze_geom), name
                assert p.grad is None or (torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0), name
        optimizer.step()
        losses.append(float(terms.total.detach()))
    assert losses[-1] < 0.85 * losses[0]


@pytest.mark.parametrize("event_token, dual_head", [(True, True), (False, True), (True, False), (False, False)])
def test_permutation_and_padding_invariance(event_token, dual_head):
    model = make_model(replace(TINY, event_token=event_token, dual_head=dual_head))
    features, mask = make_batch()
    with torch.no_grad():
        base = model(features, mask)
        # garbage at absent person-frames is never read
        torch.testing.assert_close(model(with_garbage(features, mask), mask), base, rtol=0, atol=1e-5)
        # slots permuted: scores move with them
        perm = torch.tensor([3, 0, 4, 1, 2])
        moved = model({k: v[:, :, perm] for k, v in features.items()}, mask[:, :, perm])
        torch.testing.assert_close(moved, base[:, perm], rtol=0, atol=1e-5)
        # two padded slots and three padded frames holding garbage: same scores, -inf for the new slots
        padded_mask = F.pad(mask, (0, 2, 0, 3))
        padded = {k: garbage_like(F.pad(v, (0, 0, 0, 2, 0, 3))) for k, v in features.items()}
        padded = {k: torch.where(padded_mask.unsqueeze(-1), F.pad(features[k], (0, 0, 0, 2, 0, 3)), v) for k, v in padded.items()}
        out = model(padded, padded_mask)
        torch.testing.assert_close(out[:, :5], base, rtol=0, atol=1e-5)
        assert (out[:, 5:] == INVALID_LOGIT).all()
        # a clip scores the same alone as in a batch
        alone = model({k: v[1:2] for k, v in features.items()}, mask[1:2])
        torch.testing.assert_close(alone, base[1:2], rtol=0, atol=1e-5)


def test_empty_slots_and_frames_give_no_nan_and_distinct_relation_scores():
    # dual_head=False: the logits are the relation branch's scores, the ones svip's CPU eval
    # mode turns into one constant for every person when a slot is empty
    model = make_model(replace(TINY, dual_head=False))
    features, mask = make_batch(B=4, T=6, N=5, p=0.7)
    mask[:, :, 3] = False  # an empty slot in every clip
    mask[0, 2] = False  # an empty frame
    mask[1] = False
    mask[1, :, 0] = True  # a clip of one person
    mask[2] = False  # an empty clip
    mask[3, 4] = False
    mask[3, 4, 1] = True  # a frame of one person (it skips the GAT layers)
    with torch.no_grad():
        logits = model(features, mask)
        valid = mask.any(1)
        assert torch.isfinite(logits[valid]).all() and (logits[~valid] == INVALID_LOGIT).all()
        for b in (0, 3):
            assert len(set(logits[b][valid[b]].tolist())) == int(valid[b].sum()) > 1
        keep = torch.tensor([0, 1, 2, 4])  # without the empty slot: the same scores
        torch.testing.assert_close(model({k: v[:, :, keep] for k, v in features.items()}, mask[:, :, keep]), logits[:, keep], rtol=0, atol=1e-5)
        assert (model(features, torch.zeros_like(mask)) == INVALID_LOGIT).all()


def test_input_and_config_checks():
    model = make_model()
    features, mask = make_batch()
    with pytest.raises(KeyError, match="svip_box"):
        model({"appearance": features["appearance"]}, mask)
    with pytest.raises(ValueError, match="appearance"):
        model({**features, "appearance": features["appearance"][..., :3]}, mask)
    with pytest.raises(ValueError, match="exactly the feature families"):
        SvipRanker(TINY, {**DIMS, "geometry": 18})
    with pytest.raises(TypeError, match="SvipConfig.d_model must be int"):
        SvipConfig(d_model=768.0)
    with pytest.raises(TypeError, match="SvipConfig.gat_layers must be int"):
        SvipConfig(gat_layers=True)
    with pytest.raises(TypeError, match="SvipConfig.dual_head must be bool"):
        SvipConfig(dual_head=1)
    with pytest.raises(TypeError, match="unexpected keyword"):
        SvipConfig(hidden=32)
    with pytest.raises(ValueError, match="d_model=100 must be divisible by temporal_heads=12"):
        SvipConfig(d_model=100)
    with pytest.raises(ValueError, match="gate_dropout"):
        SvipConfig(gate_dropout=1.0)
    assert SvipConfig(**SvipConfig().to_dict()) == SvipConfig()


# ---------------------------------------------------------------------------------------- loss
def test_loss_is_svips_formula():
    inf = float("inf")
    logits = torch.tensor([[2.0, 0.0, 1.0, -inf], [0.5, -inf, -inf, -inf], [1.0, 3.0, -inf, -inf]], requires_grad=True)
    valid = torch.isfinite(logits.detach())
    target = torch.tensor([0, 0, -1])  # the third clip is unlabeled
    terms = svip_loss_terms(logits, target, valid, preference_weight=0.3, beta=1.0)
    ce = (-math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(1))) + 0.0) / 2  # the one-person clip's CE is 0
    preference = math.log1p(math.exp(math.log((1 + math.exp(1)) / 2) - 2)) / 2  # softplus; 0 for one person
    assert terms.ce.item() == pytest.approx(ce, abs=1e-6)
    assert terms.pairwise.item() == pytest.approx(preference, abs=1e-6)
    assert terms.total.item() == pytest.approx(ce + 0.3 * preference, abs=1e-6)
    terms.total.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad[~valid] == 0).all() and (logits.grad[2] == 0).all()


# ---------------------------------------------------------------------------------------- svip_box
def test_svip_box_on_known_boxes(tmp_path):
    # a 64 x 32 frame; slot 0 present in frames 0-1, slot 1 enters in frame 1 and leaves in frame 2
    bboxes = np.zeros((3, 2, 4), np.float32)
    bboxes[0, 0] = [8, 4, 40, 20]
    bboxes[1, 0] = [16, 4, 48, 20]
    bboxes[1, 1] = [0, 0, 16, 16]
    bboxes[2, 1] = [6.4, 0, 16, 16]  # 6.4 / 64 = 0.1 is not a float16: svip rounds it
    mask = np.array([[True, False], [True, True], [False, True]])
    arrays = {"frames": np.zeros((3, 32, 64, 3), np.uint8), "bboxes": bboxes, "person_mask": mask, "target_index": np.array(0)}
    clip = read_clip(save_clip(tmp_path / "clip.npz", arrays))
    got = svip_box_features(clip.bboxes, clip.person_mask, clip.height, clip.width)
    assert got.shape == (3, 2, len(SVIP_BOX_FEATURES)) == (3, 2, 14) and got.dtype == np.float32
    row = dict(zip(SVIP_BOX_FEATURES, got[1, 0]))
    assert row == pytest.approx({"x1": 0.25, "y1": 0.125, "x2": 0.75, "y2": 0.625, "cx": 0.5, "cy": 0.375, "w": 0.5, "h": 0.5,
                                 "area": 0.25, "dcx": 0.125, "dcy": 0.0, "disp": 0.125, "speed": 0.125, "accel": 0.125})  # fmt: skip
    entering = dict(zip(SVIP_BOX_FEATURES, got[1, 1]))  # from the corner (0, 0), as svip's zeroed boxes have it
    assert (entering["dcx"], entering["dcy"]) == (0.125, 0.25) and entering["disp"] == pytest.approx(math.hypot(0.125, 0.25))
    x1 = float(np.float16(0.1))
    later = dict(zip(SVIP_BOX_FEATURES, got[2, 1]))
    assert later["x1"] == x1 and later["dcx"] == pytest.approx((x1 + 0.25) / 2 - 0.125) and later["accel"] == pytest.approx(abs(later["disp"] - entering["disp"]))
    assert (got[0, 1] == 0).all() and (got[2, 0] == 0).all()  # absent person-frames are zeros


# ---------------------------------------------------------------------------------------- import
@pytest.fixture(scope="module")
def store(tmp_path_factory) -> FeatureStore:
    """A store of appearance (demo DINOv2, CLS, 64 wide) and svip_box features of 6 + 2 tiny clips."""
    root = tmp_path_factory.mktemp("svip")
    for i in range(8):
        save_clip(root / "data" / ("train" if i < 6 else "val") / f"clip_{i}.npz", tiny_clip(seed=i))
    models = make_demo_backbones(root / "models")
    config = ExtractConfig(features=("appearance", "svip_box"), backbone=str(models["backbone"]), crop_size=DEMO_CROP_SIZE, context=0.0,
                           pooling="cls", local_files_only=True, num_workers=0)  # fmt: skip
    return FeatureStore.open(Path(run_extract(root / "data", config, cache_dir=root / "cache", progress=False).store))


IMPORTED = replace(TINY, vision_dim=32)  # the store's CLS is 64 wide: the model projects it, as svip's VisionEncoder does


def svip_checkpoint(path: Path, model: SvipRanker, **changes) -> Path:
    """``model``'s weights laid out as svip's trainer saves them, plus the parameters svip has and never uses."""
    trainable = {svip_name(name): value for name, value in model.state_dict().items()}
    trainable["temporal_agg.aggregation_query"] = torch.randn(1, 1, 16)
    trainable["temporal_agg.temporal_attention.in_proj_weight"] = torch.randn(48, 16)
    trainable.update(changes)
    trainable = {k: v for k, v in trainable.items() if v is not None}
    metrics = {"rank@1": 71.0, "val_loss": float("nan")}
    torch.save({"epoch": 4, "global_step": 40, "model_trainable": trainable, "optimizer": {}, "scheduler": {}, "metrics": metrics}, path)
    return path


def test_svip_box_rows_in_the_store_are_svips(store):
    clip = read_clip(Path(store.snapshot("data").entries[0].source))
    dense = store.read_clip(store.snapshot("data").entries[0].content_hash)  # (T, N, 14), zeros where absent
    np.testing.assert_array_equal(dense["svip_box"], svip_box_features(clip.bboxes, clip.person_mask, clip.height, clip.width))


def test_import_round_trip_gives_identical_logits(store, tmp_path):
    model = make_model(IMPORTED, {"appearance": 64, "svip_box": 14}, seed=3)
    checkpoint = svip_checkpoint(tmp_path / "last.pt", model)
    trainable = torch.load(checkpoint, weights_only=True)["model_trainable"]
    for svip_key in ("vision._proj.weight", "geom.mlp.0.weight", "fuse.0.weight", "gat.layers.1.att", "temporal_encoder.encoder.layers.1.linear1.weight",
                     "event_ctx.event_temporal.encoder.layers.0.norm1.bias", "temporal_agg.video_transformer.layers.0.self_attn.in_proj_weight",
                     "temporal_agg.output_projection.1.weight", "gate_mlp.3.bias"):  # fmt: skip
        assert svip_key in trainable  # the names svip's modules give

    run = import_svip_checkpoint(checkpoint, store, tmp_path / "run", config=IMPORTED)
    config = json.loads((run / "config.json").read_text())
    assert config["model_preset"] == "svip" and config["families"] == ["appearance", "svip_box"]
    assert config["feature_dims"] == {"appearance": 64, "svip_box": 14} and config["dataset"] == "data"
    assert config["fingerprint"] == store.fingerprint and config["train"]["lr"] == 5e-5
    assert config["imported_from"]["metrics"] == {"rank@1": 71.0} and config["imported_from"]["epoch"] == 5
    state = load_checkpoint(run / "best.pt")
    imported = SvipRanker(SvipConfig(**config["model"]), config["feature_dims"]).eval()
    imported.load_state_dict(state["model"])

    batch = next(StoreDataset(store, "train", config["families"]).batches(6))
    features = {k: v.float() for k, v in batch.features.items()}
    with torch.no_grad():
        assert torch.equal(imported(features, batch.person_mask), model(features, batch.person_mask))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"fuse.0.weight": torch.zeros(24, 41)}, "parameter fuse.0.weight has shape (24, 41), svip's model with this config and these features expects (24, 40)"),
        ({"temporal_encoder.encoder.layers.0.norm2.bias": None}, "lacks parameter temporal_encoder.encoder.layers.0.norm2.bias"),
        ({"event_ctx.extra.weight": torch.zeros(3)}, "holds parameter event_ctx.extra.weight"),
    ],
)
def test_checkpoint_that_does_not_fit_is_one_line_naming_the_parameter(store, tmp_path, change, message):
    checkpoint = svip_checkpoint(tmp_path / "best.pt", make_model(IMPORTED, {"appearance": 64, "svip_box": 14}), **change)
    with pytest.raises(ConfigError) as err:
        import_svip_checkpoint(checkpoint, store, tmp_path / "run", config=IMPORTED)
    assert message in str(err.value) and str(checkpoint) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


def test_unusable_checkpoints_stores_and_run_dirs(store, tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {}}, foreign)
    pickled = tmp_path / "pickled.pt"
    torch.save({"model_trainable": {}, "config": Path("x")}, pickled)  # an object weights-only loading refuses
    for path, message in ((garbage, "not a torch zip archive"), (foreign, "not an svip checkpoint"), (pickled, "refuses to unpickle"),
                          (tmp_path / "missing.pt", "no such checkpoint")):  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            import_svip_checkpoint(path, store, tmp_path / "run", config=IMPORTED)

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="already holds a run"):
        import_svip_checkpoint(foreign, store, tmp_path / "taken", config=IMPORTED)

    storage = open_storage(tmp_path / "cache")
    specs = [ArraySpec("appearance", (64,), "float16"), ArraySpec("geometry", (18,), "float32")]
    no_box = FeatureStore.create(storage, "a" * 32, {"features": {"appearance": {"pooling": "cls"}, "geometry": {}}}, specs)
    with pytest.raises(ConfigError, match="has no svip_box features"):
        import_svip_checkpoint(foreign, no_box, tmp_path / "run", config=IMPORTED)
    specs = [ArraySpec("appearance", (128,), "float16"), ArraySpec("svip_box", (14,), "float32")]
    pooled = FeatureStore.create(storage, "b" * 32, {"features": {"appearance": {"pooling": "cls+mean"}, "svip_box": {}}}, specs)
    with pytest.raises(ConfigError, match="svip consumes the CLS token"):
        import_svip_checkpoint(foreign, pooled, tmp_path / "run", config=IMPORTED)


def test_metrics_beyond_a_float_and_a_symlinked_out_are_handled(store, tmp_path):
    model = make_model(IMPORTED, {"appearance": 64, "svip_box": 14}, seed=3)
    checkpoint = svip_checkpoint(tmp_path / "last.pt", model)
    payload = torch.load(checkpoint, weights_only=True)
    payload["metrics"] = {"rank@1": 10**400, "mrr": 55.5}
    torch.save(payload, checkpoint)
    run = import_svip_checkpoint(checkpoint, store, tmp_path / "run", config=IMPORTED)
    assert json.loads((run / "config.json").read_text())["imported_from"]["metrics"] == {"mrr": 55.5}

    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(OSError, match=r"--out .*link: a symlink \(to .*elsewhere\); give the folder itself"):
        import_svip_checkpoint(checkpoint, store, tmp_path / "link", config=IMPORTED)
    assert list(target.iterdir()) == []


def test_an_svip_run_on_a_store_without_geometry_is_set_beside_the_heuristics_from_its_boxes(store, tmp_path):
    from msgvip.ranker import TrainConfig, evaluate_run, train
    from msgvip.ranker.metrics import largest_box_scores, most_central_scores, ranking_metrics

    assert "geometry" not in store.families
    summary = train(store, tmp_path / "run", TrainConfig(epochs=1, batch_size=4, device="cpu"), TINY, progress=False)
    assert {"largest_box", "most_central"} <= set(summary.val)
    val = StoreDataset(store, "val", ["svip_box"])
    batch = next(val.batches(len(val), prefetch=0))
    box = batch.features["svip_box"].float()
    column = {name: i for i, name in enumerate(SVIP_BOX_FEATURES)}
    centre = torch.hypot(box[..., column["cx"]] - 0.5, box[..., column["cy"]] - 0.5)
    target, valid = val.targets.numpy(), val.valid_slots().numpy()
    largest = ranking_metrics(largest_box_scores(box[..., column["area"]], batch.person_mask), target, valid)
    central = ranking_metrics(most_central_scores(centre, batch.person_mask), target, valid)
    for name, expected in (("largest_box", largest), ("most_central", central)):
        assert {k: summary.val[name][k] for k in ("rank@1", "mrr", "n")} == {k: expected[k] for k in ("rank@1", "mrr", "n")}
    assert {"largest_box", "most_central"} <= set(evaluate_run(tmp_path / "run", store, "val"))
