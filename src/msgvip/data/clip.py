"""Reading and validating one MSG_VIP clip (DESIGN.md section 2).

A clip is one ``.npz`` holding ``frames`` (T, H, W, 3) uint8 (or (T, 3, H, W)), ``bboxes``
(T, N, 4) x1 y1 x2 y2 pixels, ``person_mask`` (T, N) bool, ``target_index`` (or ``target``) int
(-1 = unlabeled) and optionally ``frame_mask`` (T,), ``person_ids``, ``original_ids``, ``video_id``,
``scene_category``. Nothing is unpickled. Every problem raises :class:`ClipError` naming the
file and the field; two are repaired instead and counted: boxes reaching outside the frame are
clipped to it, and boxes with no area left after clipping are treated as absent.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..store.fingerprint import content_hash

HASHED_FIELDS = ("frames", "bboxes", "person_mask", "frame_mask")


class ClipError(Exception):
    """A clip that cannot be used; ``str()`` reads ``<file>: field '<field>': <problem>``."""

    def __init__(self, path: Path | str, field: str, message: str):
        self.path, self.field, self.message = str(path), field, message
        super().__init__(f"{path}: field '{field}': {message}")

    def __reduce__(self):  # decode workers send errors back to the main process
        return ClipError, (self.path, self.field, self.message)


@dataclass
class Clip:
    """A validated clip, boxes clipped to the frame and degenerate boxes masked out."""

    path: Path
    clip_id: str
    frames: np.ndarray  # (T, H, W, 3) uint8
    bboxes: np.ndarray  # (T, N, 4) float32 pixels, clipped; zeros where absent
    person_mask: np.ndarray  # (T, N) bool
    visible_fraction: np.ndarray  # (T, N) float32: share of the raw box inside the frame
    target: int  # -1 = unlabeled
    scene: str
    video_id: str
    content_hash: str
    repairs: dict[str, int] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return self.bboxes.shape[0]

    @property
    def num_slots(self) -> int:
        return self.bboxes.shape[1]

    @property
    def height(self) -> int:
        return self.frames.shape[1]

    @property
    def width(self) -> int:
        return self.frames.shape[2]


def read_clip(path: Path | str, clip_id: str | None = None, target: int | None = None) -> Clip:
    """Load, validate and repair one clip; ``target`` (from a manifest) overrides the file's."""
    path = Path(path)
    fields = _load_fields(path)
    arrays = {name: _field(fields, path, name) for name in fields.files if name in HASHED_FIELDS}
    for name in ("frames", "bboxes", "person_mask"):
        if name not in arrays:
            raise ClipError(path, name, f"missing (the file has {sorted(fields.files)})")
    digest = content_hash(arrays)

    frames = _frames(path, arrays["frames"])
    t = frames.shape[0]
    bboxes = arrays["bboxes"]
    if bboxes.dtype.kind not in "fiu":
        raise ClipError(path, "bboxes", f"dtype {bboxes.dtype}, expected float pixel coordinates")
    if bboxes.ndim != 3 or bboxes.shape[0] != t or bboxes.shape[2] != 4:
        raise ClipError(path, "bboxes", f"shape {bboxes.shape}, expected (T={t}, N, 4) to match frames {frames.shape}")
    n = bboxes.shape[1]
    if n == 0:
        raise ClipError(path, "bboxes", "has no person slots (N = 0)")
    mask = _mask(path, "person_mask", arrays["person_mask"], (t, n))
    if "frame_mask" in arrays:
        mask &= _mask(path, "frame_mask", arrays["frame_mask"], (t,))[:, None]

    bboxes = bboxes.astype(np.float32)
    bad = mask & ~np.isfinite(bboxes).all(-1)
    if bad.any():
        f, s = np.argwhere(bad)[0]
        raise ClipError(path, "bboxes", f"non-finite coordinates on a present person (frame {f}, slot {s}: {bboxes[f, s].tolist()})")
    bboxes[~mask] = 0.0
    bboxes, mask, visible, repairs = _clip_boxes(bboxes, mask, frames.shape[1], frames.shape[2])
    if not mask.any():
        raise ClipError(path, "person_mask", "no valid person in any frame (after dropping zero-area boxes)")

    label = _target(path, fields, n, mask) if target is None else _check_target(path, "target", target, n, mask)
    return Clip(
        path=path,
        clip_id=clip_id or path.stem,
        frames=frames,
        bboxes=bboxes,
        person_mask=mask,
        visible_fraction=visible,
        target=label,
        scene=_text(fields, path, "scene_category"),
        video_id=_text(fields, path, "video_id") or path.stem,
        content_hash=digest,
        repairs=repairs,
    )


def _load_fields(path: Path) -> np.lib.npyio.NpzFile:
    if not path.is_file():
        raise ClipError(path, "<file>", "not found")
    try:
        loaded = np.load(path, allow_pickle=False)
    except zipfile.BadZipFile as err:
        raise ClipError(path, "<file>", f"corrupt npz archive ({err})") from None
    except (ValueError, OSError, EOFError) as err:
        raise ClipError(path, "<file>", f"not an npz archive ({err})") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ClipError(path, "<file>", "holds a single .npy array, expected an .npz archive of named fields")
    return loaded


def _field(fields: np.lib.npyio.NpzFile, path: Path, name: str) -> np.ndarray:
    try:
        return fields[name]
    except ValueError as err:
        if "pickle" in str(err):
            raise ClipError(path, name, "is an object array that needs pickle; save it as a numeric or string array") from None
        raise ClipError(path, name, f"unreadable ({err})") from None
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as err:
        raise ClipError(path, name, f"corrupt data in the archive ({type(err).__name__}: {err})") from None


def _frames(path: Path, frames: np.ndarray) -> np.ndarray:
    if frames.dtype != np.uint8:
        raise ClipError(path, "frames", f"dtype {frames.dtype}, expected uint8 RGB")
    if frames.ndim != 4 or 3 not in (frames.shape[-1], frames.shape[1]):
        raise ClipError(path, "frames", f"shape {frames.shape}, expected (T, H, W, 3) or (T, 3, H, W)")
    if frames.shape[-1] != 3:
        frames = frames.transpose(0, 2, 3, 1)
    if 0 in frames.shape:
        raise ClipError(path, "frames", f"shape {frames.shape} has an empty dimension")
    return np.ascontiguousarray(frames)


def _mask(path: Path, name: str, mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if mask.shape != shape:
        raise ClipError(path, name, f"shape {mask.shape}, expected {shape} (T, N as in frames and bboxes)")
    if mask.dtype != np.bool_:
        if mask.dtype.kind not in "iu" or not np.isin(mask, (0, 1)).all():
            raise ClipError(path, name, f"dtype {mask.dtype} with values other than 0/1, expected bool")
        mask = mask.astype(bool)
    return mask.copy()


def _clip_boxes(bboxes: np.ndarray, mask: np.ndarray, height: int, width: int):
    """Clip boxes to the frame; boxes with no area left become absent. Both are counted."""
    limits = np.array([width, height, width, height], dtype=np.float32)
    raw_area = np.clip(bboxes[..., 2] - bboxes[..., 0], 0, None) * np.clip(bboxes[..., 3] - bboxes[..., 1], 0, None)
    clipped = np.clip(bboxes, 0, limits)
    area = (clipped[..., 2] - clipped[..., 0]).clip(0) * (clipped[..., 3] - clipped[..., 1]).clip(0)
    changed = mask & (clipped != bboxes).any(-1)
    degenerate = mask & (area <= 0)
    mask = mask & ~degenerate
    clipped[~mask] = 0.0
    visible = np.where(mask, area / np.maximum(raw_area, 1e-12), 0.0).astype(np.float32)
    repairs = {"clipped_boxes": int((changed & mask).sum()), "zero_area_boxes": int(degenerate.sum())}
    return clipped, mask, visible, repairs


def _target(path: Path, fields: np.lib.npyio.NpzFile, n: int, mask: np.ndarray) -> int:
    name = next((f for f in ("target_index", "target") if f in fields.files), None)
    if name is None:
        return -1
    value = _field(fields, path, name)
    if value.size != 1 or value.dtype.kind not in "iu":
        raise ClipError(path, name, f"expected one integer, got dtype {value.dtype} shape {value.shape}")
    return _check_target(path, name, int(value.reshape(())), n, mask)


def _check_target(path: Path, name: str, target: int, n: int, mask: np.ndarray) -> int:
    if target == -1:
        return -1
    if not 0 <= target < n:
        raise ClipError(path, name, f"slot {target} is outside [0, {n}) (use -1 for an unlabeled clip)")
    if not mask[:, target].any():
        raise ClipError(path, name, f"slot {target} holds no valid person in any frame")
    return target


def _text(fields: np.lib.npyio.NpzFile, path: Path, name: str) -> str:
    if name not in fields.files:
        return ""
    value = _field(fields, path, name)
    if value.size != 1 or value.dtype.kind not in "USiu":
        raise ClipError(path, name, f"expected one string or integer, got dtype {value.dtype} shape {value.shape}")
    item = value.reshape(()).item()
    return item.decode() if isinstance(item, bytes) else str(item)
