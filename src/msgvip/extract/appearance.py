"""The ``appearance`` family: a frozen DINOv2 embedding of every valid person crop.

Each valid person-frame's box, grown by ``context`` of its size on every side, is cut to
``crop_size x crop_size`` (see :mod:`.crops` for the sampling convention), normalised with the
backbone's own mean/std (its ``preprocessor_config.json``, else ImageNet's) and embedded; crops of
all clips of a group go through the model ``batch_size`` at a time.

Output per clip: ``appearance`` (T, N, D) float16, zeros in absent slots, with D = hidden size
(``pooling="cls"`` or ``"mean"``) or 2 x hidden (``"cls+mean"``: the CLS token, then the mean of
the patch tokens, both after the final layer norm).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import numpy as np
import torch

from ..config import ConfigError, ExtractConfig
from ..data.clip import Clip
from ..store.feature_store import ArraySpec
from .backbones import ResolvedModel, autocast, dtype_name, load_model, model_config, resolve_dtype, resolve_model
from .crops import CropPlan, FrameBank, context_windows, map_crops, normalize

FEATURE_VERSION = 1
SAMPLING = {"mode": "bilinear", "align_corners": False, "outside": "zeros", "pixel_centres": "k+0.5"}


class Backbone:
    """A ViT-like encoder (DINOv2) embedding raw crops; shared by ``appearance`` and ``face``.

    Resolves (and digests) the model on first use, loads it on first ``embed``.
    """

    def __init__(self, name: str, local_files_only: bool, device: str, dtype: str, crop_size: int):
        self.name, self.local_files_only, self.device = name, local_files_only, torch.device(device)
        self.compute_dtype = resolve_dtype(dtype, device)
        self.crop_size = crop_size

    @cached_property
    def model(self) -> ResolvedModel:
        return resolve_model(self.name, self.local_files_only)

    @cached_property
    def hidden_size(self) -> int:
        return int(model_config(self.model).hidden_size)

    @cached_property
    def registers(self) -> int:
        """Register tokens between CLS and the patch tokens (DINOv2 with registers), else 0."""
        return int(getattr(model_config(self.model), "num_register_tokens", 0) or 0)

    def check_crop_size(self) -> None:
        patch = model_config(self.model).patch_size
        patch = patch if isinstance(patch, int) else patch[0]
        if self.crop_size % patch:
            lower, upper = self.crop_size // patch * patch, (self.crop_size // patch + 1) * patch
            raise ConfigError(
                f"crop_size {self.crop_size} is not a multiple of the patch size {patch} of {self.name!r}; "
                f"use {lower or upper} or {upper}"
            )

    def spec(self) -> dict:
        """Model identity, normalisation and compute dtype: what the families embed in their specs."""
        self.check_crop_size()
        return {
            "model": self.model.identity(),
            "normalize": self.model.normalization(),
            "compute_dtype": dtype_name(self.compute_dtype),
        }

    def embed(self, crops: torch.Tensor, pooling: str) -> torch.Tensor:
        """(B, 3, s, s) raw crops in [0, 255] -> (B, D) float32 pooled embeddings."""
        net = load_model(self.model, "backbone", self.device)
        pixels = normalize(crops, self.model.rescale, self.model.mean, self.model.std)
        with autocast(self.device, self.compute_dtype):
            hidden = net(pixel_values=pixels).last_hidden_state  # (B, 1 + R + L, D)
        return pool_tokens(hidden.float(), pooling, self.registers)


def pool_tokens(hidden: torch.Tensor, pooling: str, registers: int = 0) -> torch.Tensor:
    """(B, 1 + R + L, D) tokens (CLS, R registers, L patches) -> (B, D) or (B, 2 D) for ``cls+mean``."""
    cls = hidden[:, 0]
    if pooling == "cls":
        return cls
    mean = hidden[:, 1 + registers :].mean(1)
    return mean if pooling == "mean" else torch.cat([cls, mean], -1)


class AppearanceExtractor:
    """The ``appearance`` family: DINOv2 on context-padded person crops of the valid slots."""

    name = "appearance"

    def __init__(self, config: ExtractConfig):
        self.config = config
        self.backbone = Backbone(config.backbone, config.local_files_only, config.device, config.dtype, config.crop_size)

    def spec(self) -> dict:
        return {
            "feature_version": FEATURE_VERSION,
            **self.backbone.spec(),
            "crop": {"size": [self.config.crop_size, self.config.crop_size], "context": float(self.config.context), "sampling": SAMPLING},
            "pooling": self.config.pooling,
            "output_dtype": "float16",
        }

    @property
    def dim(self) -> int:
        return self.backbone.hidden_size * (2 if self.config.pooling == "cls+mean" else 1)

    def arrays(self) -> list[ArraySpec]:
        return [ArraySpec("appearance", (self.dim,), "float16", ("appearance_dim",))]

    def extract(self, clips: Sequence[Clip]) -> list[dict[str, np.ndarray]]:
        plan, values = self.features(clips)
        return [{"appearance": a} for a in plan.scatter(values.half().cpu().numpy(), clips)]

    def features(self, clips: Sequence[Clip]) -> tuple[CropPlan, torch.Tensor]:
        """The group's crop plan and (P, D) float32 embeddings of its valid person-frames, on the device."""
        plan = CropPlan.of(clips)
        if not len(plan):
            return plan, torch.zeros((0, self.dim), device=self.backbone.device)
        self.backbone.check_crop_size()
        with torch.inference_mode():
            bank = FrameBank(clips, plan, self.backbone.device)
            windows = context_windows(torch.from_numpy(plan.boxes).to(self.backbone.device), float(self.config.context))
            size = (self.config.crop_size, self.config.crop_size)
            return plan, map_crops(bank, windows, size, self.config.batch_size, lambda crops: self.backbone.embed(crops, self.config.pooling))
