"""`msgvip show`: a trained run's clips drawn with the model's scores, ranks, target and top-1."""

from __future__ import annotations

import csv
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from msgvip.config import ConfigError, ExtractConfig
from msgvip.data.clip import read_clip
from msgvip.data.synthetic import DemoDataConfig, write_demo_data
from msgvip.pipelines import run_extract
from msgvip.ranker import RankerConfig, TrainConfig, predict_run, train
from msgvip.store import FeatureStore
from msgvip.views import show_clip
from msgvip.views.show import RING_WIDTH, TARGET_COLOUR

TINY_MODEL = RankerConfig(hidden=16, gat_heads=2, temporal_heads=2, event_heads=2, pool_heads=2, relation_heads=2, ff_mult=2)
BLANK_CANVAS = (222, 222, 222)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, FeatureStore]:
    """A run trained for 2 epochs on synthetic clips; one per module, the tests only read it."""
    root = tmp_path_factory.mktemp("show")
    write_demo_data(root / "data", DemoDataConfig(clips=24, frames=6, persons=5, seed=0))
    summary = run_extract(root / "data", ExtractConfig(features=("geometry",), num_workers=0), cache_dir=root / "cache", progress=False)
    store = FeatureStore.open(summary.store)
    train(store, root / "run", TrainConfig(epochs=2, batch_size=8, seed=0), TINY_MODEL, progress=False)
    return root / "run", store


def ranks_in(path: Path) -> dict[str, dict[int, int]]:
    """clip id -> {slot: rank} of a predictions CSV."""
    with open(path, newline="") as f:
        out: dict[str, dict[int, int]] = {}
        for row in csv.DictReader(f):
            out.setdefault(row["clip_id"], {})[int(row["slot"])] = int(row["rank"])
    return out


def band(image: np.ndarray, rect: tuple[int, int, int, int], width: int) -> np.ndarray:
    """(P, 3) pixels of the ``width``-wide frame just inside ``rect`` (x1, y1, x2, y2 inclusive)."""
    x1, y1, x2, y2 = rect
    inside = np.zeros(image.shape[:2], bool)
    inside[y1 : y2 + 1, x1 : x2 + 1] = True
    inside[y1 + width : y2 + 1 - width, x1 + width : x2 + 1 - width] = False
    return image[inside]


def is_colour(pixels: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return np.all(pixels == np.array(colour, np.uint8), axis=-1)


def overlaps(a, b) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def test_png_rings_the_target_and_labels_the_ranks_of_predictions_csv(run, tmp_path):
    run_dir, store = run
    predicted = ranks_in(run_dir / "predictions.csv")
    clip_id = sorted(predicted)[0]
    rendered = show_clip(run_dir, clip_id, tmp_path / "clip.png", frames=6, store=store)
    (clip,) = rendered.clips
    entry = next(e for e in store.snapshot("data").entries if e.key == clip_id)
    occupied = np.flatnonzero(read_clip(entry.source).person_mask.any(1))  # every frame with someone: the target is in one
    assert clip.clip_id == clip_id and clip.origin == "predictions.csv" and clip.frames == tuple(occupied)
    assert clip.ranks == predicted[clip_id]
    assert clip.boxes and all(box.label == f"#{predicted[clip_id][box.slot]}" for box in clip.boxes)

    image = np.asarray(Image.open(rendered.path).convert("RGB"))
    assert len(clip.panels) == len(occupied) and not any(is_colour(image[y1 : y2 + 1, x1 : x2 + 1], BLANK_CANVAS).mean() > 0.5 for x1, y1, x2, y2 in clip.panels)
    rings = [box.ring for box in clip.boxes if box.ring]
    assert rings and all(box.slot == clip.target for box in clip.boxes if box.ring)
    for ring in rings:  # the target's ring is drawn in the target colour, all the way round but for tags over it
        assert is_colour(band(image, ring, RING_WIDTH), TARGET_COLOUR).mean() > 0.8
    for box in clip.boxes:
        edge = band(image, box.box, 3)
        assert is_colour(edge, box.colour).mean() > 0.5, f"slot {box.slot}: its box is not drawn in its score's colour"
        if not box.ring and not any(overlaps(box.box, ring) for ring in rings):
            assert not is_colour(edge, TARGET_COLOUR).any(), f"slot {box.slot} is not the target but carries its colour"


def test_a_clip_predictions_csv_lacks_is_scored_by_the_model(run, tmp_path):
    run_dir, store = run
    predict_run(run_dir, store, tmp_path / "test.csv", split="test")
    expected = ranks_in(tmp_path / "test.csv")
    clip_id = sorted(expected)[-1]
    entry = next(e for e in store.snapshot("data").entries if e.key == clip_id)
    (clip,) = show_clip(run_dir, entry.content_hash[:10], tmp_path / "clip.png", store=store).clips  # a content-hash prefix names it too
    assert clip.clip_id == clip_id and clip.origin == "model"
    assert clip.ranks == expected[clip_id]


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_videos_hold_every_frame_of_the_clip(run, tmp_path, suffix):
    run_dir, store = run
    rendered = show_clip(run_dir, "worst:1", tmp_path / f"clip{suffix}", store=store)
    frames = iio.imread(rendered.path, index=None)  # (T, H, W, C)
    (clip,) = rendered.clips
    assert len(frames) == len(clip.frames) == 6
    assert frames.shape[1] % 16 == 0 and frames.shape[2] % 16 == 0  # what H.264 takes unscaled
    assert frames.reshape(len(frames), -1).std(axis=1).min() > 10  # drawn frames, not blank ones


def test_worst_and_best_follow_the_targets_rank(run, tmp_path):
    run_dir, store = run
    worst = show_clip(run_dir, "worst:3", tmp_path / "worst.png", frames=2, store=store).clips
    best = show_clip(run_dir, "best:2", tmp_path / "best.png", frames=2, store=store).clips
    assert [c.split for c in (*worst, *best)] == ["test"] * 5
    assert [c.target_rank for c in worst] == sorted((c.target_rank for c in worst), reverse=True)
    assert [c.target_rank for c in best] == sorted(c.target_rank for c in best)
    assert worst[0].target_rank >= best[0].target_rank
    assert worst[0].correct is (worst[0].target_rank == 1)
    assert Image.open(tmp_path / "worst.png").height > Image.open(tmp_path / "best.png").height  # 3 sheets stacked vs 2


def test_a_missing_clip_file_draws_the_stored_boxes_on_a_blank_canvas(run, tmp_path, capsys):
    run_dir, store = run
    entry = next(e for e in store.snapshot("data").entries if e.split == "val")
    source = Path(entry.source)
    moved = source.rename(tmp_path / "away.npz")
    try:
        rendered = show_clip(run_dir, entry.key, tmp_path / "clip.png", frames=3, store=store)
    finally:
        moved.rename(source)
    assert f"{source}: not found" in capsys.readouterr().err
    (clip,) = rendered.clips
    assert not clip.raw_frames and clip.boxes
    image = np.asarray(Image.open(rendered.path).convert("RGB"))
    for x1, y1, x2, y2 in clip.panels:  # boxes are outlines: most of a panel is the blank canvas
        assert is_colour(image[y1 : y2 + 1, x1 : x2 + 1], BLANK_CANVAS).mean() > 0.5
    for box in clip.boxes:
        assert is_colour(band(image, box.box, 3), box.colour).mean() > 0.5


@pytest.mark.parametrize(
    ("clip", "out", "frames", "message"),
    [
        ("val/nope", "x.png", 8, "no such clip"),
        ("worst:0", "x.png", 8, "at least 1"),
        ("worst:1", "x.jpg", 8, "unknown output type '.jpg'"),
        ("worst:1", "x.png", 0, "--frames must be at least 1"),
    ],
)
def test_bad_requests_are_one_line_errors(run, tmp_path, clip, out, frames, message):
    run_dir, store = run
    with pytest.raises(ConfigError, match=message) as err:
        show_clip(run_dir, clip, tmp_path / out, frames=frames, store=store)
    assert "\n" not in str(err.value)


def test_colours_follow_the_ranks_so_one_outlying_score_leaves_the_top_three_apart():
    from types import SimpleNamespace

    from msgvip.views.show import _colour_of

    scores = {0: 0.05, 1: -0.92, 2: -2.03, 3: -17.0}
    ranks = {slot: i + 1 for i, slot in enumerate(sorted(scores, key=scores.get, reverse=True))}
    colour, count = _colour_of(SimpleNamespace(ranks=ranks, scores=scores))
    top = [np.array(colour(ranks[slot]), float) for slot in (0, 1, 2)]
    assert count == 4 and min(np.abs(a - b).sum() for i, a in enumerate(top) for b in top[i + 1 :]) > 60
