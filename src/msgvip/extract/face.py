"""The ``face`` family: where the head is, which way it turns, and what it looks like.

From the pose keypoints of each valid person-frame (computed here when ``pose`` is not also
extracted; shared with it when it is, see :meth:`.PoseExtractor.keypoints`):

- **head window**: if at least two of nose, eyes and ears score >= ``HEAD_MIN_SCORE``, a square
  centred on the visible ones with side ``HEAD_SCALE`` x their spread (the larger of the x and y
  ranges), at least ``HEAD_MIN_FRACTION`` of the box's larger side; otherwise the top
  ``FALLBACK_TOP`` of the box (full width). The window is cut to ``crop_size`` and embedded by
  the appearance backbone (same model, CLS token).
- **yaw proxy**: the nose's horizontal offset from the midpoint of the ears (else the eyes),
  divided by half their distance, in [-1, 1] (positive: nose towards the image's right); with the
  nose and a single ear visible (a profile), +-1 by the side of the nose; 0 when unknown.
- **pitch proxy**: the nose's vertical offset from the same midpoint over the pair's distance,
  in [-1, 1] (positive: nose lower in the image); 0 when unknown.
- **visibility**: the share of the five head keypoints scoring >= ``HEAD_MIN_SCORE``.

Output per clip: ``face`` (T, N, D + 3) float16, D = the backbone's hidden size: the head
embedding, then yaw, pitch, visibility; zeros in absent slots.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..config import ExtractConfig
from ..data.clip import Clip
from ..store.feature_store import ArraySpec
from .appearance import SAMPLING, Backbone
from .crops import CropPlan, FrameBank, map_crops
from .pose import COCO_KEYPOINTS, PoseExtractor

FEATURE_VERSION = 1
HEAD_KEYPOINTS = 5  # nose, left/right eye, left/right ear: the first five COCO keypoints
HEAD_MIN_SCORE = 0.3
HEAD_SCALE = 2.0
HEAD_MIN_FRACTION = 0.1
FALLBACK_TOP = 0.25
HEAD_FEATURES = ("yaw", "pitch", "visibility")


def head_windows(keypoints: torch.Tensor, boxes: torch.Tensor, min_score: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Head crop windows and head-pose proxies (see the module docstring), batched.

    ``min_score`` defaults to ``HEAD_MIN_SCORE``.

    Shapes: keypoints (P, 17 or 5, 3) frame pixels x y score, boxes (P, 4) -> windows (P, 4)
    pixels, head (P, 3) yaw, pitch, visibility.
    """
    head = keypoints[:, :HEAD_KEYPOINTS].float()  # (P, 5, 3)
    min_score = HEAD_MIN_SCORE if min_score is None else min_score
    xy, visible = head[..., :2], head[..., 2] >= min_score  # (P, 5, 2), (P, 5)
    count = visible.sum(1)  # (P,)
    centre = (xy * visible[..., None]).sum(1) / count.clamp(min=1)[:, None]  # (P, 2)
    high = torch.where(visible[..., None], xy, -torch.inf).amax(1)  # (P, 2)
    low = torch.where(visible[..., None], xy, torch.inf).amin(1)
    spread = torch.where(count >= 2, (high - low).amax(1), 0.0)  # (P,)
    bx1, by1, bx2, by2 = boxes.float().unbind(-1)
    half = torch.maximum(HEAD_SCALE * spread, HEAD_MIN_FRACTION * torch.maximum(bx2 - bx1, by2 - by1)) / 2
    from_keypoints = torch.stack([centre[:, 0] - half, centre[:, 1] - half, centre[:, 0] + half, centre[:, 1] + half], -1)
    fallback = torch.stack([bx1, by1, bx2, by1 + FALLBACK_TOP * (by2 - by1)], -1)
    windows = torch.where((count >= 2)[:, None], from_keypoints, fallback)

    nose, ears, eyes = visible[:, 0], visible[:, 3] & visible[:, 4], visible[:, 1] & visible[:, 2]
    left = torch.where(ears[:, None], xy[:, 3], xy[:, 1])  # (P, 2): ears if both visible, else eyes
    right = torch.where(ears[:, None], xy[:, 4], xy[:, 2])
    middle, span = (left + right) / 2, (right - left).norm(dim=-1) + 1e-3
    paired = nose & (ears | eyes)
    one_ear = nose & ~paired & (visible[:, 3] ^ visible[:, 4])
    ear_x = torch.where(visible[:, 3], xy[:, 3, 0], xy[:, 4, 0])
    yaw = torch.where(paired, ((xy[:, 0, 0] - middle[:, 0]) / (span / 2)).clamp(-1, 1), torch.where(one_ear, torch.sign(xy[:, 0, 0] - ear_x), 0.0))
    pitch = torch.where(paired, ((xy[:, 0, 1] - middle[:, 1]) / span).clamp(-1, 1), 0.0)
    return windows, torch.stack([yaw, pitch, count / HEAD_KEYPOINTS], -1)


class FaceExtractor:
    """The ``face`` family: head-crop CLS embedding + yaw, pitch, visibility."""

    name = "face"

    def __init__(self, config: ExtractConfig):
        self.config = config
        self.pose = PoseExtractor(config)
        self.backbone = Backbone(config.backbone, config.local_files_only, config.device, config.dtype, config.crop_size)

    def spec(self) -> dict:
        return {
            "feature_version": FEATURE_VERSION,
            **self.backbone.spec(),
            "pose": self.pose.spec(),
            "head": {
                "keypoints": list(COCO_KEYPOINTS[:HEAD_KEYPOINTS]), "min_score": HEAD_MIN_SCORE, "scale": HEAD_SCALE,
                "min_fraction": HEAD_MIN_FRACTION, "fallback_top": FALLBACK_TOP,
            },  # fmt: skip
            "crop": {"size": [self.config.crop_size, self.config.crop_size], "sampling": SAMPLING},
            "pooling": "cls",
            "features": ["embedding", *HEAD_FEATURES],
            "output_dtype": "float16",
        }

    def arrays(self) -> list[ArraySpec]:
        return [ArraySpec("face", (self.backbone.hidden_size + len(HEAD_FEATURES),), "float16", ("face_feature",))]

    def extract(self, clips: Sequence[Clip]) -> list[dict[str, np.ndarray]]:
        plan, values = self.features(clips)
        return [{"face": f} for f in plan.scatter(values.half().cpu().numpy(), clips)]

    def features(self, clips: Sequence[Clip]) -> tuple[CropPlan, torch.Tensor]:
        """The group's crop plan and (P, D + 3) float32 face features, on the device."""
        plan, keypoints = self.pose.keypoints(clips)
        device = self.backbone.device
        if not len(plan):
            return plan, torch.zeros((0, self.backbone.hidden_size + len(HEAD_FEATURES)), device=device)
        self.backbone.check_crop_size()
        with torch.inference_mode():
            windows, head = head_windows(keypoints.to(device), torch.from_numpy(plan.boxes).to(device))
            bank = FrameBank(clips, plan, device)
            size = (self.config.crop_size, self.config.crop_size)
            embedded = map_crops(bank, windows, size, self.config.batch_size, lambda crops: self.backbone.embed(crops, "cls"))
            return plan, torch.cat([embedded, head], -1)
