"""`msgvip show`: a clip as the model ranks it, drawn over its own frames.

Each person's box is coloured by the model's rank of them (#1 brightest, evenly spaced down the
colour bar in the margin: one very low score cannot paint the others one colour), their rank is
written by the box (tags moved apart in crowded frames), the labeled target is ringed in red and the model's
top-1 has a star beside its rank; the title gives the clip id, its scene and whether the model was right.
``.png`` writes a contact sheet of K evenly spaced frames, ``.gif`` and ``.mp4`` the whole clip.
``worst:N`` / ``best:N`` draw N clips into one file, one below (or after) the other.

Scores come from the run's ``predictions.csv`` where it holds the clip (the same content), else
from scoring the clip's split with the run's best model. Frames come from the clip file the
dataset snapshot recorded; when that file is gone, unreadable or changed since, the boxes are
drawn on a blank canvas from the stored geometry, and stderr says so.
"""

from __future__ import annotations

import csv
import functools
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..config import ConfigError
from ..files import file_name_of
from ..data.clip import ClipError, display_path, read_clip
from ..ranker.metrics import rank_of_target
from ..ranker.trainer import run_config, scored_split
from ..store.feature_store import FeatureStore
from ..store.records import SnapshotEntry

SHEET_SUFFIX = ".png"
VIDEO_SUFFIXES = (".gif", ".mp4")
TARGET_COLOUR = (228, 26, 28)  # the labeled target's ring: a red that the score colour map never takes
RING_WIDTH = 3  # pixels of the target's ring
COLOUR_MAP = "viridis"  # perceptually uniform and readable in greyscale print
SHEET_PANEL_WIDTH = 360  # pixels per frame on a contact sheet
VIDEO_PANEL_WIDTH = 640  # pixels per frame of a .gif / .mp4
SHEET_COLUMNS = 4  # at most, per row of a contact sheet
DEFAULT_SPLIT = "test"  # where worst:N / best:N look without --split, as `msgvip evaluate` does
BLANK_WIDTH = 1000  # nominal frame width of a blank canvas; its height follows the stored aspect ratio

_GAP = 14  # between panels: room for a ring reaching past the frame's edge
_MARGIN = 250  # right margin: colour bar, legend, ranking
_BOX_WIDTH = 3
_RING_OFFSET = 6  # outer edge of the ring, outside the box
_STAR_RADIUS = 10  # the top-1's star
_RANKING_ROWS = 10  # persons listed in the margin
_MAP_FLOOR = 0.12  # the lowest score takes this point of the colour map: its darkest purple is lost on dark frames
_INK, _MUTED, _RIGHT = (25, 25, 25), (110, 110, 110), (26, 140, 60)
_BLANK = (222, 222, 222)
_SELECTOR = re.compile(r"(worst|best):(\d+)")


# ---------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class ClipScores:
    """The model's ranking of one clip's persons."""

    entry: SnapshotEntry
    scores: dict[int, float]  # valid slot -> score
    ranks: dict[int, int]  # valid slot -> rank, 1 = most important
    origin: str  # "predictions.csv" or "model" (scored now with the run's best model)

    @property
    def target_rank(self) -> int:
        """The target's rank as the metrics count it (ties pessimistic); 0 when unlabeled."""
        if self.entry.target < 0:
            return 0
        slots = sorted(self.scores)
        scores = np.array([[self.scores[s] for s in slots]])  # (1, persons)
        return int(rank_of_target(scores, [slots.index(self.entry.target)], np.ones_like(scores, bool))[0])

    @property
    def top1(self) -> int:
        return min(self.ranks, key=self.ranks.__getitem__)

    @property
    def margin(self) -> float:
        """Best other score minus the target's: how far the model was from (or past) ranking it first."""
        others = [v for s, v in self.scores.items() if s != self.entry.target]
        return (max(others) - self.scores[self.entry.target]) if others and self.entry.target >= 0 else 0.0


@dataclass(frozen=True)
class DrawnBox:
    """A box as drawn, in pixels of the output image (of each frame, for .gif / .mp4)."""

    frame: int  # frame index in the clip
    slot: int
    rank: int
    label: str  # the text written by the box: "#<rank>"
    colour: tuple[int, int, int]  # the score's colour
    box: tuple[int, int, int, int]  # x1, y1, x2, y2, inclusive
    ring: tuple[int, int, int, int] | None  # outer edge of the target's ring (RING_WIDTH wide, inward); None if not the target


@dataclass(frozen=True)
class RenderedClip:
    clip_id: str
    content_hash: str
    split: str
    scene: str
    target: int  # slot, -1 = unlabeled
    target_rank: int  # 0 = unlabeled
    top1: int  # slot
    scores: dict[int, float]
    ranks: dict[int, int]
    origin: str  # where the scores came from: "predictions.csv" or "model"
    frames: tuple[int, ...]  # frame indices drawn
    raw_frames: bool  # False: drawn on a blank canvas from the stored geometry
    boxes: tuple[DrawnBox, ...]
    panels: tuple[tuple[int, int, int, int], ...]  # where each frame of ``frames`` lies in the output, x1, y1, x2, y2 inclusive

    @property
    def correct(self) -> bool | None:
        return None if self.target < 0 else self.target_rank == 1


@dataclass(frozen=True)
class Rendered:
    path: Path
    clips: tuple[RenderedClip, ...]


@dataclass
class _Drawing:
    image: Image.Image
    boxes: list[DrawnBox]
    panels: list[tuple[int, int, int, int]]


@dataclass(frozen=True)
class ClipPixels:
    """What to draw on: frames, or a blank canvas of the frame's aspect ratio."""

    frames: np.ndarray | None  # (T, H, W, 3) uint8; None = blank canvas
    boxes: np.ndarray  # (T, N, 4) x1 y1 x2 y2, normalised by the frame size
    mask: np.ndarray  # (T, N) bool
    size: tuple[int, int]  # (H, W) of the frames, or of the blank canvas


# ---------------------------------------------------------------------------------------- entry
def show_clip(
    run_dir: Path, clip: str, out: Path, split: str | None = None, frames: int = 8, store: FeatureStore | None = None, fps: float = 8.0
) -> Rendered:
    """Draw ``clip`` of ``run_dir``'s dataset as the run's best model ranks it into ``out``.

    Args:
        run_dir: a finished run directory.
        clip: a clip id (the dataset snapshot's key, e.g. ``test/clip_00012``), a prefix of a
            content hash (at least 4 hex digits), or ``worst:N`` / ``best:N``: the N labeled clips
            of the split where the target ranked lowest / highest (ties: by score margin).
        out: ``.png`` (contact sheet of ``frames`` evenly spaced frames), ``.gif`` or ``.mp4``
            (every frame, at ``fps``).
        split: only clips of this split (default: any split for an id or hash; ``test`` for
            ``worst:N`` / ``best:N``).
        frames: frames on a contact sheet (default 8).
        store: the run's store (default: found as ``msgvip evaluate`` finds it).

    Returns:
        The output path and, per clip drawn, the ranks, scores and box positions drawn.
    """
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (SHEET_SUFFIX, *VIDEO_SUFFIXES):
        raise ConfigError(f"{out}: unknown output type {out.suffix!r}; use .png (contact sheet), .gif or .mp4 (the whole clip)")
    if frames < 1:
        raise ConfigError(f"--frames must be at least 1, got {frames}")
    if fps <= 0:
        raise ConfigError(f"--fps must be positive, got {fps}")
    if store is None:
        from ..pipelines.train import store_of_run

        store = store_of_run(run_dir, None)
    views = select_clips(run_dir, store, clip, split)
    return render_clips(views, store, out, frames, fps)


def default_out(run_dir: Path, clip: str) -> Path:
    """Where `msgvip show` writes without --out: ``RUN/show/<clip as a file name>.png``."""
    return Path(run_dir) / "show" / f"{file_name_of(clip)}{SHEET_SUFFIX}"


def select_clips(run_dir: Path, store: FeatureStore, clip: str, split: str | None) -> list[ClipScores]:
    """The clips ``clip`` names (see :func:`show_clip`), with the model's scores."""
    dataset = run_config(run_dir).get("dataset")
    snapshot = store.resolve_dataset(dataset)
    selector = _SELECTOR.fullmatch(clip)
    if selector:
        count = int(selector.group(2))
        if count < 1:
            raise ConfigError(f"{clip}: N of {selector.group(1)}:N must be at least 1")
        split = split or DEFAULT_SPLIT
        entries = [e for e in snapshot.entries if e.split == split and e.target >= 0]
        if not entries:
            raise ConfigError(f"{run_dir}: dataset {snapshot.name!r} has no labeled clips in split {split!r}; has {snapshot.splits()}")
        ordered = worst_first(clip_scores(run_dir, store, entries, dataset))
        return (ordered if selector.group(1) == "worst" else ordered[::-1])[:count]
    entries = [e for e in snapshot.entries if split is None or e.split == split]
    chosen = [e for e in entries if e.key == clip]
    if not chosen and re.fullmatch(r"[0-9a-fA-F]{4,}", clip):
        chosen = [e for e in entries if e.content_hash.startswith(clip.lower())]
        if len(chosen) > 1:
            raise ConfigError(f"{clip}: content-hash prefix of {len(chosen)} clips ({', '.join(e.key for e in chosen[:4])}); give more digits or the clip id")
    if not chosen:
        where = f"split {split!r} of dataset {snapshot.name!r}" if split else f"dataset {snapshot.name!r}"
        example = entries[0].key if entries else "SPLIT/NAME"
        raise ConfigError(f"{clip}: no such clip in {where}; give a clip id such as {example!r}, a content-hash prefix (4+ hex digits), worst:N or best:N")
    return clip_scores(run_dir, store, chosen, dataset)


# ---------------------------------------------------------------------------------------- scores
def worst_first(views: Sequence[ClipScores]) -> list[ClipScores]:
    """Labeled clips from the lowest-ranked target to the highest; ties by how far the target's
    score fell short of the best other score, then by clip id."""
    return sorted((v for v in views if v.entry.target >= 0), key=lambda v: (-v.target_rank, -v.margin, v.entry.key))


def clip_scores(run_dir: Path, store: FeatureStore, entries: Sequence[SnapshotEntry], dataset: str | None) -> list[ClipScores]:
    """Scores of ``entries`` from predictions.csv where it holds them, else from the run's model."""
    predicted = read_predictions(Path(run_dir) / "predictions.csv")
    found = {}
    for entry in entries:
        rows = predicted.get((entry.key, entry.content_hash))
        if rows:
            found[entry.key] = ClipScores(entry, {s: v for s, (v, _) in rows.items()}, {s: r for s, (_, r) in rows.items()}, "predictions.csv")
    for split in sorted({e.split for e in entries if e.key not in found}):
        scored = scored_split(run_dir, store, split, None, "cpu", dataset)
        found.update((v.entry.key, v) for v in scores_from_model(scored.data.entries, scored.scores, scored.data.valid_slots().numpy()))
    return [found[e.key] for e in entries]


def scores_from_model(entries: Sequence[SnapshotEntry], scores: np.ndarray, valid: np.ndarray) -> list[ClipScores]:
    """ClipScores of scored clips: ``scores`` and ``valid`` (C, N), ranked as predictions.csv ranks them."""
    order = np.argsort(-np.where(valid, scores, -np.inf), axis=1, kind="stable")  # (C, N), best first
    views = []
    for c, entry in enumerate(entries):
        slots = [int(s) for s in order[c] if valid[c, s]]
        views.append(ClipScores(entry, {s: float(scores[c, s]) for s in slots}, {s: r for r, s in enumerate(slots, start=1)}, "model"))
    return views


def read_predictions(path: Path) -> dict[tuple[str, str], dict[int, tuple[float, int]]]:
    """``(clip_id, content_hash) -> {slot: (score, rank)}`` from a predictions CSV; {} when there is none."""
    needed = ("clip_id", "content_hash", "slot", "score", "rank")
    out: dict[tuple[str, str], dict[int, tuple[float, int]]] = {}
    try:
        # surrogateescape: the trainer writes clip keys that are not UTF-8 back as their own bytes
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
            reader = csv.DictReader(f)
            missing = [c for c in needed if c not in (reader.fieldnames or [])]
            if missing:
                raise ConfigError(f"{path}: lacks columns {missing}; not a predictions file msgvip wrote")
            for number, row in enumerate(reader, start=2):
                try:
                    out.setdefault((row["clip_id"], row["content_hash"]), {})[int(row["slot"])] = (float(row["score"]), int(row["rank"]))
                except (TypeError, ValueError):
                    raise ConfigError(f"{path}: row {number}: slot, score or rank is not a number ({row}); the file is damaged") from None
    except FileNotFoundError:
        return {}
    return out


# ---------------------------------------------------------------------------------------- pixels
def load_pixels(entry: SnapshotEntry, store: FeatureStore) -> tuple[ClipPixels, str]:
    """(pixels, note): the clip's frames and boxes from its file, or a blank canvas and the stored
    geometry, with a note saying why, when the file is gone, unreadable or no longer the same clip."""
    try:
        clip = read_clip(entry.source, entry.key, entry.target)
    except ClipError as err:
        problem = f"{err.path_str}: {err.message}" if err.field == "<file>" else f"{err}"
    else:
        if clip.content_hash == entry.content_hash:
            scale = np.array([clip.width, clip.height, clip.width, clip.height], np.float32)
            return ClipPixels(clip.frames, clip.bboxes / scale, clip.person_mask, (clip.height, clip.width)), ""
        problem = f"{display_path(entry.source)}: the file changed since the dataset snapshot (content {clip.content_hash[:12]}, was {entry.content_hash[:12]})"
    specs = store.config.get("features", {})
    family = next((f for f in store.families if {"x1", "y1", "x2", "y2"} <= set(specs.get(f, {}).get("features", []))), None)
    if family is None:
        raise ConfigError(f"{problem}; store {store.fingerprint[:12]} holds no box coordinates (geometry) to draw {entry.key} from: restore the file")
    columns = specs[family]["features"]
    stored = store.read_clip(entry.content_hash, [family])
    features, mask = stored[family], stored["person_mask"]  # (T, N, F), (T, N)
    boxes = features[..., [columns.index(c) for c in ("x1", "y1", "x2", "y2")]]  # (T, N, 4)
    aspect = 16 / 9  # width / height when the features do not tell
    if {"w", "h", "log_aspect"} <= set(columns) and mask.any():
        # log_aspect is the box's log(width / height) in pixels; w and h are normalised by the
        # frame, so the frame's own width / height is exp(log_aspect) * h / w
        w, h, log_aspect = (features[..., columns.index(c)][mask] for c in ("w", "h", "log_aspect"))
        aspect = float(np.median(np.exp(log_aspect) * h / np.maximum(w, 1e-6)))
    size = (max(1, round(BLANK_WIDTH / aspect)), BLANK_WIDTH)
    return ClipPixels(None, boxes, mask, size), f"{problem}; drawing {entry.key}'s boxes on a blank canvas from the stored {family} features"


# ---------------------------------------------------------------------------------------- drawing
def render_clips(views: Sequence[ClipScores], store: FeatureStore, out: Path, frames: int = 8, fps: float = 8.0) -> Rendered:
    """Draw ``views`` into ``out`` (by its extension, see :func:`show_clip`); notes about missing
    frames go to stderr."""
    out = Path(out)
    video = out.suffix.lower() in VIDEO_SUFFIXES
    drawings, records = [], []
    for view in views:
        pixels, note = load_pixels(view.entry, store)
        if note:
            print(f"msgvip show: {note}", file=sys.stderr)
        drawn = _clip_video(view, pixels, note) if video else [_contact_sheet(view, pixels, note, frames)]
        drawings.append(drawn)
        shown = tuple(range(len(pixels.mask))) if video else _sheet_frames(pixels.mask, frames)
        records.append(
            RenderedClip(view.entry.key, view.entry.content_hash, view.entry.split, view.entry.scene, view.entry.target, view.target_rank,
                         view.top1, view.scores, view.ranks, view.origin, shown, pixels.frames is not None,
                         tuple(box for d in drawn for box in d.boxes), tuple(panel for d in drawn for panel in d.panels))  # fmt: skip
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    if video:
        _write_video(out, _pad_all([d.image for drawn in drawings for d in drawn]), fps)
    else:
        records = _stack_sheets(out, [drawn[0].image for drawn in drawings], records)
    return Rendered(out, tuple(records))


def _sheet_frames(mask: np.ndarray, count: int) -> tuple[int, ...]:
    """``count`` evenly spaced frames among those with someone in them (a dropped, empty frame
    would waste a panel)."""
    candidates = np.flatnonzero(mask.any(1))  # mask (T, N); a stored clip has someone in some frame
    picks = np.linspace(0, len(candidates) - 1, min(count, len(candidates))).round().astype(int)
    return tuple(int(candidates[i]) for i in sorted(set(picks.tolist())))


@functools.cache
def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    import matplotlib

    # DejaVu Sans ships with matplotlib, so the text looks the same on every machine
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), size)


def _colour_of(view: ClipScores):
    """rank -> RGB, the ranks of the clip evenly spaced along the map (#1 at its bright end), and
    the number of ranks. A linear map of the scores painted the top three (0.05, -0.92, -2.03)
    one yellow when one person scored -17."""
    import matplotlib

    cmap = matplotlib.colormaps[COLOUR_MAP]
    ranks = max(len(view.ranks), 1)

    def colour(rank: float) -> tuple[int, int, int]:
        position = 1.0 if ranks == 1 else _MAP_FLOOR + (1 - _MAP_FLOOR) * (ranks - rank) / (ranks - 1)
        return tuple(int(c) for c in cmap(position, bytes=True)[:3])

    return colour, ranks


def _text_on(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads on ``colour``."""
    return (0, 0, 0) if 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2] > 140 else (255, 255, 255)


def _grow(rect: tuple[int, int, int, int], by: int) -> tuple[int, int, int, int]:
    return rect[0] - by, rect[1] - by, rect[2] + by, rect[3] + by


def _star(draw: ImageDraw.ImageDraw, cx: float, cy: float, radius: float) -> None:
    points = [
        (cx + r * math.sin(math.pi * k / 5), cy - r * math.cos(math.pi * k / 5))
        for k, r in zip(range(10), [radius, radius * 0.45] * 5)
    ]  # fmt: skip
    draw.polygon(points, fill=(255, 255, 255), outline=(0, 0, 0), width=2)


def _panel(canvas: Image.Image, origin: tuple[int, int], width: int, view: ClipScores, pixels: ClipPixels, t: int, colour) -> list[DrawnBox]:
    """Draw frame ``t`` at ``origin``, ``width`` pixels wide, with its boxes; the boxes drawn."""
    h, w = pixels.size
    height = max(1, round(width * h / w))
    x0, y0 = origin
    if pixels.frames is None:
        canvas.paste(_BLANK, (x0, y0, x0 + width, y0 + height))
    else:
        canvas.paste(Image.fromarray(pixels.frames[t]).resize((width, height), Image.Resampling.LANCZOS), (x0, y0))
    draw = ImageDraw.Draw(canvas)
    present = [s for s in np.flatnonzero(pixels.mask[t]) if int(s) in view.scores]
    present.sort(key=lambda s: view.scores[int(s)])  # the highest score drawn last, on top
    drawn = []
    for slot in map(int, present):
        nx1, ny1, nx2, ny2 = pixels.boxes[t, slot]
        rect = (x0 + round(nx1 * width), y0 + round(ny1 * height), x0 + max(round(nx2 * width) - 1, round(nx1 * width)), y0 + max(round(ny2 * height) - 1, round(ny1 * height)))
        fill = colour(view.ranks[slot])
        draw.rectangle(_grow(rect, 1), outline=(0, 0, 0), width=1)  # a dark edge: the colour reads on light and dark frames
        draw.rectangle(rect, outline=fill, width=_BOX_WIDTH)
        ring = _grow(rect, _RING_OFFSET) if slot == view.entry.target else None
        drawn.append(DrawnBox(t, slot, view.ranks[slot], f"#{view.ranks[slot]}", fill, rect, ring))
    for box in drawn:
        if box.ring:
            draw.rounded_rectangle(box.ring, radius=4, outline=TARGET_COLOUR, width=RING_WIDTH)
    font = _font(13, bold=True)
    panel = (x0, y0, x0 + width - 1, y0 + height - 1)
    taken = []  # tags placed so far: later tags move aside, higher ranks placed first
    for box in sorted(drawn, key=lambda b: b.rank):
        left, top, right, bottom = draw.textbbox((0, 0), box.label, font=font)
        tag_w, tag_h = right - left + 8, bottom - top + 6
        star = box.slot == view.top1  # the top-1's star rides beside its tag, so the two never collide
        size = (tag_w + 2 * _STAR_RADIUS + 3, max(tag_h, 2 * _STAR_RADIUS + 1)) if star else (tag_w, tag_h)
        unit = _place_tag(box, size, panel, taken)
        taken.append(unit)
        tx, ty = unit[0], unit[1] + (size[1] - tag_h) // 2
        draw.rectangle((tx, ty, tx + tag_w - 1, ty + tag_h - 1), fill=box.colour, outline=(0, 0, 0))
        draw.text((tx + 4 - left, ty + 3 - top), box.label, fill=_text_on(box.colour), font=font)
        if star:
            _star(draw, unit[2] - _STAR_RADIUS, unit[1] + size[1] // 2, _STAR_RADIUS)
    return drawn


def _place_tag(box: DrawnBox, size: tuple[int, int], panel: tuple[int, int, int, int], taken: list) -> tuple[int, int, int, int]:
    """Where a box's rank tag goes: above its top-left corner, else above its top-right corner,
    inside its top-left or bottom-left corner, or below it; the first spot inside the panel
    that covers no tag placed before (else the first inside the panel)."""
    w, h = size
    x1, y1, x2, y2 = box.box
    top = (box.ring or box.box)[1] - 1  # above the ring, which the tag must not hide
    spots = [(x1, top - h + 1), (x2 - w + 1, top - h + 1), (x1 + _BOX_WIDTH, y1 + _BOX_WIDTH), (x1 + _BOX_WIDTH, y2 - _BOX_WIDTH - h + 1), (x1, y2 + 2)]
    inside = [(x, y, x + w - 1, y + h - 1) for x, y in spots if x >= panel[0] and y >= panel[1] and x + w - 1 <= panel[2] and y + h - 1 <= panel[3]]
    if not inside:  # a box too small or at a corner: clamp the first spot into the panel
        x, y = spots[0]
        x, y = min(max(x, panel[0]), panel[2] - w + 1), min(max(y, panel[1]), panel[3] - h + 1)
        return x, y, x + w - 1, y + h - 1
    free = [r for r in inside if not any(r[0] <= t[2] and t[0] <= r[2] and r[1] <= t[3] and t[1] <= r[3] for t in taken)]
    return (free or inside)[0]


def _header(view: ClipScores, note: str, frames_text: str) -> list[tuple[str, ImageFont.FreeTypeFont, tuple[int, int, int]]]:
    """Lines of a clip's title: (text, font, colour)."""
    entry = view.entry
    persons = len(view.scores)
    if entry.target < 0:
        verdict, tone = "unlabeled: no target to judge", _MUTED
    elif view.target_rank == 1:
        verdict, tone = f"\u2713 right: the target ranked 1 of {persons}", _RIGHT
    else:
        verdict, tone = f"\u2717 wrong: the target ranked {view.target_rank} of {persons}", TARGET_COLOUR
    source = "predictions.csv" if view.origin == "predictions.csv" else "the run's best model"
    scene = entry.scene or "\u2014"
    lines = [
        (f"{display_path(entry.key)}   \u00b7   scene {scene}   \u00b7   {persons} persons", _font(18, bold=True), _INK),
        (verdict, _font(15, bold=True), tone),
        (f"scores from {source}  \u00b7  content {entry.content_hash[:12]}  \u00b7  {frames_text}", _font(12), _MUTED),
    ]
    if note:
        lines.append(("no frames: " + note, _font(12), TARGET_COLOUR))
    return lines


def _margin(canvas: Image.Image, origin: tuple[int, int], view: ClipScores, colour, ranks: int) -> None:
    """Colour bar (by rank), legend and the ranking list with the scores, from ``origin`` down."""
    draw = ImageDraw.Draw(canvas)
    x, y = origin
    small, bold = _font(12), _font(12, bold=True)
    draw.text((x, y), "rank by the model", fill=_INK, font=bold)
    y += 22
    bar_h, bar_w = 150, 18
    for i in range(bar_h):  # top = rank 1
        draw.line((x, y + i, x + bar_w - 1, y + i), fill=colour(1 + (ranks - 1) * i / (bar_h - 1)))
    draw.rectangle((x - 1, y - 1, x + bar_w, y + bar_h), outline=_INK)
    for rank in sorted({1, (ranks + 1) // 2, ranks}):
        ty = y + round((rank - 1) / max(ranks - 1, 1) * (bar_h - 1))
        draw.line((x + bar_w, ty, x + bar_w + 4, ty), fill=_INK)
        draw.text((x + bar_w + 7, ty), f"#{rank}", fill=_INK, font=small, anchor="lm")
    y += bar_h + 18
    draw.rounded_rectangle((x, y, x + 18, y + 14), radius=3, outline=TARGET_COLOUR, width=RING_WIDTH)
    draw.text((x + 26, y + 7), "labeled target", fill=_INK, font=small, anchor="lm")
    y += 22
    _star(draw, x + 9, y + 8, 8)
    draw.text((x + 26, y + 8), "model's top-1", fill=_INK, font=small, anchor="lm")
    y += 22
    draw.text((x, y + 7), "#k", fill=_INK, font=bold, anchor="lm")
    draw.text((x + 26, y + 7), "rank by the model", fill=_INK, font=small, anchor="lm")
    y += 30
    draw.text((x, y), "ranking", fill=_INK, font=bold)
    y += 20
    ranked = sorted(view.ranks, key=view.ranks.__getitem__)
    shown = ranked[:_RANKING_ROWS]
    if view.entry.target in ranked[_RANKING_ROWS:]:  # the target is always listed, last when it ranks below the rows
        shown = shown[:-1] + [view.entry.target]
    for slot in shown:
        draw.rectangle((x, y + 2, x + 12, y + 14), fill=colour(view.ranks[slot]), outline=_INK)
        mark = "  target" if slot == view.entry.target else ""
        draw.text((x + 18, y), f"#{view.ranks[slot]}  slot {slot}  {view.scores[slot]:.3f}{mark}",
                  fill=TARGET_COLOUR if mark else _INK, font=bold if mark else small)  # fmt: skip
        y += 18
    if len(ranked) > len(shown):
        draw.text((x + 18, y), f"and {len(ranked) - len(shown)} more", fill=_MUTED, font=small)


def _margin_height(view: ClipScores) -> int:
    """Pixels :func:`_margin` draws, top to bottom."""
    rows = min(len(view.ranks), _RANKING_ROWS) + (len(view.ranks) > _RANKING_ROWS)
    return 22 + 150 + 18 + 22 + 22 + 30 + 20 + 18 * rows


def _layout_header(lines) -> int:
    return 12 + sum(font.size + 8 for _, font, _ in lines) + 6


def _draw_header(canvas: Image.Image, lines) -> None:
    draw = ImageDraw.Draw(canvas)
    y = 12
    for text, font, fill in lines:
        draw.text((_GAP, y), text, fill=fill, font=font)
        y += font.size + 8


def _contact_sheet(view: ClipScores, pixels: ClipPixels, note: str, count: int) -> _Drawing:
    """One image: title, a grid of evenly spaced frames, the margin."""
    length = len(pixels.mask)
    shown = _sheet_frames(pixels.mask, count)
    rows = math.ceil(len(shown) / SHEET_COLUMNS)
    columns = math.ceil(len(shown) / rows)
    h, w = pixels.size
    panel_h = max(1, round(SHEET_PANEL_WIDTH * h / w))
    caption_h = 20
    lines = _header(view, note, f"frames {', '.join(map(str, shown))} of {length}")
    top = _layout_header(lines)
    grid_w = columns * (SHEET_PANEL_WIDTH + _GAP) + _GAP
    grid_h = rows * (panel_h + caption_h + _GAP) + _GAP
    canvas = Image.new("RGB", (grid_w + _MARGIN, top + max(grid_h, _margin_height(view) + _GAP)), (255, 255, 255))
    _draw_header(canvas, lines)
    colour, ranks = _colour_of(view)
    drawing = _Drawing(canvas, [], [])
    draw = ImageDraw.Draw(canvas)
    for i, t in enumerate(shown):
        r, c = divmod(i, columns)
        x0 = _GAP + c * (SHEET_PANEL_WIDTH + _GAP)
        y0 = top + _GAP + r * (panel_h + caption_h + _GAP)
        drawing.boxes.extend(_panel(canvas, (x0, y0), SHEET_PANEL_WIDTH, view, pixels, t, colour))
        drawing.panels.append((x0, y0, x0 + SHEET_PANEL_WIDTH - 1, y0 + panel_h - 1))
        draw.text((x0 + SHEET_PANEL_WIDTH // 2, y0 + panel_h + 4), f"frame {t}", fill=_MUTED, font=_font(12), anchor="mt")
    _margin(canvas, (grid_w + 4, top + _GAP), view, colour, ranks)
    return drawing


def _clip_video(view: ClipScores, pixels: ClipPixels, note: str) -> list[_Drawing]:
    """One image per frame: title, the frame, the margin."""
    length = len(pixels.mask)
    h, w = pixels.size
    panel_h = max(1, round(VIDEO_PANEL_WIDTH * h / w))
    colour, ranks = _colour_of(view)
    out = []
    for t in range(length):
        lines = _header(view, note, f"frame {t} of {length}")
        top = _layout_header(lines)
        canvas = Image.new("RGB", (VIDEO_PANEL_WIDTH + 2 * _GAP + _MARGIN, top + max(panel_h + 2 * _GAP, _margin_height(view) + _GAP)), (255, 255, 255))
        _draw_header(canvas, lines)
        boxes = _panel(canvas, (_GAP, top + _GAP), VIDEO_PANEL_WIDTH, view, pixels, t, colour)
        _margin(canvas, (VIDEO_PANEL_WIDTH + 2 * _GAP + 4, top + _GAP), view, colour, ranks)
        out.append(_Drawing(canvas, boxes, [(_GAP, top + _GAP, _GAP + VIDEO_PANEL_WIDTH - 1, top + _GAP + panel_h - 1)]))
    return out


def _pad_all(frames: list[Image.Image]) -> list[np.ndarray]:
    """``frames`` on white canvases as large as the largest of them, rounded up to a multiple of
    16 (what H.264 encoders take without rescaling); each at the top left, where its boxes were drawn."""
    width = -(-max(f.width for f in frames) // 16) * 16
    height = -(-max(f.height for f in frames) // 16) * 16
    padded = []
    for frame in frames:
        canvas = Image.new("RGB", (width, height), (255, 255, 255))
        canvas.paste(frame, (0, 0))
        padded.append(np.asarray(canvas))
    return padded


def _write_video(out: Path, frames: list[np.ndarray], fps: float) -> None:
    import imageio.v3 as iio

    if out.suffix.lower() == ".gif":
        iio.imwrite(out, np.stack(frames), extension=".gif", duration=1000 / fps, loop=0)
    else:
        # the ffmpeg plugin (imageio-ffmpeg's bundled binary); yuv420p plays in every browser and player
        iio.imwrite(out, np.stack(frames), extension=".mp4", plugin="FFMPEG", fps=fps, codec="libx264", quality=8, pixelformat="yuv420p", macro_block_size=16)


def _stack_sheets(out: Path, sheets: list[Image.Image], records: list[RenderedClip]) -> list[RenderedClip]:
    """Write the clips' sheets one below the other; the records' boxes and panels moved to where they landed."""
    width = max(s.width for s in sheets)
    canvas = Image.new("RGB", (width, sum(s.height for s in sheets)), (255, 255, 255))
    moved, y = [], 0
    for sheet, record in zip(sheets, records):
        canvas.paste(sheet, (0, y))
        shift = lambda rect, dy=y: (rect[0], rect[1] + dy, rect[2], rect[3] + dy)  # noqa: E731
        boxes = tuple(replace(b, box=shift(b.box), ring=shift(b.ring) if b.ring else None) for b in record.boxes)
        moved.append(replace(record, boxes=boxes, panels=tuple(map(shift, record.panels))))
        y += sheet.height
        if y < canvas.height:
            ImageDraw.Draw(canvas).line((0, y - 1, width, y - 1), fill=(200, 200, 200), width=1)  # between clips
    canvas.save(out, optimize=True)
    return moved
