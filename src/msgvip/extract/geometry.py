"""Bounding-box geometry per person-frame: where, how big, how it moves (CPU, vectorised).

All coordinates are normalised by the frame size, so the features mean the same at any resolution.
Absent slots are zero in every feature. Velocity and acceleration are finite differences of the
box centre between consecutive frames in which the person is present (zero otherwise).
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
