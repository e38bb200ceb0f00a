"""Synthetic MSG_VIP clips: small scenes of drawn people with one important person to find.

Each clip shows 2 to N stick-like figures (legs, torso, arms, a head with hair and eyes) in
varied clothes on a flat wall-and-tiled-floor background, drawn with numpy slicing and small
local masks. Figures stand at random depths (a nearer figure is lower in the frame and larger,
times a random body size), enter and leave the scene, and occlude each other far-to-near.

The important person (the *target*) is chosen at random among them; its size and position are
drawn exactly like everyone else's, so "largest box" and "most central box" stay close to chance.
What singles it out are three cues, each probabilistic so that none is a give-away:

1. relational: most of the others walk toward the target and stop beside it, facing it (their
   box centres drift toward its box; their profiles turn to it in the pixels). Others still
   wander elsewhere or stand facing a random side.
2. temporal: the target usually gestures, raising an arm and crouching in a steady rhythm, so
   its box height oscillates over the clip while the others' barely changes. One frame alone
   cannot show it (a raised arm looks like any pose); a few bystanders gesture too.
3. pixel only: the target usually faces the camera (two eyes), while the others are mostly in
   profile (one eye, hair on the back of the head). This is invisible in the boxes.

Cues 1 and 2 live in the boxes, so a geometry-only ranker can learn the task; cue 3 rewards
appearance features. Clip ``i`` is drawn from ``np.random.default_rng([seed, i])`` alone, so it is
the same whatever the number of clips, the process or the platform.

``difficulty="hard"`` removes every cue a person carries alone, so that time-pooled per-person
statistics (a probe) stay near chance and only relations between people in time find the target.
Every person is drawn alike (present the whole clip, same sizes, places, wandering and facing)
and raises an arm at most once, for one frame, never within a frame of anyone else's raise (so not
even a per-frame comparison with the others, such as a box-size rank, tells one raise from
another). What differs is *when*:

- the target (the *leader*) starts a *chain*: two others raise their arm after it, each
  HARD_CHAIN_GAP frames after the one before. The last of them (the *closer*) is the leader's
  mirror image;
- everyone else raises an arm alone, at least HARD_SEPARATION frames from any other raise, or
  (when the clip has no room left) keeps both arms down;
- the chain and the loners come in a random order with random pauses between them.

So the target is the only person whose raise has no other raise in the HARD_SEPARATION - 1 frames
before it and two chained after it. The layout is symmetric under playing the clip backwards
(which swaps leader and closer): a ranker blind to the order of frames can do no better than a
coin toss between the two. When a person raises its arm says a little on its own (a leader is
never among the last raises of a clip, a closer never among the first): on 24 frames a per-person
rule that knows each raise's frame exactly reaches about 0.32 Rank@1, against 0.19 for a pick among
those who raise an arm. Shorter clips leave the chain too little room to move, so the setting needs
HARD_MIN_FRAMES frames.

The *cue worlds* (WORLDS) each keep ONE kind of cue, to test whether a ranker's defaults find cues
of every kind. As in the hard setting everyone is drawn by one law, the target included (sizes,
places, wandering, facing the camera with P_HARD_FRONTAL, present from the first to the last frame,
no padding), nobody gestures, and a clip has WORLD_MIN_PERSONS people or more; then each world
changes one thing:

- ``presence``: presence and timing only. The target is there from the first frame to the last;
  everyone else arrives late or leaves early (a coin toss each) and is there for a quarter of the
  frames up to all but one. The presence fraction alone finds the target in every clip.
- ``drift``: the relational drift only. Everyone, the target too, walks as often (P_DRIFT_WALKS)
  and as fast, but only the target walks to a random spot: a walking bystander heads for a spot
  beside the target, which moves along with it, and stays there (the default's relational cue,
  without the target standing still). Its own motion says nothing; only where the others go does.
- ``group``: group-relative geometry only. Nobody walks; the others stand around the target, half
  on its left and half on its right, past a clearing of GROUP_CLEARING frame widths over the number
  of people and up to a spread drawn per clip (GROUP_SPREAD). Depths and sizes are drawn alike, and
  positions past a frame edge are mirrored back in, so each x alone is uniform like everyone's: no
  single column tells (nor largest box or most central), while a person's distance to the others,
  or its x minus the clip's mean, does in part (near an edge the mirrored group stands to one side).
- ``appearance``: appearance only. All bystanders wear one shirt colour (sleeves included), the
  target another, both drawn per clip from CLOTHES; trousers, skin and hair are each one's own. The
  boxes carry nothing; only pixels tell.
- ``pixel``: a cue a random backbone cannot be expected to see. The target wears a tiny badge of a
  colour nothing else is drawn in (BADGE) on its chest, BADGE_SIZE of its height: 1 or 2 pixels on
  96-row frames. The boxes carry nothing: every ranker but one that learns pixels should be at
  chance, which tests that a model does no worse than the probe.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..progress import progress_bar

# How often each cue is present: high enough to learn, low enough that no cue is certain.
P_OTHER_APPROACHES = 0.7  # each bystander walks toward the target
P_OTHER_WANDERS = 0.15  # ... else walks to a random spot (else stands still)
P_STILL_FACES_TARGET = 0.6  # a still bystander looks at the target
P_TARGET_GESTURES = 0.8
P_OTHER_GESTURES = 0.1
P_TARGET_FRONTAL = 0.75
P_OTHER_FRONTAL = 0.08
P_PADDED_TAIL = 0.25  # the clip ends with a few padding frames
P_OTHER_FULL_STAY = 0.55  # a bystander is present from the first to the last frame

# The cue worlds (see the module docstring): one cue each, and everything else drawn alike.
WORLDS = ("presence", "drift", "group", "appearance", "pixel")
DIFFICULTIES = ("default", "hard", *WORLDS)
WORLD_MIN_PERSONS = 3  # "everyone but the target" and "the one the others stand around" need two others
P_DRIFT_WALKS = 0.7  # in "drift" each person, the target too, walks (else stands, swaying)
# In "group" the others leave the target a clearing on either side, GROUP_CLEARING frame widths
# over the number of people in the clip (about each one's share of the frame: a narrower clearing
# makes the target less often the most central person, a wider one more often), and stand up to a
# spread, drawn per clip in GROUP_SPREAD frame widths, beyond it.
GROUP_CLEARING = 0.5
GROUP_SPREAD = (0.15, 0.35)
BADGE = np.array([255, 255, 255], np.uint8)  # "pixel": the target's badge, a colour nothing else is drawn in
BADGE_SIZE = 0.03  # its side, in units of the wearer's height: 1 or 2 pixels on 96-row frames

# The hard setting (see the module docstring): timings in frames.
HARD_GESTURE_FRAMES = 1  # an arm stays raised this long
HARD_CHAIN = 3  # leader and two followers
HARD_CHAIN_GAP = 2  # frames from one raise of the chain to the next
HARD_SEPARATION = 4  # at least this many frames between raises not in one chain
HARD_MIN_PERSONS = 4  # the chain and someone outside it
# Nobody raises an arm in the first or last 3 frames. A track's first and last values, its last
# minus first, and the means of its velocity and acceleration (sums that telescope to values at
# the ends) would otherwise tell an early raise (a leader's) from a late one (a closer's).
HARD_EDGE_FRAMES = 3
HARD_MIN_FRAMES = 24  # fewer, and when a person raises its arm tells who leads: 0.45 Rank@1 on 20 frames, 0.75 on 16
P_HARD_WANDERS = 0.3  # each person walks to a random spot (else stands, swaying); also in presence, appearance, pixel
P_HARD_FRONTAL = 0.25  # each person faces the camera (else a random side, or where it walks)

BOX_NOISE_PX = 0.3  # detector-like jitter of the box coordinates
SPLIT_STREAM = 0x5B17  # extra seed word: split assignment never touches a clip's own stream
GOLDEN = (math.sqrt(5) - 1) / 2

# Proportions of a figure, in units of its standing height h (vertical ones shrink when crouching).
HIP, SHOULDER, HEAD_R = 0.46, 0.80, 0.12
TORSO_HALF, LEG_W, LEG_OFF, ARM_W, ARM_LEN = 0.15, 0.10, 0.065, 0.07, 0.40
MAX_CROUCH = 0.3  # a full crouch shortens the body below the head by this fraction
STRIDE = 0.06  # leg swing while walking

CLOTHES = np.array(
    [[200, 40, 40], [40, 90, 200], [30, 150, 70], [230, 180, 30], [140, 60, 170], [240, 120, 30], [20, 160, 170],
     [220, 220, 220], [60, 60, 60], [170, 110, 60], [230, 100, 160], [110, 170, 40], [30, 40, 110], [150, 20, 60]],
    dtype=np.uint8,
)  # fmt: skip
SKIN = np.array([[255, 219, 172], [241, 194, 125], [224, 172, 105], [198, 134, 66], [141, 85, 36], [96, 60, 30]], np.uint8)
HAIR = np.array([[30, 20, 15], [90, 55, 25], [200, 160, 80], [120, 30, 10], [160, 160, 160]], np.uint8)
EYE = np.array([15, 15, 25], np.uint8)


@dataclass(frozen=True)
class DemoDataConfig:
    clips: int = 300
    frames: int = 32  # T
    persons: int = 8  # N = padded person slots
    height: int = 96
    width: int = 160
    seed: int = 0
    splits: tuple[tuple[str, float], ...] = (("train", 0.7), ("val", 0.15), ("test", 0.15))
    difficulty: str = "default"  # or "hard": no per-person cue, or one of WORLDS: one cue (see the module docstring)

    def __post_init__(self) -> None:
        if self.clips < 0:
            raise ValueError(f"clips must be >= 0, got {self.clips}")
        if self.frames < 4:
            raise ValueError(f"frames must be >= 4 (the cues need time to show), got {self.frames}")
        if self.persons < 2:
            raise ValueError(f"persons must be >= 2 (a clip has at least two people), got {self.persons}")
        if self.height < 32 or self.width < 32:
            raise ValueError(f"frames must be at least 32x32 pixels to draw people, got {self.height}x{self.width}")
        if not self.splits or any(f < 0 for _, f in self.splits) or sum(f for _, f in self.splits) <= 0:
            raise ValueError(f"splits need non-negative fractions with a positive sum, got {self.splits}")
        if self.difficulty not in DIFFICULTIES:
            raise ValueError(f"difficulty must be one of {', '.join(DIFFICULTIES)}, got {self.difficulty!r}")
        if self.difficulty == "hard" and self.persons < HARD_MIN_PERSONS:
            raise ValueError(f"persons must be >= {HARD_MIN_PERSONS} for difficulty 'hard' (a chain of three and one more), got {self.persons}")
        if self.difficulty == "hard" and self.frames < HARD_MIN_FRAMES:
            raise ValueError(f"frames must be >= {HARD_MIN_FRAMES} for difficulty 'hard' (room for the chain of raised arms to move), got {self.frames}")
        if self.difficulty in WORLDS and self.persons < WORLD_MIN_PERSONS:
            raise ValueError(f"persons must be >= {WORLD_MIN_PERSONS} for difficulty {self.difficulty!r} (the target and two others to tell it from), got {self.persons}")


@dataclass(frozen=True)
class DemoDataSummary:
    out: Path
    clips_per_split: dict[str, int]
    seconds: float


def split_of(index: int, config: DemoDataConfig) -> str:
    """The split of clip ``index``, from (seed, index) only.

    A golden-ratio (Weyl) sequence with a seeded offset: deterministic per clip, and any prefix
    of clips follows the split fractions closely, even a handful (plain random draws would often
    leave the validation split of a 10-clip test set empty).
    """
    offset = np.random.default_rng([config.seed, SPLIT_STREAM]).random()
    u = (offset + index * GOLDEN) % 1.0
    total = sum(f for _, f in config.splits)
    bound = 0.0
    for name, fraction in config.splits:
        bound += fraction / total
        if u < bound:
            return name
    return config.splits[-1][0]


def write_demo_data(out: str | Path, config: DemoDataConfig, progress: bool = False) -> DemoDataSummary:
    """Write ``config.clips`` clips to ``<out>/<split>/clip_<index:05d>.npz``.

    Files are written to a temporary name and renamed, so an interrupted run never leaves a
    truncated clip; existing files of the same names are replaced, other files are left alone.
    """
    start = time.perf_counter()
    out = Path(out)
    counts = {name: 0 for name, _ in config.splits}
    for index in progress_bar(range(config.clips), desc="demo clips", unit="clip", enabled=progress):
        split = split_of(index, config)
        _save_atomic(out / split / f"clip_{index:05d}.npz", generate_clip(index, config))
        counts[split] += 1
    return DemoDataSummary(out=out, clips_per_split=counts, seconds=time.perf_counter() - start)


def _save_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez_compressed(handle, **arrays)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


# --------------------------------------------------------------------------------------------
# One clip: cast the people, move them, then draw them.


class _Cast(NamedTuple):
    """Who is in the clip and what each person does; arrays have one entry per person (P)."""

    slots: np.ndarray  # (P,) slot of each person
    ids: np.ndarray  # (P,) person id
    target: int  # index into the P people
    present: np.ndarray  # (T, P) bool
    gestures: np.ndarray  # (P,) bool
    frontal: np.ndarray  # (P,) bool: faces the camera
    clothes: np.ndarray  # (P, 3, 3) uint8: shirt, trousers and sleeve colours
    skin: np.ndarray  # (P, 3) uint8
    hair: np.ndarray  # (P, 3) uint8
    onset: np.ndarray | None = None  # (P,) all but the default: the frame each person raises its arm, -1 never
    badge: np.ndarray | None = None  # (P,) bool, "pixel" only: wears the badge


class _Motion(NamedTuple):
    """Per-frame pose parameters, (T, P) each."""

    x: np.ndarray  # foot centre x, pixels
    foot: np.ndarray  # foot y, pixels (depth: larger = nearer)
    h: np.ndarray  # standing height, pixels
    crouch: np.ndarray  # 0..1
    arm: np.ndarray  # raised-arm angle, 0 = hanging down, pi = straight up
    stride: np.ndarray  # leg swing offset, in units of h
    facing: np.ndarray  # -1 left, +1 right, 0 toward the camera


def generate_clip(index: int, config: DemoDataConfig) -> dict[str, np.ndarray]:
    """Clip ``index`` as the arrays of one MSG_VIP ``.npz`` (see DESIGN.md section 2)."""
    rng = np.random.default_rng([config.seed, index])
    t, n, height, width = config.frames, config.persons, config.height, config.width
    if config.difficulty == "default":
        padded = int(rng.integers(1, max(1, t // 8) + 1)) if rng.random() < P_PADDED_TAIL else 0
        live = t - padded  # frames [live, T) are padding
        cast = _cast(rng, n, t, live)
        motion = _move(rng, cast, t, height, width)
    else:
        live = t  # no padding: a padded tail would be one more thing that is not the setting's cue
        cast = _cast_alike(rng, n, t, config.difficulty)
        motion = _move_alike(rng, cast, t, height, width, config.difficulty)
    background = _background(rng, height, width)

    frames = np.zeros((t, height, width, 3), np.uint8)
    bboxes = np.zeros((t, n, 4), np.float32)
    person_mask = np.zeros((t, n), bool)
    person_ids = np.full((t, n), -1, np.int32)
    for f in range(live):
        frames[f] = background
        # far (higher up) people first, so nearer ones occlude them
        for p in np.argsort(motion.foot[f], kind="stable"):
            if not cast.present[f, p]:
                continue
            box = _draw_person(frames[f], cast, motion, f, p)
            slot = cast.slots[p]
            bboxes[f, slot] = box + rng.normal(0.0, BOX_NOISE_PX, 4)
            person_mask[f, slot] = True
            person_ids[f, slot] = cast.ids[p]

    original_ids = np.full(n, -1, np.int32)
    original_ids[cast.slots] = cast.ids
    return {
        "frames": frames,
        "bboxes": bboxes,
        "person_ids": person_ids,
        "frame_mask": np.arange(t) < live,
        "person_mask": person_mask,
        "target_index": np.array(cast.slots[cast.target], np.int64),
        "original_ids": original_ids,
        "video_id": np.array(f"demo_{index:05d}"),
        "scene_category": np.array(f"{int(rng.integers(1, 12)):02d}"),
    }


def _cast(rng: np.random.Generator, n: int, t: int, live: int) -> _Cast:
    """Pick the people, their slots and ids, when each is present, and who shows which cue."""
    people = int(rng.integers(2, n + 1))
    target = int(rng.integers(people))
    slots = rng.choice(n, people, replace=False)  # random slots: the slot number says nothing
    ids = rng.choice(np.arange(1, 1000), people, replace=False).astype(np.int32)

    # Presence intervals [start, end). The target is there for (almost) the whole clip;
    # bystanders stay, arrive late, leave early or just pass through.
    start = np.zeros(people, int)
    end = np.full(people, live)
    slack = live // 8
    for p in range(people):
        if p == target:
            start[p] = rng.integers(0, slack + 1)
            end[p] = live - rng.integers(0, slack + 1)
            continue
        kind = rng.random()
        if kind < P_OTHER_FULL_STAY:
            continue
        length = int(rng.integers(max(2, live // 3), max(3, 3 * live // 4) + 1))
        if kind < 0.75:  # arrives late
            start[p] = live - length
        elif kind < 0.9:  # leaves early
            end[p] = length
        else:  # passes through
            start[p] = rng.integers(0, live - length + 1)
            end[p] = start[p] + length
    frame = np.arange(t)[:, None]
    present = (frame >= start) & (frame < end)

    gestures = rng.random(people) < P_OTHER_GESTURES
    gestures[target] = rng.random() < P_TARGET_GESTURES
    frontal = rng.random(people) < P_OTHER_FRONTAL
    frontal[target] = rng.random() < P_TARGET_FRONTAL
    return _Cast(
        slots=slots,
        ids=ids,
        target=target,
        present=present,
        gestures=gestures,
        frontal=frontal,
        clothes=CLOTHES[rng.integers(len(CLOTHES), size=(people, 3))],
        skin=SKIN[rng.integers(len(SKIN), size=people)],
        hair=HAIR[rng.integers(len(HAIR), size=people)],
    )


def _move(rng: np.random.Generator, cast: _Cast, t: int, height: int, width: int) -> _Motion:
    """Place everyone, walk the bystanders, and animate gestures, strides and head directions."""
    people, target = len(cast.slots), cast.target
    near, far = _depth_rows(height)
    body = rng.uniform(0.85, 1.12, people)  # children to tall adults: size is not only depth

    # Start positions: everyone, the target included, drawn alike, so where the target stands
    # (central or not, near or far) says nothing about it.
    foot0 = rng.uniform(far, near, people)
    x0 = rng.uniform(0.05, 0.95, people) * width

    # Where each bystander heads, how fast, from which frame, and where it looks meanwhile.
    goal = np.stack([x0, foot0], 1)
    speed = np.zeros(people)
    depart = np.zeros(people, int)
    looks_at_target = np.zeros(people, bool)
    side = rng.choice((-1.0, 1.0), people)
    width0 = 2 * TORSO_HALF * _stature(foot0, body, height)
    for p in range(people):
        if p == target:
            continue
        role = rng.random()
        if role < P_OTHER_APPROACHES:
            goal[p] = _beside(rng, x0[p], width0[p], x0[target], foot0[target], width0[target], height)
            speed[p] = rng.uniform(0.5, 1.3) * width / 160
            looks_at_target[p] = True
        elif role < P_OTHER_APPROACHES + P_OTHER_WANDERS:
            goal[p] = rng.uniform(0.05, 0.95) * width, rng.uniform(far, near)
            speed[p] = rng.uniform(0.4, 1.0) * width / 160
        else:
            looks_at_target[p] = rng.random() < P_STILL_FACES_TARGET
        depart[p] = rng.integers(0, t // 3 + 1)
    goal[:, 1] = np.clip(goal[:, 1], far, near)

    x, foot, walked = _walk(rng, np.stack([x0, foot0], 1), goal, speed, depart, t)
    frame = np.arange(t)[:, None]
    h = _stature(foot, body, height)

    # Gesture: one signed rhythm per gesturer; up = arm raised, down = crouch.
    period = rng.uniform(5.0, 10.0, people)
    rhythm = rng.uniform(0.7, 1.0, people) * np.sin(2 * np.pi * frame / period + rng.uniform(0, 2 * np.pi, people))
    rhythm = np.where(cast.gestures, rhythm, 0.0)
    arm = np.pi * np.clip(rhythm, 0.0, 1.0)
    crouch = np.clip(-rhythm, 0.0, 1.0)
    stride = STRIDE * np.sin(walked / (0.15 * h))

    # Facing: toward the target for those who care about it, else along the walk or a fixed side.
    toward = np.sign(x[:, [target]] - x)
    heading = np.where((speed > 0) & (goal[:, 0] != x0), np.sign(goal[:, 0] - x0), side)
    facing = np.where(looks_at_target & (toward != 0), toward, heading)
    facing = np.where(cast.frontal, 0.0, facing)
    return _Motion(x=x, foot=foot, h=h, crouch=crouch, arm=arm, stride=stride, facing=facing)


def _beside(
    rng: np.random.Generator, x: np.ndarray, size: np.ndarray, at_x: float, at_foot: float, at_size: float, height: int
) -> np.ndarray:
    """Where people now at ``x`` (torso widths ``size``) stop beside a person of width ``at_size``
    standing at (``at_x``, ``at_foot``): on the side they come from (never backing away), a little
    apart, at about its depth.  -> (..., 2) x and foot row, for ``x`` of any shape."""
    gap = np.minimum(0.5 * (size + at_size) * rng.uniform(1.0, 1.8, np.shape(x)), np.abs(x - at_x))
    return np.stack([at_x + np.sign(x - at_x) * gap, at_foot + rng.uniform(-0.06, 0.06, np.shape(x)) * height], -1)


def _depth_rows(height: int) -> tuple[float, float]:
    """Foot rows of the nearest and of the farthest people."""
    return 0.96 * height, 0.60 * height


def _stature(foot: np.ndarray, body: np.ndarray, height: int) -> np.ndarray:
    """Standing height in pixels of people with feet on row ``foot``: nearer is taller, times each
    one's ``body`` size."""
    near, far = _depth_rows(height)
    return height * (0.30 + 0.34 * (foot - far) / (near - far)) * body


def _walk(
    rng: np.random.Generator,
    start: np.ndarray,
    goal: np.ndarray,
    speed: np.ndarray,
    depart: np.ndarray,
    t: int,
    follow: tuple[int, np.ndarray] | None = None,
):
    """Walk each person in a straight line from ``start`` to ``goal`` (P, 2) at ``speed`` (P,)
    pixels a frame from frame ``depart`` (P,) on, plus a little sway.  -> x, foot, walked (T, P)
    each: walked is the distance covered so far (the legs swing with it).

    ``follow`` = (leader, chasers (P,) bool): the chasers' goals move with the leader, which walks
    to a fixed goal itself (each frame they head for their goal plus the way it has come)."""
    people = len(start)
    pos = np.empty((t, people, 2))
    pos[0] = start
    walked = np.zeros((t, people))
    for f in range(1, t):
        aim = goal
        if follow is not None:
            leader, chasers = follow
            aim = np.where(chasers[:, None], goal + pos[f - 1, leader] - start[leader], goal)
        delta = aim - pos[f - 1]
        dist = np.linalg.norm(delta, axis=1)
        step = np.where(f >= depart, np.minimum(speed, dist), 0.0)
        pos[f] = pos[f - 1] + delta * (step / np.maximum(dist, 1e-9))[:, None]
        walked[f] = walked[f - 1] + step
    # everyone sways a little, so "perfectly still" is not a cue either
    frame = np.arange(t)[:, None]
    sway = rng.uniform(0.0, 0.6, people) * np.sin(frame * rng.uniform(0.1, 0.4, people) + rng.uniform(0, 2 * np.pi, people))
    return pos[..., 0] + sway, pos[..., 1], walked


# --------------------------------------------------------------------------------------------
# Everyone alike: the hard setting and the cue worlds draw every person, the target included, by
# one law, but for the setting's own cue.


def _cast_alike(rng: np.random.Generator, n: int, t: int, difficulty: str) -> _Cast:
    """Like :func:`_cast`, but everyone faces the camera equally often, is present throughout (save
    in "presence", see :func:`_presence`) and keeps its arms down (save in "hard", where it raises
    one at the frame :func:`_hard_onsets` gives it, if any). "appearance" dresses the bystanders
    alike and "pixel" pins a badge on the target."""
    people = int(rng.integers(HARD_MIN_PERSONS if difficulty == "hard" else WORLD_MIN_PERSONS, n + 1))
    target = int(rng.integers(people))
    slots = rng.choice(n, people, replace=False)
    ids = rng.choice(np.arange(1, 1000), people, replace=False).astype(np.int32)
    onset = _hard_onsets(rng, people, target, t) if difficulty == "hard" else np.full(people, -1)
    present = _presence(rng, people, target, t) if difficulty == "presence" else np.ones((t, people), bool)
    frontal = rng.random(people) < P_HARD_FRONTAL
    clothes = CLOTHES[rng.integers(len(CLOTHES), size=(people, 3))]
    if difficulty == "appearance":
        # One shirt colour (sleeves included) for all bystanders, another for the target, both drawn
        # per clip so that no colour means "target"; trousers stay each one's own.
        uniform, odd = rng.choice(len(CLOTHES), 2, replace=False)
        clothes[:, [0, 2]] = CLOTHES[uniform]
        clothes[target, [0, 2]] = CLOTHES[odd]
    return _Cast(
        slots=slots,
        ids=ids,
        target=target,
        present=present,
        gestures=onset >= 0,
        frontal=frontal,
        clothes=clothes,
        skin=SKIN[rng.integers(len(SKIN), size=people)],
        hair=HAIR[rng.integers(len(HAIR), size=people)],
        onset=onset,
        badge=np.arange(people) == target if difficulty == "pixel" else None,
    )


def _presence(rng: np.random.Generator, people: int, target: int, t: int) -> np.ndarray:
    """Who is present when in "presence": the target from the first frame to the last, everyone else
    arriving late or leaving early (a coin toss each), there for a quarter of the frames up to all
    but one.  -> (T, P) bool."""
    length = rng.integers(max(1, t // 4), t, people)
    late = rng.random(people) < 0.5
    start = np.where(late, t - length, 0)
    start[target], length[target] = 0, t
    frame = np.arange(t)[:, None]
    return (frame >= start) & (frame < start + length)


def _hard_onsets(rng: np.random.Generator, people: int, target: int, t: int) -> np.ndarray:
    """The frame each person raises its arm, -1 for never: the chain the leader (``target``)
    starts and as many loners as fit, in a random order with random pauses.

    Every raise lies within frames [HARD_EDGE_FRAMES, T - HARD_EDGE_FRAMES).  -> (P,) int.
    """
    first, last = HARD_EDGE_FRAMES, t - HARD_EDGE_FRAMES - HARD_GESTURE_FRAMES  # earliest and latest raise
    others = rng.permutation([p for p in range(people) if p != target])
    chain, rest = [target, *others[: HARD_CHAIN - 1]], others[HARD_CHAIN - 1 :]
    room = last - first - (HARD_CHAIN - 1) * HARD_CHAIN_GAP  # where the chain may start, before any loner
    loners = rest[: room // HARD_SEPARATION]
    slack = room - len(loners) * HARD_SEPARATION
    units = [chain, *([p] for p in loners)]
    # The pause before each unit: differences of sorted uniform cuts of the slack, so the pause
    # before the first unit and the one after the last are alike (playing backwards changes nothing).
    pauses = np.diff(np.sort(rng.integers(0, slack + 1, len(units))), prepend=0)
    onset = np.full(people, -1)
    start = first
    for unit, pause in zip(rng.permutation(len(units)), pauses):
        members = units[unit]
        start += pause
        onset[members] = start + HARD_CHAIN_GAP * np.arange(len(members))
        start += HARD_CHAIN_GAP * (len(members) - 1) + HARD_SEPARATION
    return onset


def _move_alike(rng: np.random.Generator, cast: _Cast, t: int, height: int, width: int, difficulty: str) -> _Motion:
    """Place and walk everyone by one law, whoever is the target (nobody faces anybody in
    particular), and raise each gesturer's arm straight up for HARD_GESTURE_FRAMES frames from its
    raise.

    Two cue worlds bend where people go. In "group" the others stand around the target
    (:func:`_around`) and nobody walks, which would break the group up. In "drift" everyone walks
    as often (P_DRIFT_WALKS) and as fast, but only the target walks to a random spot: a bystander
    walks to a spot beside the target, which moves along with it."""
    people, target = len(cast.slots), cast.target
    near, far = _depth_rows(height)
    body = rng.uniform(0.85, 1.12, people)
    foot0 = rng.uniform(far, near, people)
    x0 = rng.uniform(0.05, 0.95, people) * width
    if difficulty == "group":
        x0 = _around(rng, x0, target, width)
    start = np.stack([x0, foot0], 1)
    wanders = rng.random(people) < {"drift": P_DRIFT_WALKS, "group": 0.0}.get(difficulty, P_HARD_WANDERS)
    goal = np.where(wanders[:, None], np.stack([rng.uniform(0.05, 0.95, people) * width, rng.uniform(far, near, people)], 1), start)
    speed = np.where(wanders, rng.uniform(0.4, 1.0, people) * width / 160, 0.0)
    depart = rng.integers(0, t // 3 + 1, people)
    follow = None
    if difficulty == "drift":
        # Chasing where the target is, not where it was: a walking target would otherwise leave
        # its chasers behind, heading for an empty spot.
        chasers = wanders & (np.arange(people) != target)
        size = 2 * TORSO_HALF * _stature(foot0, body, height)
        goal[chasers] = _beside(rng, x0[chasers], size[chasers], x0[target], foot0[target], size[target], height)
        goal[:, 1] = np.clip(goal[:, 1], far, near)
        follow = target, chasers
    x, foot, walked = _walk(rng, start, goal, speed, depart, t, follow)
    h = _stature(foot, body, height)

    frame = np.arange(t)[:, None]
    raised = cast.gestures & (frame >= cast.onset) & (frame < cast.onset + HARD_GESTURE_FRAMES)  # (T, P)
    side = rng.choice((-1.0, 1.0), people)
    heading = np.where(wanders & (goal[:, 0] != x0), np.sign(goal[:, 0] - x0), side)
    return _Motion(
        x=x,
        foot=foot,
        h=h,
        crouch=np.zeros((t, people)),
        arm=np.where(raised, np.pi, 0.0),
        stride=STRIDE * np.sin(walked / (0.15 * h)),
        facing=np.broadcast_to(np.where(cast.frontal, 0.0, heading), (t, people)),
    )


def _around(rng: np.random.Generator, x: np.ndarray, target: int, width: int) -> np.ndarray:
    """Foot x of everyone in "group": the target where ``x`` has it, the others around it, as many
    on its left as on its right (one more on a random side), past a clearing (GROUP_CLEARING) and
    up to a per-clip spread (GROUP_SPREAD) further. Positions past the frame's edge are mirrored
    back in: as each offset is as likely to either side and the target's x is uniform, every x alone
    is still uniform like everyone's; but near an edge the target ends up beside its group rather
    than in its middle."""
    others = np.flatnonzero(np.arange(len(x)) != target)
    side = rng.permutation(np.resize([-1.0, 1.0], len(others))) * rng.choice((-1.0, 1.0))
    offset = side * (GROUP_CLEARING / len(x) + rng.uniform(*GROUP_SPREAD) * rng.uniform(0.0, 1.0, len(others))) * width
    lo, span = 0.05 * width, 0.9 * width  # the range start positions are drawn from
    folded = (x[target] + offset - lo) % (2 * span)
    placed = x.copy()
    placed[others] = lo + np.where(folded > span, 2 * span - folded, folded)
    return placed


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A wall of vertical panels over a tiled floor: flat colours with a little structure."""
    wall = rng.integers(90, 220, 3)
    floor = rng.integers(60, 180, 3)
    horizon = int(rng.uniform(0.42, 0.55) * height)
    panel, tile = int(rng.integers(10, 24)), int(rng.integers(8, 16))
    rows, cols = np.mgrid[0:height, 0:width]
    image = np.where(((cols // panel) % 2 == 0)[..., None], wall, wall * 0.9)
    checker = ((rows // tile + cols // (2 * tile)) % 2 == 0)[..., None]
    image = np.where((rows >= horizon)[..., None], np.where(checker, floor, floor * 0.85), image)
    image[max(horizon - 1, 0) : horizon + 1] = wall * 0.6  # skirting board
    return image.astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Drawing one figure. Rectangles are slice assignments; the head and the gesturing arm use a
# mask over their own small bounding square, never over the whole frame.


def _draw_person(image: np.ndarray, cast: _Cast, motion: _Motion, f: int, p: int) -> np.ndarray:
    """Draw person ``p`` in frame ``f``; return its exact bounding box (x1, y1, x2, y2)."""
    x, foot, h = motion.x[f, p], motion.foot[f, p], motion.h[f, p]
    v = h * (1.0 - MAX_CROUCH * motion.crouch[f, p])  # vertical scale below the head
    shirt, trousers, sleeve = cast.clothes[p]
    hip, shoulder = foot - HIP * v, foot - SHOULDER * v
    stride = motion.stride[f, p] * h

    rects = [
        (x - (LEG_OFF + LEG_W / 2) * h + stride, hip, x - (LEG_OFF - LEG_W / 2) * h + stride, foot, trousers),
        (x + (LEG_OFF - LEG_W / 2) * h - stride, hip, x + (LEG_OFF + LEG_W / 2) * h - stride, foot, trousers),
        (x - TORSO_HALF * h, shoulder, x + TORSO_HALF * h, hip + 0.03 * v, shirt),
        (x - (TORSO_HALF + ARM_W) * h, shoulder + 0.02 * v, x - TORSO_HALF * h, shoulder + ARM_LEN * v, sleeve),
    ]
    # The other arm swings on an ellipse from hanging down (angle 0) to straight up (pi).
    angle = motion.arm[f, p]
    arm_x, arm_y = x + (TORSO_HALF + ARM_W / 2) * h, shoulder + 0.04 * v
    hand_x = arm_x + 0.12 * h * math.sin(angle)
    hand_y = arm_y + ARM_LEN * v * math.cos(angle)
    arm_r = ARM_W / 2 * h
    head_r = HEAD_R * h
    head_y = shoulder - 0.95 * head_r

    for x1, y1, x2, y2, colour in rects:
        _fill_rect(image, x1, y1, x2, y2, colour)
    if cast.badge is not None and cast.badge[p]:
        # on the chest, clear of both arms; whole pixels, so that it never rounds away to nothing
        side = max(1, round(BADGE_SIZE * h))
        bx, by = math.floor(x - 0.5 * TORSO_HALF * h), math.floor(shoulder + 0.12 * v)
        _fill_rect(image, bx, by, bx + side, by + side, BADGE)
    _fill_capsule(image, arm_x, arm_y, hand_x, hand_y, arm_r, sleeve)
    _draw_head(image, x, head_y, head_r, cast.skin[p], cast.hair[p], motion.facing[f, p])

    extents = np.array([r[:4] for r in rects] + [
        (min(arm_x, hand_x) - arm_r, min(arm_y, hand_y) - arm_r, max(arm_x, hand_x) + arm_r, max(arm_y, hand_y) + arm_r),
        (x - head_r, head_y - head_r, x + head_r, head_y + head_r),
    ])  # fmt: skip
    return np.concatenate([extents[:, :2].min(0), extents[:, 2:].max(0)])


def _span(lo: float, hi: float, size: int) -> slice:
    """The pixels from ``lo`` to ``hi`` (rounded to pixel edges), clipped to the frame."""
    return slice(min(max(round(lo), 0), size), min(max(round(hi), 0), size))


def _fill_rect(image: np.ndarray, x1: float, y1: float, x2: float, y2: float, colour: np.ndarray) -> None:
    image[_span(y1, y2, image.shape[0]), _span(x1, x2, image.shape[1])] = colour


def _local_grid(image: np.ndarray, x1: float, y1: float, x2: float, y2: float):
    """Slices of the frame covering [x1, x2) x [y1, y2) and the pixel-centre coordinates there."""
    rows, cols = _span(y1, y2, image.shape[0]), _span(x1, x2, image.shape[1])
    ys = np.arange(rows.start, rows.stop)[:, None] + 0.5
    xs = np.arange(cols.start, cols.stop)[None, :] + 0.5
    return rows, cols, ys, xs


def _fill_capsule(image: np.ndarray, x0: float, y0: float, x1: float, y1: float, r: float, colour: np.ndarray) -> None:
    """A thick segment: pixels within ``r`` of the segment from (x0, y0) to (x1, y1)."""
    rows, cols, ys, xs = _local_grid(image, min(x0, x1) - r, min(y0, y1) - r, max(x0, x1) + r, max(y0, y1) + r)
    dx, dy = x1 - x0, y1 - y0
    along = np.clip(((xs - x0) * dx + (ys - y0) * dy) / max(dx * dx + dy * dy, 1e-9), 0.0, 1.0)
    inside = (xs - x0 - along * dx) ** 2 + (ys - y0 - along * dy) ** 2 <= r * r
    image[rows, cols][inside] = colour


def _draw_head(image: np.ndarray, cx: float, cy: float, r: float, skin: np.ndarray, hair: np.ndarray, facing: float) -> None:
    """A round head: hair on top (and on the back of the head in profile), then the eyes: two
    when facing the camera, one on the side it looks at in profile."""
    rows, cols, ys, xs = _local_grid(image, cx - r, cy - r, cx + r, cy + r)
    u, w = (xs - cx) / r, (ys - cy) / r  # unit-disc coordinates
    disc = u * u + w * w <= 1.0
    hair_mask = disc & ((w < -0.45) | (u * facing < -0.25))
    patch = image[rows, cols]  # a view: writing to it draws on the frame
    patch[disc] = skin
    patch[hair_mask] = hair
    eye = max(r * 0.22, 0.6)
    eyes = (-0.4, 0.4) if facing == 0 else (0.45 * facing,)
    for e in eyes:
        _fill_rect(image, cx + e * r - eye, cy - 0.1 * r - eye, cx + e * r + eye, cy - 0.1 * r + eye, EYE)
