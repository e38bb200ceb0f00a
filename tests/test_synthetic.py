"""The synthetic clip generator: exact format, determinism, variety, drawn people, and cues that a
geometry model can learn while the box-size and centrality heuristics stay near chance; in the
hard setting, a cue that per-person statistics cannot see and comparing people in time can; in
each cue world, its one cue and no other."""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

from msgvip.data import read_clip
from msgvip.data.synthetic import (
    BADGE,
    CLOTHES,
    DIFFICULTIES,
    HARD_CHAIN,
    HARD_CHAIN_GAP,
    HARD_EDGE_FRAMES,
    HARD_GESTURE_FRAMES,
    HARD_MIN_FRAMES,
    HARD_MIN_PERSONS,
    HARD_SEPARATION,
    WORLD_MIN_PERSONS,
    WORLDS,
    DemoDataConfig,
    generate_clip,
    split_of,
    write_demo_data,
)

SMALL = DemoDataConfig(clips=12, frames=16, persons=6, height=64, width=112, seed=3)
FIELDS = {"frames", "bboxes", "person_ids", "frame_mask", "person_mask", "target_index", "original_ids", "video_id", "scene_category"}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    out = tmp_path_factory.mktemp("demo")
    summary = write_demo_data(out, SMALL)
    paths = sorted(out.glob("*/*.npz"))
    assert sum(summary.clips_per_split.values()) == len(paths) == SMALL.clips
    return out, paths


def load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as fields:
        return {name: fields[name] for name in fields.files}


def digest(clip: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(clip):
        h.update(name.encode() + str(clip[name].dtype).encode() + str(clip[name].shape).encode() + clip[name].tobytes())
    return h.hexdigest()


def test_fields_shapes_and_dtypes(written: tuple[Path, list[Path]]) -> None:
    t, n, height, width = SMALL.frames, SMALL.persons, SMALL.height, SMALL.width
    for path in written[1]:
        clip = load(path)
        assert set(clip) == FIELDS
        assert clip["frames"].shape == (t, height, width, 3) and clip["frames"].dtype == np.uint8
        assert clip["bboxes"].shape == (t, n, 4) and clip["bboxes"].dtype == np.float32
        assert clip["person_ids"].shape == (t, n) and clip["person_ids"].dtype == np.int32
        assert clip["frame_mask"].shape == (t,) and clip["frame_mask"].dtype == np.bool_
        assert clip["person_mask"].shape == (t, n) and clip["person_mask"].dtype == np.bool_
        assert clip["target_index"].shape == () and clip["target_index"].dtype == np.int64
        assert clip["original_ids"].shape == (n,) and clip["original_ids"].dtype == np.int32
        assert clip["video_id"].shape == () and clip["video_id"].dtype.kind == "U"
        assert clip["scene_category"].shape == () and clip["scene_category"].dtype.kind == "U"
        assert clip["video_id"].item() == f"demo_{int(path.stem.split('_')[1]):05d}"
        assert clip["scene_category"].item() in {f"{i:02d}" for i in range(1, 12)}


def test_masks_ids_and_target_agree(written: tuple[Path, list[Path]]) -> None:
    for path in written[1]:
        clip = load(path)
        mask, ids, boxes = clip["person_mask"], clip["person_ids"], clip["bboxes"]
        assert not mask[~clip["frame_mask"]].any(), "padding frames hold nobody"
        assert not clip["frames"][~clip["frame_mask"]].any(), "padding frames are blank"
        assert (boxes[~mask] == 0).all() and (ids[~mask] == -1).all()
        used = mask.any(0)
        assert (clip["original_ids"][~used] == -1).all() and (clip["original_ids"][used] >= 0).all()
        assert (ids == np.where(mask, clip["original_ids"][None, :], -1)).all()
        assert len(set(clip["original_ids"][used].tolist())) == used.sum()
        assert ((boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1]))[mask].all()
        target = int(clip["target_index"])
        assert mask[:, target].sum() >= 0.7 * clip["frame_mask"].sum(), "the target is there most of the clip"


def test_the_reader_accepts_every_clip(written: tuple[Path, list[Path]]) -> None:
    for path in written[1]:
        clip = read_clip(path)
        assert clip.target == int(load(path)["target_index"])
        assert clip.person_mask.sum() == load(path)["person_mask"].sum()


def test_deterministic_per_seed_and_index() -> None:
    first, again = generate_clip(4, SMALL), generate_clip(4, SMALL)
    assert digest(first) == digest(again)
    other_seed = generate_clip(4, replace(SMALL, seed=SMALL.seed + 1))
    assert not np.array_equal(first["frames"], other_seed["frames"])
    assert not np.array_equal(first["bboxes"], other_seed["bboxes"])
    # clip i does not depend on how many clips are made
    assert digest(generate_clip(4, replace(SMALL, clips=1000))) == digest(first)
    assert digest(generate_clip(5, SMALL)) != digest(first)


def test_same_clip_in_another_process(written: tuple[Path, list[Path]]) -> None:
    script = (
        "from msgvip.data.synthetic import DemoDataConfig, generate_clip; import numpy as np, sys;"
        f"c = generate_clip(7, DemoDataConfig(**{asdict(SMALL)!r})); np.savez(sys.argv[1], **c)"
    )
    path = written[0] / "other_process.npz"
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, env={**os.environ, "PYTHONHASHSEED": "123"})
    assert digest(load(path)) == digest(generate_clip(7, SMALL))
    written_clip = next(p for p in written[1] if p.stem == "clip_00007")
    assert digest(load(written_clip)) == digest(generate_clip(7, SMALL))


def test_clips_vary() -> None:
    config = DemoDataConfig(frames=16, persons=8, height=64, width=112)
    clips = [generate_clip(i, config) for i in range(40)]
    people = [int(c["person_mask"].any(0).sum()) for c in clips]
    assert min(people) == 2 and max(people) == 8 and len(set(people)) >= 5
    # slots are spread: the people do not always sit in the first slots
    assert any(c["person_mask"].any(0)[people[i] :].any() for i, c in enumerate(clips))
    assert len({int(c["target_index"]) for c in clips}) >= 6
    # some people arrive late or leave early; some clips end with padding frames
    partial = sum(int((c["person_mask"][c["frame_mask"]].any(0) & ~c["person_mask"][c["frame_mask"]].all(0)).sum()) for c in clips)
    assert partial >= 10
    assert 2 <= sum(not c["frame_mask"].all() for c in clips) <= 25


def test_splits_follow_the_fractions(tmp_path: Path) -> None:
    config = DemoDataConfig(clips=10, frames=4, persons=2, height=32, width=32, seed=9)
    fractions = {"train": 0.7, "val": 0.15, "test": 0.15}
    names = [split_of(i, config) for i in range(2000)]
    for name, fraction in fractions.items():
        assert abs(names.count(name) / len(names) - fraction) < 0.02
    # even ten clips get every split, and files land where split_of says
    summary = write_demo_data(tmp_path, config, progress=True)
    assert all(summary.clips_per_split[name] >= 1 for name in fractions)
    for i in range(config.clips):
        assert (tmp_path / split_of(i, config) / f"clip_{i:05d}.npz").is_file()
    assert summary.out == tmp_path and summary.seconds > 0


def test_frames_are_drawn_people_not_noise() -> None:
    config = DemoDataConfig(frames=8, height=96, width=160)
    for index in range(4):
        clip = generate_clip(index, config)
        frames = clip["frames"][clip["frame_mask"]].astype(np.int16)
        # flat colours: neighbouring pixels are mostly equal (random noise would differ by ~85)
        assert np.abs(np.diff(frames, axis=2)).mean() < 6
        assert (np.diff(frames, axis=2) == 0).all(-1).mean() > 0.8
        for f, frame in enumerate(frames):
            colours = frame.reshape(-1, 3)
            # the background (everything outside the boxes, with a 2-pixel margin) has few colours
            outside = np.ones(frame.shape[:2], bool)
            for x1, y1, x2, y2 in clip["bboxes"][f][clip["person_mask"][f]]:
                outside[max(int(y1) - 2, 0) : int(y2) + 3, max(int(x1) - 2, 0) : int(x2) + 3] = False
            background = np.unique(colours[outside.ravel()], axis=0)
            assert len(background) <= 6
            # ... and every box is largely covered by colours that are not background
            for x1, y1, x2, y2 in clip["bboxes"][f][clip["person_mask"][f]]:
                box = frame[max(int(y1), 0) : int(y2), max(int(x1), 0) : int(x2)].reshape(-1, 3)
                figure = ~(box[:, None, :] == background[None]).all(-1).any(1)
                assert figure.mean() > 0.3


def _rank_scores(clip: dict[str, np.ndarray], height: int, width: int) -> dict[str, np.ndarray]:
    """Per-slot scores over the valid frames (higher = more likely the target), invalid slots -inf."""
    boxes, mask = clip["bboxes"].astype(np.float64), clip["person_mask"]
    count = np.maximum(mask.sum(0), 1)
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    off_centre = np.hypot(centre[..., 0] - width / 2, centre[..., 1] - height / 2)

    # relational: how fast the others move toward this person, averaged over frames and others
    velocity = centre[1:] - centre[:-1]
    moving = mask[1:] & mask[:-1]
    offset = centre[1:, :, None] - centre[1:, None, :]  # [t, i, j] = centre_i - centre_j
    unit = offset / np.maximum(np.linalg.norm(offset, axis=-1, keepdims=True), 1e-6)
    toward = (unit * velocity[:, None]).sum(-1)  # [t, i, j]: speed of j toward i
    pairs = mask[1:, :, None] & moving[:, None, :] & ~np.eye(mask.shape[1], dtype=bool)
    approach = (toward * pairs).sum((0, 2)) / np.maximum(pairs.sum((0, 2)), 1)

    # temporal: how much this person's box height changes frame to frame, relative to its height
    height_px = boxes[..., 3] - boxes[..., 1]
    change = (np.abs(np.diff(height_px, axis=0)) * moving).sum(0) / np.maximum(moving.sum(0), 1)
    gesture = change / np.maximum((height_px * mask).sum(0) / count, 1)

    valid = mask.any(0)
    scores = {
        "largest box": (area * mask).sum(0) / count,
        "most central": -(off_centre * mask).sum(0) / count,
        "approach cue": approach,
        "gesture cue": gesture,
        "approach + gesture": approach / 0.5 + gesture / 0.05,  # both scaled to about 1 for the target
    }
    return {name: np.where(valid, score, -np.inf) for name, score in scores.items()}


def test_heuristics_stay_low_and_geometry_cues_find_the_target() -> None:
    config = DemoDataConfig(frames=24, persons=8, height=96, width=160, seed=11)
    clips = [generate_clip(i, config) for i in range(200)]
    hits: dict[str, int] = {}
    for clip in clips:
        for name, score in _rank_scores(clip, config.height, config.width).items():
            hits[name] = hits.get(name, 0) + int(np.argmax(score) == int(clip["target_index"]))
    accuracy = {name: hit / len(clips) for name, hit in hits.items()}
    chance = np.mean([1 / c["person_mask"].any(0).sum() for c in clips])
    print(f"top-1 over {len(clips)} clips (chance {chance:.2f}): " + ", ".join(f"{k} {v:.2f}" for k, v in accuracy.items()))
    assert accuracy["largest box"] < 0.45 and accuracy["most central"] < 0.45
    assert accuracy["approach + gesture"] > 0.6
    assert accuracy["approach + gesture"] > max(accuracy["largest box"], accuracy["most central"]) + 0.25


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="persons"):
        DemoDataConfig(persons=1)
    with pytest.raises(ValueError, match="frames"):
        DemoDataConfig(frames=2)
    with pytest.raises(ValueError, match="splits"):
        DemoDataConfig(splits=())


# --------------------------------------------------------------------------------------------
# difficulty="hard": everyone alike; only who raises an arm when, relative to the others, tells.

HARD = DemoDataConfig(clips=180, frames=24, persons=6, height=64, width=112, seed=7, difficulty="hard")


def _raises(clip: dict[str, np.ndarray]) -> dict[int, list[int]]:
    """Slot -> the frames its arm is up: its box is over 10% taller than in both neighbouring
    frames (the raised arm adds about 15%; walking and box jitter change it by a few percent)."""
    boxes, mask = clip["bboxes"].astype(np.float64), clip["person_mask"]
    tall = boxes[..., 3] - boxes[..., 1]  # (T, N)
    spike = np.zeros(tall.shape, bool)
    spike[1:-1] = tall[1:-1] > 1.1 * np.maximum(tall[:-2], tall[2:])
    return {int(s): np.flatnonzero(spike[:, s]).tolist() for s in np.flatnonzero(mask.any(0))}


def _leads(onset: dict[int, int], slot: int) -> bool:
    """Whether ``slot``'s raise starts a chain: nobody raised in the frames just before it, and
    two others after it, HARD_CHAIN_GAP frames apart."""
    o = onset[slot]
    others = {v for s, v in onset.items() if s != slot}
    quiet = not any(o - HARD_SEPARATION < v < o for v in others)
    return quiet and {o + HARD_CHAIN_GAP, o + 2 * HARD_CHAIN_GAP} <= others


def _order_rule(clip: dict[str, np.ndarray]) -> int:
    """The slot a rule that compares raise times across people picks: most raises by others
    shortly after its own, minus those shortly before."""
    onset = {s: f[0] for s, f in _raises(clip).items() if f}
    window = range(1, HARD_SEPARATION)
    score = {s: sum((o + k in onset.values()) - (o - k in onset.values()) for k in window) for s, o in onset.items()}
    return max(score, key=score.get)


def _reversed(clip: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {**clip, "frames": clip["frames"][::-1], "bboxes": clip["bboxes"][::-1], "person_mask": clip["person_mask"][::-1]}


def test_hard_clips_are_deterministic_and_their_own() -> None:
    first = generate_clip(4, HARD)
    assert digest(first) == digest(generate_clip(4, HARD)) == digest(generate_clip(4, replace(HARD, clips=1000)))
    assert digest(generate_clip(5, HARD)) != digest(first)
    assert digest(generate_clip(4, replace(HARD, seed=8))) != digest(first)
    assert digest(generate_clip(4, replace(HARD, difficulty="default"))) != digest(first)


def test_hard_target_leads_a_chain_of_raised_arms() -> None:
    """From the written boxes alone: everyone is there throughout and raises an arm at most once,
    for one frame, never next to another raise; the target's raise is the only one that starts a
    chain; and playing the clip backwards makes the closer the leader."""
    clips = [generate_clip(i, replace(HARD, height=96, width=160)) for i in range(60)]
    first_raiser = 0
    for clip in clips:
        target, t = int(clip["target_index"]), HARD.frames
        assert clip["frame_mask"].all() and (clip["person_mask"].all(0) == clip["person_mask"].any(0)).all()
        assert 4 <= clip["person_mask"].any(0).sum() <= HARD.persons
        raises = _raises(clip)
        assert all(len(frames) <= HARD_GESTURE_FRAMES for frames in raises.values())
        onset = {s: f[0] for s, f in raises.items() if f}
        assert len(onset) >= HARD_CHAIN and target in onset
        times = sorted(onset.values())
        assert np.diff(times).min() >= HARD_CHAIN_GAP, "no two raises at once or in neighbouring frames"
        assert HARD_EDGE_FRAMES <= times[0] and times[-1] < t - HARD_EDGE_FRAMES
        assert [s for s in onset if _leads(onset, s)] == [target]
        assert _order_rule(clip) == target
        assert _order_rule(_reversed(clip)) != target
        first_raiser += onset[target] == times[0]
    # loners raise before the chain too: the first raise of a clip is not a give-away
    assert first_raiser <= 0.6 * len(clips)


def test_hard_clips_defeat_a_per_person_probe(tmp_path: Path) -> None:
    """Time-pooled per-person statistics of the geometry (msgvip probe) stay near chance on hard
    clips, while comparing raise times across people finds the target."""
    from msgvip.extract.geometry import GeometryExtractor
    from msgvip.ranker.probe import probe_store
    from msgvip.store import FeatureStore, Snapshot, SnapshotEntry, fingerprint, open_storage
    from msgvip.store.feature_store import MASK_ARRAY

    write_demo_data(tmp_path / "data", HARD)
    geometry = GeometryExtractor()
    config = {"features": {"geometry": geometry.spec()}}
    store = FeatureStore.create(open_storage(tmp_path / "cache"), fingerprint(config), config, geometry.arrays())
    entries, rule_hits = [], 0
    with store.writer() as writer:
        for path in sorted((tmp_path / "data").rglob("*.npz")):
            clip = read_clip(path)
            writer.add(clip.content_hash, {MASK_ARRAY: clip.person_mask, **geometry.extract([clip])[0]})
            entries.append(SnapshotEntry(f"{path.parent.name}/{path.name}", clip.content_hash, path.parent.name, clip.target, clip.scene, str(path)))
            rule_hits += _order_rule(load(path)) == clip.target
    store.write_snapshot(Snapshot("hard", str(tmp_path / "data"), time.time(), tuple(entries)))
    report = probe_store(FeatureStore.open(store.path), families=["geometry"])
    learned = [r for r in report.rows if r.param is not None]
    print(f"order rule {rule_hits / HARD.clips:.2f}; probes (val, test): " + ", ".join(f"{r.scorer} {r.val['rank@1']:.2f} {r.test['rank@1']:.2f}" for r in learned))
    assert rule_hits >= 0.9 * HARD.clips
    assert len(learned) == 3 and all(r.test["rank@1"] <= 0.5 and r.val["rank@1"] <= 0.5 for r in learned)
    assert np.mean([r.test["rank@1"] for r in learned] + [r.val["rank@1"] for r in learned]) <= 0.35


def test_hard_config_is_checked() -> None:
    with pytest.raises(ValueError, match=f"difficulty must be one of {', '.join(DIFFICULTIES)}, got 'medium'"):
        DemoDataConfig(difficulty="medium")
    with pytest.raises(ValueError, match=f"persons must be >= {HARD_MIN_PERSONS} for difficulty 'hard'"):
        DemoDataConfig(persons=3, difficulty="hard")
    with pytest.raises(ValueError, match=f"frames must be >= {HARD_MIN_FRAMES} for difficulty 'hard'"):
        DemoDataConfig(frames=HARD_MIN_FRAMES - 1, difficulty="hard")
    DemoDataConfig(frames=8, persons=2)  # the default setting keeps its own limits


# --------------------------------------------------------------------------------------------
# The cue worlds: one cue each, everything else drawn alike.

WORLD = DemoDataConfig(clips=150, frames=24, persons=6, height=64, width=112, seed=5)
# the per-person statistics (see _person_statistics) each world's cue shows in
CUES = {"presence": {"presence"}, "drift": {"approach"}, "group": {"closeness"}, "appearance": set(), "pixel": set()}


def test_default_and_hard_clips_keep_their_bytes() -> None:
    """New settings must not change the old ones: these digests were taken before the cue worlds
    were added (numpy 2.4). If a deliberate change to the default or hard draw breaks them, take
    them anew and say so."""
    pinned = {
        "default": (SMALL, "cb7574bc5da8249c74440ff2dd89acd84e35470b4b9479af6d5d2e32623d8195"),
        "hard": (HARD, "8c7587dea3196e237bdf7e6c404e13373460cbd45a124fc8fca280f1b71ebe05"),
    }
    for name, (config, expected) in pinned.items():
        h = hashlib.sha256()
        for index in range(4):
            h.update(digest(generate_clip(index, config)).encode())
        assert h.hexdigest() == expected, name


def _person_statistics(clip: dict[str, np.ndarray], height: int, width: int) -> dict[str, np.ndarray]:
    """Per slot, -inf at empty ones: time-pooled statistics of its own box, as a per-person probe
    sees them, and two relations to the others (how fast they come its way; how close they stand)."""
    boxes, mask = clip["bboxes"].astype(np.float64), clip["person_mask"]
    count = np.maximum(mask.sum(0), 1)
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    moving = mask[1:] & mask[:-1]
    step = np.linalg.norm(np.diff(centre, axis=0), axis=-1)
    slots = np.arange(mask.shape[1])
    first, last = mask.argmax(0), len(mask) - 1 - mask[::-1].argmax(0)
    valid = mask.any(0)
    mean_centre = (centre * mask[..., None]).sum(0) / count[:, None]
    apart = np.linalg.norm(mean_centre[:, None] - mean_centre[None], axis=-1)
    heuristics = _rank_scores(clip, height, width)
    statistics = {
        "presence": mask.mean(0),
        "x": mean_centre[:, 0],
        "y": mean_centre[:, 1],
        "area": heuristics["largest box"],
        "height": ((boxes[..., 3] - boxes[..., 1]) * mask).sum(0) / count,
        "speed": (step * moving).sum(0) / np.maximum(moving.sum(0), 1),
        "displacement": np.linalg.norm(centre[last, slots] - centre[first, slots], axis=-1),
        "height change": heuristics["gesture cue"],
        "approach": heuristics["approach cue"],
        "closeness": -(apart * valid).sum(1) / max(valid.sum() - 1, 1),
    }
    return {name: np.where(valid, value, -np.inf) for name, value in statistics.items()}


def _target_rank(score: np.ndarray, target: int) -> float:
    """Where the target's score falls among the others' of its clip: 0 below all, 1 above all, ties
    halfway; 0.5 on average when the score says nothing."""
    others = score[np.isfinite(score) & (np.arange(len(score)) != target)]
    return float(((others < score[target]).sum() + 0.5 * (others == score[target]).sum()) / len(others))


@functools.cache
def _world_ranks(difficulty: str) -> tuple[dict[str, float], dict[str, float], float]:
    """Over WORLD's clips drawn in ``difficulty``: the target's mean rank on each per-person
    statistic, how often the largest box and the most central one are the target, and chance."""
    config = replace(WORLD, difficulty=difficulty)
    ranks: dict[str, list[float]] = {}
    hits = {"largest box": 0, "most central": 0}
    chance = 0.0
    for index in range(config.clips):
        clip = generate_clip(index, config)
        target = int(clip["target_index"])
        for name, score in _person_statistics(clip, config.height, config.width).items():
            ranks.setdefault(name, []).append(_target_rank(score, target))
        heuristics = _rank_scores(clip, config.height, config.width)
        for name in hits:
            hits[name] += int(np.argmax(heuristics[name]) == target)
        chance += 1 / clip["person_mask"].any(0).sum() / config.clips
    return {name: float(np.mean(r)) for name, r in ranks.items()}, {name: hit / config.clips for name, hit in hits.items()}, chance


@pytest.mark.parametrize("difficulty", WORLDS)
def test_each_world_shows_its_cue_and_no_other_in_the_boxes(difficulty: str) -> None:
    """The target ranks high on its world's cue statistics, and like anyone on every other box
    statistic (its own size, place, motion and presence); largest box and most central stay near
    chance. Appearance and pixel worlds have no cue in the boxes at all."""
    ranks, heuristics, chance = _world_ranks(difficulty)
    print(f"{difficulty}: target ranks " + ", ".join(f"{k} {v:.2f}" for k, v in ranks.items()) + f"; heuristics {heuristics} (chance {chance:.2f})")
    for name, rank in ranks.items():
        if name in CUES[difficulty]:
            assert rank > 0.65, name
        else:
            assert abs(rank - 0.5) < 0.1, name
    for name, hit in heuristics.items():
        assert abs(hit - chance) < 0.1, name


def test_the_box_check_finds_the_default_cues() -> None:
    """The check above can fail: on default clips, where the target gestures, is approached and
    does not walk, those statistics are far from the middle."""
    ranks, _, _ = _world_ranks("default")
    assert ranks["approach"] > 0.7 and ranks["height change"] > 0.7 and ranks["displacement"] < 0.4


def test_presence_target_is_there_throughout_and_nobody_else() -> None:
    config = replace(WORLD, clips=60, difficulty="presence")
    late = early = 0
    for index in range(config.clips):
        clip = generate_clip(index, config)
        mask, target = clip["person_mask"], int(clip["target_index"])
        others = mask[:, mask.any(0) & (np.arange(config.persons) != target)]
        assert clip["frame_mask"].all() and mask[:, target].all()
        assert (others.mean(0) < 1).all() and (others.mean(0) >= 0.25).all()
        late += int((~others[0]).sum())
        early += int((~others[-1]).sum())
        # each present once, in one stretch: arriving late or leaving early, never both
        assert (np.abs(np.diff(others.astype(int), axis=0)).sum(0) == 1).all()
    assert late >= 40 and early >= 40


def _torso_colours(clip: dict[str, np.ndarray]) -> dict[int, set[tuple[int, ...]]]:
    """Slot -> the colours at the middle of its torso, in the frames where no nearer box covers
    that spot (the torso is the upper 0.43 to 0.8 of the height below the head)."""
    colours: dict[int, set[tuple[int, ...]]] = {}
    for f in np.flatnonzero(clip["frame_mask"]):
        boxes, present = clip["bboxes"][f].astype(np.float64), clip["person_mask"][f]
        for slot in np.flatnonzero(present):
            x1, y1, x2, y2 = boxes[slot]
            x, y = (x1 + x2) / 2, y2 - 0.6 * (y2 - y1)
            nearer = present & (boxes[:, 3] > y2)
            if ((boxes[nearer, 0] <= x + 1) & (x - 1 <= boxes[nearer, 2]) & (boxes[nearer, 1] <= y + 1) & (y - 1 <= boxes[nearer, 3])).any():
                continue
            colours.setdefault(int(slot), set()).add(tuple(clip["frames"][f, int(y), int(x)].tolist()))
    return colours


def test_appearance_bystanders_wear_one_shirt_and_the_target_another() -> None:
    """In the pixels, every bystander's torso shows one colour of the palette, the target's
    another, and the colour changes from clip to clip; with each one's own clothes (the pixel
    world) the bystanders' shirts differ."""
    uniforms, seen, mixed = set(), 0, 0
    for difficulty in ("appearance", "pixel"):
        config = replace(WORLD, clips=30, frames=8, difficulty=difficulty)
        for index in range(config.clips):
            clip = generate_clip(index, config)
            colours = _torso_colours(clip)
            target = int(clip["target_index"])
            bystanders = set().union(*(c for slot, c in colours.items() if slot != target))
            if difficulty == "pixel":
                mixed += len(bystanders) > 1
                continue
            assert len(bystanders) == 1 and next(iter(bystanders)) in {tuple(c) for c in CLOTHES.tolist()}
            uniforms |= bystanders
            if target in colours:
                seen += 1
                assert colours[target] & bystanders == set()
    assert seen >= 20 and len(uniforms) >= 6 and mixed >= 20


def test_pixel_target_wears_the_badge_and_nobody_else() -> None:
    """Badge-coloured pixels lie inside the target's box only, show in most clips, and are at most
    2 by 2 on 96-row frames; no other world draws that colour."""
    shown = 0
    for difficulty in WORLDS:
        config = replace(WORLD, clips=20, frames=6, height=96, width=160, difficulty=difficulty)
        for index in range(config.clips):
            clip = generate_clip(index, config)
            badge = (clip["frames"] == BADGE).all(-1)  # (T, H, W)
            if difficulty != "pixel":
                assert not badge.any(), difficulty
                continue
            x1, y1, x2, y2 = clip["bboxes"][:, int(clip["target_index"])].T
            for f in np.flatnonzero(badge.any((1, 2))):
                rows, cols = np.nonzero(badge[f])
                assert ((cols >= x1[f] - 1) & (cols <= x2[f] + 1) & (rows >= y1[f] - 1) & (rows <= y2[f] + 1)).all()
                assert np.ptp(rows) <= 1 and np.ptp(cols) <= 1
            shown += badge.any()
    assert shown >= 15


@pytest.mark.parametrize("frames, persons", [(16, 20), (120, 4), (16, WORLD_MIN_PERSONS)])
def test_worlds_work_over_clip_shapes(frames: int, persons: int, tmp_path: Path) -> None:
    for difficulty in WORLDS:
        config = DemoDataConfig(clips=2, frames=frames, persons=persons, height=48, width=64, seed=1, difficulty=difficulty)
        write_demo_data(tmp_path / difficulty, config)
        for path in sorted((tmp_path / difficulty).glob("*/*.npz")):
            clip = read_clip(path)
            assert clip.person_mask.any(0).sum() >= WORLD_MIN_PERSONS and clip.person_mask[:, clip.target].any()


def test_worlds_are_deterministic_and_their_own() -> None:
    digests = set()
    for difficulty in WORLDS:
        config = replace(WORLD, frames=8, difficulty=difficulty)
        first = generate_clip(4, config)
        assert digest(first) == digest(generate_clip(4, config)) == digest(generate_clip(4, replace(config, clips=1000)))
        assert set(first) == FIELDS
        digests.add(digest(first))
    digests.add(digest(generate_clip(4, replace(WORLD, frames=8))))
    assert len(digests) == len(WORLDS) + 1


def test_world_config_is_checked() -> None:
    for difficulty in WORLDS:
        with pytest.raises(ValueError, match=f"persons must be >= {WORLD_MIN_PERSONS} for difficulty '{difficulty}'"):
            DemoDataConfig(persons=WORLD_MIN_PERSONS - 1, difficulty=difficulty)
        DemoDataConfig(frames=4, persons=WORLD_MIN_PERSONS, difficulty=difficulty)
