"""Model-based extractors (appearance, pose, face): batched extraction equals a per-crop
reference, outputs have the documented shapes, and the fingerprint sees every model and
preprocessing change. Tiny random models written to tmp dirs; the hub is never reached."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import Dinov2Config, Dinov2Model, VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation

from msgvip.config import ConfigError, ExtractConfig
from msgvip.data.clip import Clip
from msgvip.extract import backbones, face as face_mod
from msgvip.extract.appearance import AppearanceExtractor
from msgvip.extract.backbones import ModelError, make_demo_backbones, resolve_model
from msgvip.extract.crops import CropPlan, FrameBank
from msgvip.extract.face import FaceExtractor, head_windows
from msgvip.extract.pose import PoseExtractor
from msgvip.extract.registry import build_extractors, identity

TOL = 1e-4
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)  # the tiny backbone's preprocessor config (not ImageNet's)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CROP = 32
POSE_INPUT = (32, 24)  # (H, W) of the tiny pose model


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def write_backbone(path: Path, seed: int = 0, preprocessor: bool = True) -> Path:
    torch.manual_seed(seed)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=8, image_size=32)
    Dinov2Model(config).save_pretrained(path)
    if preprocessor:
        (path / "preprocessor_config.json").write_text(json.dumps({"image_mean": MEAN, "image_std": STD, "rescale_factor": 1 / 255, "do_normalize": True}))
    return path


def write_pose_model(path: Path, seed: int = 0, keypoints: int = 17) -> Path:
    torch.manual_seed(seed)
    backbone = VitPoseBackboneConfig(
        image_size=list(POSE_INPUT), patch_size=[8, 8], hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, out_indices=[2]
    )
    VitPoseForPoseEstimation(VitPoseConfig(backbone_config=backbone, num_labels=keypoints)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("models")
    return {"backbone": str(write_backbone(root / "dino")), "pose_model": str(write_pose_model(root / "pose"))}


def make_clip(seed: int, frames: int, slots: int, height: int, width: int, valid: float = 0.4) -> Clip:
    """Smooth random frames (real images are not white noise) and boxes of every size, some
    reaching the frame's border, most slots empty."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (frames, 3, height // 4 + 2, width // 4 + 2)).astype(np.float32)
    smooth = F.interpolate(torch.from_numpy(coarse), size=(height, width), mode="bilinear", align_corners=False)
    pixels = (smooth.permute(0, 2, 3, 1).numpy() + rng.normal(0, 8, (frames, height, width, 3))).clip(0, 255).astype(np.uint8)
    mask = rng.random((frames, slots)) < valid
    mask[0, 0] = True
    size = rng.uniform([3, 3], [width * 0.9, height * 0.9], (frames, slots, 2))
    corner = rng.uniform(0, 1, (frames, slots, 2)) * ([width, height] - size)
    boxes = np.concatenate([corner, corner + size], -1).clip(0, [width, height, width, height]).astype(np.float32)
    boxes[~mask] = 0
    return Clip(Path(f"clip{seed}.npz"), f"clip{seed}", pixels, boxes, mask, mask.astype(np.float32), -1, "", "", f"hash{seed}")


@pytest.fixture(scope="module")
def clips() -> list[Clip]:
    """Varied T, N and frame sizes in one group, including one with no valid person."""
    group = [
        make_clip(1, 4, 5, 40, 56), make_clip(2, 2, 7, 24, 36, valid=0.3), make_clip(3, 3, 3, 40, 56, valid=0.6), make_clip(4, 5, 2, 48, 30)
    ]  # fmt: skip
    empty = make_clip(5, 2, 3, 24, 24)
    empty.person_mask[:] = False
    empty.bboxes[:] = 0
    return group[:2] + [empty] + group[2:]


def config(models: dict[str, str], **overrides) -> ExtractConfig:
    return ExtractConfig(**{"features": ("appearance", "face", "pose"), "crop_size": CROP, "batch_size": 7, "context": 0.15, **models, **overrides})


# ---- the per-crop reference: one crop at a time, written independently of crops.py ----------


def reference_crop(frame: np.ndarray, window: tuple[float, float, float, float], out_h: int, out_w: int) -> np.ndarray:
    """Bilinear crop by hand: output pixel (i, j) samples the window at its (i + .5, j + .5)
    fraction; pixel k's centre is at k + .5; black outside. (H, W, 3) uint8 -> (3, h, w) float64."""
    x1, y1, x2, y2 = (float(v) for v in window)
    height, width = frame.shape[:2]
    sx = x1 + (np.arange(out_w) + 0.5) * (x2 - x1) / out_w - 0.5  # in pixel-index units
    sy = y1 + (np.arange(out_h) + 0.5) * (y2 - y1) / out_h - 0.5
    x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
    fx, fy = sx - x0, sy - y0
    padded = np.zeros((height + 4, width + 4, 3))  # two black pixels around the frame are enough after clamping
    padded[2:-2, 2:-2] = frame
    xi = lambda x: np.clip(x, -2, width + 1) + 2  # noqa: E731
    yi = lambda y: np.clip(y, -2, height + 1) + 2  # noqa: E731
    top = padded[yi(y0)][:, xi(x0)] * (1 - fx)[None, :, None] + padded[yi(y0)][:, xi(x0 + 1)] * fx[None, :, None]
    bottom = padded[yi(y0 + 1)][:, xi(x0)] * (1 - fx)[None, :, None] + padded[yi(y0 + 1)][:, xi(x0 + 1)] * fx[None, :, None]
    return (top * (1 - fy)[:, None, None] + bottom * fy[:, None, None]).transpose(2, 0, 1)


def reference_pixels(crop: np.ndarray, mean, std) -> torch.Tensor:
    normalized = (crop / 255.0 - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    return torch.from_numpy(normalized[None]).float()


def valid_slots(group: list[Clip]):
    for c, clip in enumerate(group):
        for t, n in zip(*np.nonzero(clip.person_mask)):
            yield c, int(t), int(n), clip.bboxes[t, n].astype(np.float64)


def reference_appearance(models, group, pooling: str, context: float) -> list[np.ndarray]:
    net = Dinov2Model.from_pretrained(models["backbone"]).eval()
    out = [np.zeros((c.num_frames, c.num_slots, 32 * (2 if pooling == "cls+mean" else 1))) for c in group]
    for c, t, n, (x1, y1, x2, y2) in valid_slots(group):
        dx, dy = (x2 - x1) * context, (y2 - y1) * context
        crop = reference_crop(group[c].frames[t], (x1 - dx, y1 - dy, x2 + dx, y2 + dy), CROP, CROP)
        with torch.no_grad():
            tokens = net(pixel_values=reference_pixels(crop, MEAN, STD)).last_hidden_state[0].double().numpy()
        cls, mean = tokens[0], tokens[1:].mean(0)
        out[c][t, n] = {"cls": cls, "mean": mean, "cls+mean": np.concatenate([cls, mean])}[pooling]
    return out


def reference_pose(models, group) -> list[np.ndarray]:
    """(T, N, 17, 3) per clip in *frame pixels* (x, y, score)."""
    net = VitPoseForPoseEstimation.from_pretrained(models["pose_model"]).eval()
    in_h, in_w = POSE_INPUT
    out = [np.zeros((c.num_frames, c.num_slots, 17, 3)) for c in group]
    for c, t, n, (x1, y1, x2, y2) in valid_slots(group):
        cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
        if w / h > in_w / in_h:
            h = w * in_h / in_w
        else:
            w = h * in_w / in_h
        w, h = w * 1.25, h * 1.25
        window = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        crop = reference_crop(group[c].frames[t], window, in_h, in_w)
        with torch.no_grad():
            heat = net(pixel_values=reference_pixels(crop, IMAGENET_MEAN, IMAGENET_STD)).heatmaps[0].double().numpy()
        hh, hw = heat.shape[1:]
        for k in range(17):
            py, px = np.unravel_index(np.argmax(heat[k]), (hh, hw))
            x, y = float(px), float(py)
            if 0 < px < hw - 1:
                x += 0.25 * np.sign(heat[k, py, px + 1] - heat[k, py, px - 1])
            if 0 < py < hh - 1:
                y += 0.25 * np.sign(heat[k, py + 1, px] - heat[k, py - 1, px])
            ix, iy = x * (in_w - 1) / (hw - 1), y * (in_h - 1) / (hh - 1)  # heatmap -> input pixel (UDP)
            out[c][t, n, k] = [window[0] + (ix + 0.5) / in_w * w, window[1] + (iy + 0.5) / in_h * h, heat[k, py, px]]
    return out


def reference_head(keypoints: np.ndarray, box: np.ndarray, min_score: float) -> tuple[tuple, tuple]:
    """One person: head window and (yaw, pitch, visibility), written with plain loops."""
    seen = [k for k in range(5) if keypoints[k, 2] >= min_score]
    x1, y1, x2, y2 = box
    if len(seen) >= 2:
        xs, ys = [keypoints[k, 0] for k in seen], [keypoints[k, 1] for k in seen]
        cx, cy = sum(xs) / len(xs), sum(ys) / len(ys)
        side = max(2.0 * max(max(xs) - min(xs), max(ys) - min(ys)), 0.1 * max(x2 - x1, y2 - y1))
        window = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    else:
        window = (x1, y1, x2, y1 + 0.25 * (y2 - y1))
    yaw = pitch = 0.0
    pair = (3, 4) if {3, 4} <= set(seen) else (1, 2) if {1, 2} <= set(seen) else None
    if 0 in seen and pair:
        (lx, ly), (rx, ry) = keypoints[pair[0], :2], keypoints[pair[1], :2]
        span = math.hypot(rx - lx, ry - ly) + 1e-3
        yaw = min(max((keypoints[0, 0] - (lx + rx) / 2) / (span / 2), -1), 1)
        pitch = min(max((keypoints[0, 1] - (ly + ry) / 2) / span, -1), 1)
    elif 0 in seen and len({3, 4} & set(seen)) == 1:
        ear = 3 if 3 in seen else 4
        yaw = float(np.sign(keypoints[0, 0] - keypoints[ear, 0]))
    return window, (yaw, pitch, len(seen) / 5)


def dense(plan: CropPlan, values: torch.Tensor, group: list[Clip]) -> list[np.ndarray]:
    return plan.scatter(values.double().cpu().numpy(), group)


def assert_close(actual: list[np.ndarray], expected: list[np.ndarray], atol: float = TOL, rtol: float = 0.0) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.shape == e.shape
        np.testing.assert_allclose(a.astype(np.float64), e, atol=atol, rtol=rtol)


# ---- crops -----------------------------------------------------------------------------------


def test_reference_crop_is_a_resize_of_the_box_slice():
    """Anchors the sampling convention: a whole-pixel window inside the frame, larger than the
    crop, equals F.interpolate of the slice (bilinear, align_corners=False)."""
    frame = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    x1, y1, x2, y2 = 5, 7, 61, 47
    expected = F.interpolate(torch.from_numpy(frame[y1:y2, x1:x2]).permute(2, 0, 1)[None].double(), size=(20, 28), mode="bilinear", align_corners=False)[0]
    np.testing.assert_allclose(reference_crop(frame, (x1, y1, x2, y2), 20, 28), expected.numpy(), atol=1e-9)


def test_batched_crops_equal_one_at_a_time_crops(clips):
    plan = CropPlan.of(clips)
    rng = np.random.default_rng(1)
    windows = plan.boxes + rng.normal(0, 4, plan.boxes.shape).astype(np.float32)  # some leave the frame
    windows[:, 2:] = np.maximum(windows[:, 2:], windows[:, :2] + 1)
    bank = FrameBank(clips, plan, "cpu")
    assert len(bank.frames) == 3  # three frame sizes hold people in the group
    crops = bank.crop(np.arange(len(plan)), torch.from_numpy(windows), (12, 9)).numpy()
    for p in range(len(plan)):
        expected = reference_crop(clips[plan.clip[p]].frames[plan.frame[p]], windows[p], 12, 9)
        np.testing.assert_allclose(crops[p], expected, atol=2e-3)  # pixel units (0..255)


# ---- appearance --------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["cls", "mean", "cls+mean"])
def test_appearance_equals_per_crop_reference(models, clips, pooling):
    extractor = AppearanceExtractor(config(models, pooling=pooling))
    plan, values = extractor.features(clips)
    expected = reference_appearance(models, clips, pooling, context=0.15)
    assert_close(dense(plan, values, clips), expected)
    out = extractor.extract(clips)
    dim = 64 if pooling == "cls+mean" else 32
    assert extractor.arrays()[0].shape == (dim,) and extractor.arrays()[0].dtype == "float16"
    assert [o["appearance"].shape for o in out] == [(c.num_frames, c.num_slots, dim) for c in clips]
    assert all(o["appearance"].dtype == np.float16 for o in out)
    assert_close([o["appearance"] for o in out], expected, atol=TOL, rtol=2**-10)  # float16 storage
    for o, c in zip(out, clips):
        assert not o["appearance"][~c.person_mask].any()


def test_batch_size_does_not_change_the_numbers(models, clips):
    small = AppearanceExtractor(config(models, batch_size=1)).features(clips)[1]
    large = AppearanceExtractor(config(models, batch_size=1000)).features(clips)[1]
    torch.testing.assert_close(small, large, atol=TOL, rtol=0)


# ---- pose --------------------------------------------------------------------------------------


def test_pose_equals_per_crop_reference(models, clips):
    extractor = PoseExtractor(config(models))
    out = extractor.extract(clips)
    expected = reference_pose(models, clips)
    relative = []
    for c, e in zip(clips, expected):
        box = c.bboxes.astype(np.float64)[:, :, None]  # (T, N, 1, 4)
        w, h = np.maximum(box[..., 2] - box[..., 0], 1e-9), np.maximum(box[..., 3] - box[..., 1], 1e-9)
        r = np.stack([(e[..., 0] - box[..., 0]) / w, (e[..., 1] - box[..., 1]) / h, e[..., 2]], -1)
        relative.append(np.where(c.person_mask[..., None, None], r, 0.0))
    assert [o["pose"].shape for o in out] == [(c.num_frames, c.num_slots, 17, 3) for c in clips]
    assert all(o["pose"].dtype == np.float32 for o in out)
    assert_close([o["pose"] for o in out], relative)


# ---- face --------------------------------------------------------------------------------------


def test_head_windows_and_head_pose_on_known_keypoints():
    box = torch.tensor([[0.0, 0.0, 40.0, 100.0]]).repeat(4, 1)
    kp = torch.zeros(4, 17, 3)
    frontal = [[20, 10, 0.9], [18, 8, 0.9], [22, 8, 0.9], [15, 9, 0.9], [25, 9, 0.9]]
    kp[0, :5] = torch.tensor(frontal)
    kp[1, :5] = torch.tensor(frontal)
    kp[1, 0, 0] = 24  # nose towards the image's right
    kp[2, :5] = torch.tensor([[30, 10, 0.9], [28, 8, 0.1], [0, 0, 0.0], [20, 9, 0.9], [0, 0, 0.0]])  # profile: one ear
    windows, head = head_windows(kp, box, min_score=0.3)
    assert torch.allclose(windows[0], torch.tensor([10.0, -1.2, 30.0, 18.8]))  # centre (20, 8.8), side 2 x spread 10
    assert head[0].tolist() == pytest.approx([0.0, 0.1 / (10 + 1e-3) * 10, 1.0], abs=1e-4)
    assert head[1, 0] > 0.7 and head[2, 0] == 1.0
    assert head[2, 2] == pytest.approx(0.4)
    assert windows[3].tolist() == [0.0, 0.0, 40.0, 25.0] and head[3].tolist() == [0.0, 0.0, 0.0]  # nothing visible: top quarter


def test_face_equals_per_crop_reference(models, clips, monkeypatch):
    poses = reference_pose(models, clips)
    scores = np.sort(np.concatenate([p[c.person_mask][:, :5, 2].ravel() for p, c in zip(poses, clips)]))
    net = Dinov2Model.from_pretrained(models["backbone"]).eval()
    paths = set()
    for band in ((0.05, 0.35), (0.5, 0.85)):  # a low and a high head-keypoint threshold: every branch is taken
        middle = scores[int(band[0] * len(scores)) : int(band[1] * len(scores))]
        gap = int(np.argmax(np.diff(middle)))
        threshold = float(middle[gap] + middle[gap + 1]) / 2  # far from every score: no flip from rounding
        monkeypatch.setattr(face_mod, "HEAD_MIN_SCORE", threshold)

        expected = [np.zeros((c.num_frames, c.num_slots, 35)) for c in clips]
        for c, t, n, box in valid_slots(clips):
            window, head = reference_head(poses[c][t, n], box, threshold)
            paths.add(("keypoints" if window[3] != box[1] + 0.25 * (box[3] - box[1]) else "fallback", head[0] != 0))
            crop = reference_crop(clips[c].frames[t], window, CROP, CROP)
            with torch.no_grad():
                cls = net(pixel_values=reference_pixels(crop, MEAN, STD)).last_hidden_state[0, 0].double().numpy()
            expected[c][t, n] = np.concatenate([cls, head])

        extractor = FaceExtractor(config(models))
        plan, values = extractor.features(clips)
        assert_close(dense(plan, values, clips), expected)
        out = extractor.extract(clips)
        assert extractor.arrays()[0].shape == (35,)
        assert [o["face"].shape for o in out] == [(c.num_frames, c.num_slots, 35) for c in clips]
        assert_close([o["face"] for o in out], expected, atol=TOL, rtol=2**-10)
    assert {p[0] for p in paths} == {"keypoints", "fallback"} and {p[1] for p in paths} == {True, False}


def test_face_and_pose_together_run_the_pose_model_once(models, clips, monkeypatch):
    calls = []
    original = PoseExtractor._run
    monkeypatch.setattr(PoseExtractor, "_run", lambda self, *a: calls.append(1) or original(self, *a))
    extractors = build_extractors(config(models))
    assert [e.name for e in extractors] == ["appearance", "face", "pose"]
    outputs = [e.extract(clips) for e in extractors]
    assert len(calls) == 1
    alone = PoseExtractor(config(models)).extract(clips[:2])  # another group: computed afresh
    assert len(calls) == 2
    for a, b in zip(alone, outputs[2][:2]):
        np.testing.assert_array_equal(a["pose"], b["pose"])


def test_groups_without_people_give_zeros(models, clips):
    empty = clips[2]
    assert not empty.person_mask.any()
    for extractor in build_extractors(config(models, features=("appearance", "face", "pose"))):
        (out,) = extractor.extract([empty])
        (array,) = extractor.arrays()
        assert out[array.name].shape == (empty.num_frames, empty.num_slots, *array.shape)
        assert out[array.name].dtype == np.dtype(array.dtype) and not out[array.name].any()


# ---- identity ----------------------------------------------------------------------------------


def test_fingerprint_sees_model_and_preprocessing_changes(models, tmp_path):
    base = config(models)
    fp = identity(build_extractors(base))[0]
    moved = {k: str(shutil.copytree(v, tmp_path / "moved" / Path(v).name)) for k, v in models.items()}
    assert identity(build_extractors(config(moved)))[0] == fp  # the path is not the identity
    assert identity(build_extractors(config(models, batch_size=1, num_workers=9, local_files_only=True)))[0] == fp
    assert identity(build_extractors(config(models, dtype="float32")))[0] == fp  # "auto" on CPU is fp32

    other_seed = str(write_backbone(tmp_path / "dino-other", seed=1))
    edited = shutil.copytree(models["backbone"], tmp_path / "dino-edited")
    weights = edited / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    changes = {
        "backbone": config(models, backbone=other_seed),
        "weight byte": config(models, backbone=str(edited)),
        "pose model": config(models, pose_model=str(write_pose_model(tmp_path / "pose-other", seed=1))),
        "crop size": config(models, crop_size=40),
        "context": config(models, context=0.2),
        "pooling": config(models, pooling="cls"),
        "dtype": config(models, dtype="bfloat16"),
    }
    fingerprints = {name: identity(build_extractors(c))[0] for name, c in changes.items()}
    assert fp not in fingerprints.values()
    assert len(set(fingerprints.values())) == len(changes)

    no_preprocessor = write_backbone(tmp_path / "dino-imagenet", seed=0, preprocessor=False)
    record = identity(build_extractors(config(models, backbone=str(no_preprocessor), features=("appearance",))))[1]
    assert record["features"]["appearance"]["normalize"]["mean"] == list(IMAGENET_MEAN)
    assert record["features"]["appearance"]["compute_dtype"] == "float32"


def test_models_that_cannot_be_identified_fail_loudly(models, tmp_path):
    with pytest.raises(ModelError, match="not in the local Hugging Face cache"):
        resolve_model("facebook/dinov2-small", local_files_only=True)
    with pytest.raises(ModelError, match="not a directory"):
        resolve_model(str(tmp_path / "missing"))
    no_weights = shutil.copytree(models["backbone"], tmp_path / "no-weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="no weight files"):
        identity(build_extractors(config(models, backbone=str(no_weights))))
    with pytest.raises(ConfigError, match="not a multiple of the patch size 8"):
        identity(build_extractors(config(models, crop_size=36)))
    with pytest.raises(ConfigError, match="pooling"):
        ExtractConfig(pooling="max")
    with pytest.raises(ModelError, match="must be a ViTPose model"):
        identity(build_extractors(config(models, pose_model=models["backbone"])))
    with pytest.raises(ModelError, match="predicts 5 keypoints"):
        identity(build_extractors(config(models, pose_model=str(write_pose_model(tmp_path / "pose5", keypoints=5)))))


# ---- demo models and the real pipeline -------------------------------------------------------


def test_demo_backbones_are_local_random_and_reproducible(tmp_path, clips):
    first, second = make_demo_backbones(tmp_path / "a"), make_demo_backbones(tmp_path / "b")
    assert set(first) == {"backbone", "pose_model"}
    for key in first:
        a, b = resolve_model(str(first[key])), resolve_model(str(second[key]))
        assert a.is_demo and a.weights == b.weights
    demo = ExtractConfig(features=("appearance", "face", "pose"), crop_size=backbones.DEMO_CROP_SIZE, **first)
    assert demo.backbone == str(first["backbone"])  # paths become plain strings (JSON in the store)
    out = [e.extract(clips[:1])[0] for e in build_extractors(demo)]
    assert out[0]["appearance"].shape[-1] == 128 and out[1]["face"].shape[-1] == 67 and out[2]["pose"].shape[-2:] == (17, 3)


def test_run_extract_writes_every_family(models, tiny_data, cache_dir):
    from msgvip.pipelines.extract import run_extract
    from msgvip.store.feature_store import FeatureStore

    cfg = config(models, features=("appearance", "face", "geometry", "pose"))
    summary = run_extract(tiny_data, cfg, progress=False)
    assert summary.ok and summary.written == 8
    store = FeatureStore.open(Path(summary.store))
    shapes = {a.name: (a.shape, a.dtype) for a in store.specs}
    assert shapes["appearance"] == ((64,), "float16") and shapes["face"] == ((35,), "float16") and shapes["pose"] == ((17, 3), "float32")
    again = run_extract(tiny_data, cfg, progress=False)
    assert again.cached == 8 and again.written == 0 and again.fingerprint == summary.fingerprint
