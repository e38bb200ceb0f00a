"""The ``pose`` family: 17 COCO keypoints per valid person-frame from a frozen ViTPose.

Top-down, as ViTPose was trained: each box is widened (or heightened) about its centre to the
model's input aspect ratio (192 / 256 for the usual 256 x 192 input), scaled by 1.25, cut to the
model's input size (its ``backbone_config.image_size``) and normalised with its own mean/std.
Heatmaps are decoded in batched tensor ops: the argmax, moved a quarter pixel towards the larger
neighbour (the classic sub-pixel refinement), mapped back to the crop with ViTPose's unbiased
(UDP) heatmap-to-input scale ``(W_in - 1) / (W_heatmap - 1)``, then to the frame.

Output per clip: ``pose`` (T, N, 17, 3) float32: x and y relative to the person's box (0 = left /
top edge, 1 = right / bottom edge; keypoints in the padded margin fall slightly outside [0, 1])
and the heatmap peak as a score; zeros in absent slots. Keypoint order is COCO's
(:data:`COCO_KEYPOINTS`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import numpy as np
import torch

from ..config import ExtractConfig
from ..data.clip import Clip
from ..store.feature_store import ArraySpec
from ..store.fingerprint import canonical_json
from .appearance import SAMPLING
from .backbones import ModelError, ResolvedModel, autocast, dtype_name, load_model, model_config, resolve_dtype, resolve_model
from .crops import CropPlan, FrameBank, aspect_windows, map_crops, normalize

FEATURE_VERSION = 1
BOX_PADDING = 1.25  # ViTPose's top-down box padding
COCO_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
DECODE = {"peak": "argmax", "refine": "quarter-offset", "heatmap_to_input": "udp"}

_LAST_RUN: dict[str, tuple] = {}  # pose-model key -> (clip arrays, plan, keypoints) of the last group


class PoseExtractor:
    """The ``pose`` family; :meth:`keypoints` also serves ``face``."""

    name = "pose"

    def __init__(self, config: ExtractConfig):
        self.config = config
        self.device = torch.device(config.device)
        self.compute_dtype = resolve_dtype(config.dtype, config.device)

    @cached_property
    def model(self) -> ResolvedModel:
        return resolve_model(self.config.pose_model, self.config.local_files_only)

    @cached_property
    def input_size(self) -> tuple[int, int]:
        """(height, width) the model takes, from its backbone config."""
        config = model_config(self.model)
        backbone = getattr(config, "backbone_config", None)
        if backbone is None or not hasattr(backbone, "image_size"):
            raise ModelError(
                f"pose model {self.config.pose_model!r} ({config.model_type}) has no backbone_config.image_size; it must be a ViTPose model"
            )
        size = backbone.image_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        if getattr(config, "num_labels", None) != len(COCO_KEYPOINTS):
            raise ModelError(
                f"pose model {self.config.pose_model!r} predicts {config.num_labels} keypoints; msgvip needs the {len(COCO_KEYPOINTS)} COCO keypoints"
            )
        return int(size[0]), int(size[1])

    def spec(self) -> dict:
        height, width = self.input_size
        return {
            "feature_version": FEATURE_VERSION,
            "model": self.model.identity(),
            "normalize": self.model.normalization(),
            "compute_dtype": dtype_name(self.compute_dtype),
            "crop": {"size": [height, width], "aspect": width / height, "padding": BOX_PADDING, "sampling": SAMPLING},
            "decode": DECODE,
            "keypoints": list(COCO_KEYPOINTS),
        }

    def arrays(self) -> list[ArraySpec]:
        return [ArraySpec("pose", (len(COCO_KEYPOINTS), 3), "float32", ("keypoint", "keypoint_xys"))]

    def extract(self, clips: Sequence[Clip]) -> list[dict[str, np.ndarray]]:
        plan, keypoints = self.keypoints(clips)
        boxes = torch.from_numpy(plan.boxes).to(keypoints.device)
        x1, y1, x2, y2 = (b[:, None] for b in boxes.unbind(-1))  # (P, 1) each
        relative = torch.stack([(keypoints[..., 0] - x1) / (x2 - x1), (keypoints[..., 1] - y1) / (y2 - y1), keypoints[..., 2]], -1)
        return [{"pose": p} for p in plan.scatter(relative.float().cpu().numpy(), clips)]

    def keypoints(self, clips: Sequence[Clip]) -> tuple[CropPlan, torch.Tensor]:
        """The group's crop plan and (P, 17, 3) keypoints in frame pixels (x, y, score), on the device.

        The last group's result is kept once, so ``face`` and ``pose`` extracting the same
        group (the same Clip arrays, checked by identity) run the model once.
        """
        key = canonical_json({"spec": self.spec(), "device": str(self.device)})
        arrays = [(c.frames, c.bboxes, c.person_mask) for c in clips]
        last = _LAST_RUN.pop(key, None)
        if last is not None and len(last[0]) == len(arrays) and all(a is b for old, new in zip(last[0], arrays) for a, b in zip(old, new)):
            return last[1], last[2]
        plan = CropPlan.of(clips)
        keypoints = torch.zeros((0, len(COCO_KEYPOINTS), 3), device=self.device)
        if len(plan):
            keypoints = self._run(clips, plan)
        _LAST_RUN.clear()
        _LAST_RUN[key] = (arrays, plan, keypoints)
        return plan, keypoints

    def _run(self, clips: Sequence[Clip], plan: CropPlan) -> torch.Tensor:
        net = load_model(self.model, "vitpose", self.device)
        height, width = self.input_size
        experts = int(getattr(model_config(self.model).backbone_config, "num_experts", 1))

        def estimate(crops: torch.Tensor) -> torch.Tensor:  # (B, 3, h, w) -> (B, K, 3) in input pixels
            pixels = normalize(crops, self.model.rescale, self.model.mean, self.model.std)
            dataset = torch.zeros(len(pixels), dtype=torch.long, device=pixels.device) if experts > 1 else None  # 0 = COCO
            with autocast(self.device, self.compute_dtype):
                heatmaps = net(pixel_values=pixels, dataset_index=dataset).heatmaps  # (B, K, h/4 s, w/4 s)
            return heatmap_peaks(heatmaps.float(), (height, width))

        with torch.inference_mode():
            bank = FrameBank(clips, plan, self.device)
            windows = aspect_windows(torch.from_numpy(plan.boxes).to(self.device), width / height, BOX_PADDING)  # (P, 4)
            peaks = map_crops(bank, windows, (height, width), self.config.batch_size, estimate)  # (P, K, 3)
            x1, y1, x2, y2 = (w[:, None] for w in windows.unbind(-1))
            x = x1 + (peaks[..., 0] + 0.5) / width * (x2 - x1)  # input pixel -> frame, see crops.py
            y = y1 + (peaks[..., 1] + 0.5) / height * (y2 - y1)
            return torch.stack([x, y, peaks[..., 2]], -1)


def heatmap_peaks(heatmaps: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
    """Keypoints from heatmaps, in input-crop pixel indices.

    Shapes: heatmaps (B, K, Hh, Wh) -> (B, K, 3): x, y (input pixel index, sub-pixel) and the peak
    value. The argmax moves 0.25 heatmap pixel towards its larger neighbour on each axis (not
    on the border), then scales by ``(W_in - 1) / (Wh - 1)`` (UDP).
    """
    b, k, hh, wh = heatmaps.shape
    flat = heatmaps.reshape(b, k, hh * wh)
    score, index = flat.max(-1)  # (B, K)
    px, py = index % wh, index // wh

    def at(dx: int, dy: int) -> torch.Tensor:
        qx, qy = (px + dx).clamp(0, wh - 1), (py + dy).clamp(0, hh - 1)
        return flat.gather(-1, (qy * wh + qx).unsqueeze(-1)).squeeze(-1)

    inner_x = (px > 0) & (px < wh - 1)
    inner_y = (py > 0) & (py < hh - 1)
    x = px.float() + torch.where(inner_x, 0.25 * torch.sign(at(1, 0) - at(-1, 0)), 0.0)
    y = py.float() + torch.where(inner_y, 0.25 * torch.sign(at(0, 1) - at(0, -1)), 0.0)
    height, width = input_size
    x = x * (width - 1) / max(wh - 1, 1)
    y = y * (height - 1) / max(hh - 1, 1)
    return torch.stack([x, y, score], -1)
