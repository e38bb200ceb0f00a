"""Bounding-box geometry per person-frame: where, how big, how it moves (CPU, vectorised).

All coordinates are normalised by the frame size, so the features mean the same at any resolution.
Absent slots are zero in every feature. Velocity and acceleration are finite differences of the
box centre between consecutive frames in which the person is present (zero otherwise).

The ``svip_box`` family is here too: the 14 box features of the user's svip ranker, computed as
svip computes them, with their own version and spec (so their own fingerprint).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..data.clip import Clip
from ..store.feature_store import ArraySpec

FEATURE_VERSION = 1
GEOMETRY_FEATURES = (
    "x1", "y1", "x2", "y2",  # normalised box
    "cx", "cy",  # centre
    "w", "h",  # size
    "area",  # w * h, share of the frame
    "log_aspect",  # log(width / height) in pixels
    "center_dist",  # distance of the centre to the frame centre
    "group_dist",  # distance of the centre to the centroid of the people present
    "size_rank",  # 1 = largest box of the frame, 0 = smallest
    "vx", "vy",  # centre velocity per frame
    "ax", "ay",  # centre acceleration per frame
    "visibility",  # share of the raw box inside the frame
)  # fmt: skip


def geometry_features(bboxes: np.ndarray, mask: np.ndarray, height: int, width: int, visible: np.ndarray) -> np.ndarray:
    """Geometry of one clip.

    Shapes: bboxes (T, N, 4) pixels x1 y1 x2 y2, mask (T, N) bool, visible (T, N) ->
    (T, N, len(GEOMETRY_FEATURES)) float32.
    """
    m = mask.astype(np.float32)[..., None]  # (T, N, 1)
    box = bboxes.astype(np.float32) / np.array([width, height, width, height], np.float32)
    centre = (box[..., :2] + box[..., 2:]) / 2  # (T, N, 2)
    size = box[..., 2:] - box[..., :2]  # (T, N, 2)
    area = size[..., 0] * size[..., 1]  # (T, N)
    aspect_px = np.maximum(size[..., 0] * width, 1e-6) / np.maximum(size[..., 1] * height, 1e-6)
    center_dist = np.linalg.norm(centre - 0.5, axis=-1)

    count = m.sum(1, keepdims=True)  # (T, 1, 1)
    centroid = (centre * m).sum(1, keepdims=True) / np.maximum(count, 1)  # (T, 1, 2)
    group_dist = np.linalg.norm(centre - centroid, axis=-1)

    # rank among the people present in the frame: absent slots sort below everyone
    keyed = np.where(mask, area, -1.0)
    order = keyed.argsort(1).argsort(1).astype(np.float32)  # (T, N), 0 = smallest slot
    absent = (~mask).sum(1, keepdims=True)
    present = np.maximum(count[..., 0] - 1, 1)
    size_rank = np.where(count[..., 0] > 1, (order - absent) / present, 1.0)

    velocity = _difference(centre, mask)
    moving = mask & np.roll(mask, 1, axis=0)
    moving[0] = False
    acceleration = _difference(velocity, moving)

    features = np.concatenate(
        [
            box,
            centre,
            size,
            area[..., None],
            np.log(aspect_px)[..., None],
            center_dist[..., None],
            group_dist[..., None],
            size_rank[..., None],
            velocity,
            acceleration,
            visible[..., None],
        ],
        axis=-1,
    )
    return (features * m).astype(np.float32)


def _difference(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """values[t] - values[t-1] where both frames are valid, else 0.  (T, N, D) -> (T, N, D)."""
    out = np.zeros_like(values)
    both = mask[1:] & mask[:-1]
    out[1:] = np.where(both[..., None], values[1:] - values[:-1], 0.0)
    return out


class GeometryExtractor:
    """The ``geometry`` family: no model, CPU only."""

    name = "geometry"

    def spec(self) -> dict:
        return {"feature_version": FEATURE_VERSION, "features": list(GEOMETRY_FEATURES)}

    def arrays(self) -> list[ArraySpec]:
        return [ArraySpec("geometry", (len(GEOMETRY_FEATURES),), "float32", ("geometry_feature",))]

    def extract(self, clips: Sequence[Clip]) -> list[dict[str, np.ndarray]]:
        return [
            {"geometry": geometry_features(c.bboxes, c.person_mask, c.height, c.width, c.visible_fraction)}
            for c in clips
        ]


SVIP_BOX_VERSION = 1
SVIP_BOX_FEATURES = (
    "x1", "y1", "x2", "y2",  # box / frame size, clipped to [0, 1], rounded to float16
    "cx", "cy",  # centre
    "w", "h",  # size
    "area",  # w * h
    "dcx", "dcy",  # centre minus the previous frame's centre; an absent frame's box is all zeros
    "disp",  # sqrt(dcx^2 + dcy^2)
    "speed",  # disp again: svip feeds both
    "accel",  # |speed - previous frame's speed|
)  # fmt: skip


def svip_box_features(bboxes: np.ndarray, mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """The 14 box features of the user's svip ranker (its BBoxGeomEncoder and data loader,
    github.com/yml2002/svip at 26674fd), computed as svip computes them, quirks included: boxes are
    rounded to float16 (svip's loader stores them so), and the motion terms take an absent frame's
    box as all zeros, so a person who enters or comes back moves from the corner (0, 0).

    Shapes: bboxes (T, N, 4) pixels x1 y1 x2 y2, mask (T, N) bool -> (T, N, 14) float32, zeros at
    absent person-frames.
    """
    scale = np.array([width, height, width, height], np.float32)
    box = np.clip(bboxes.astype(np.float32) / scale, 0.0, 1.0).astype(np.float16).astype(np.float32)
    box = np.where(mask[..., None], box, np.float32(0.0))  # (T, N, 4)
    x1, y1, x2, y2 = np.moveaxis(box, -1, 0)  # (T, N) each
    w, h = np.maximum(x2 - x1, 0), np.maximum(y2 - y1, 0)
    cx, cy = (x1 + x2) * np.float32(0.5), (y1 + y2) * np.float32(0.5)
    dcx, dcy = np.zeros_like(cx), np.zeros_like(cy)
    dcx[1:], dcy[1:] = cx[1:] - cx[:-1], cy[1:] - cy[:-1]
    disp = np.sqrt(dcx * dcx + dcy * dcy)
    accel = np.zeros_like(disp)
    accel[1:] = np.abs(disp[1:] - disp[:-1])
    features = np.stack([x1, y1, x2, y2, cx, cy, w, h, w * h, dcx, dcy, disp, disp, accel], axis=-1)  # (T, N, 14)
    return np.where(mask[..., None], features, np.float32(0.0)).astype(np.float32)


class SvipBoxExtractor:
    """The ``svip_box`` family: svip's own 14 box features (no model, CPU only)."""

    name = "svip_box"

    def spec(self) -> dict:
        return {"feature_version": SVIP_BOX_VERSION, "features": list(SVIP_BOX_FEATURES)}

    def arrays(self) -> list[ArraySpec]:
        return [ArraySpec("svip_box", (len(SVIP_BOX_FEATURES),), "float32", ("svip_box_feature",))]

    def extract(self, clips: Sequence[Clip]) -> list[dict[str, np.ndarray]]:
        return [{"svip_box": svip_box_features(c.bboxes, c.person_mask, c.height, c.width)} for c in clips]
