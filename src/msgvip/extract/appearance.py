"""The ``appearance`` family: a frozen DINOv2 embedding of every valid person crop.

Each valid person-frame's box, grown by ``context`` of its size on every side, is cut to
``crop_size x crop_size`` (see :mod:`.crops` for the sampling convention), normalised with the
backbone's own mean/std (its ``preprocessor_config.json``, else ImageNet's) and embedded; crops of
all clips of a group go through the model ``batch_size`` at a time.

Output per clip: ``appearance`` (T, N, D) float16, zeros in absent slots, with D = hidden size
(``pooling="cls"`` or ``"mean"``) or 2 x hidden (``"cls+mean"``: the CLS token, then the mean of
the patch tokens, both after the final layer norm).

With several ``layers`` (indices into transformers' ``hidden_states``: 0 the patch embeddings,
k the output of block k, -1 the last), the output is (T, N, L, D): the same pooling of each
listed hidden state, shallow to deep whatever order they were given in, each through the final
layer norm as the last one is, so that its last row equals the single-layer output. The ranker
mixes them (:mod:`msgvip.ranker.layer_mix`). A single layer gives (T, N, D).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import numpy as np
import torch

from ..config import ConfigError, ExtractConfig
from ..data.clip import Clip
from ..store.feature_store import ArraySpec
from .backbones import ModelError, ResolvedModel, autocast, dtype_name, load_model, model_config, resolve_dtype, resolve_model
from .crops import CropPlan, FrameBank, context_windows, map_crops, normalize

FEATURE_VERSION = 1
SAMPLING = {"mode": "bilinear", "align_corners": False, "outside": "zeros", "pixel_centres": "k+0.5"}
LAYER_DIM = "layer"  # name of the layer axis of (L, D) rows in the store; the ranker finds layered families by it


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

    @cached_property
    def num_layers(self) -> int:
        return int(model_config(self.model).num_hidden_layers)

    def hidden_state_indices(self, layers: Sequence[int]) -> tuple[int, ...] | None:
        """``layers`` as the user gave them -> indices into ``hidden_states`` (0 .. num_layers),
        sorted shallow to deep; ``None`` when they name the last layer alone (the default path).

        Normalising makes ``-1`` and ``num_layers`` one store, not two. Raises ConfigError naming
        the option and the model's layer count.
        """
        n = self.num_layers
        bad = [i for i in layers if not -(n + 1) <= i <= n]
        if bad:
            raise ConfigError(
                f"layers {bad} out of range for {self.name!r}, which has {n} layers; use indices from "
                f"{-(n + 1)} to {n} (0 the patch embeddings, {n} or -1 the last layer)"
            )
        chosen = sorted({i % (n + 1) for i in layers})
        if len(chosen) != len(layers):
            raise ConfigError(f"layers {list(layers)} name one hidden state twice for {self.name!r} ({n} layers: -k is {n + 1}-k); list each once")
        return None if chosen == [n] else tuple(chosen)

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

    def embed(self, crops: torch.Tensor, pooling: str, layers: tuple[int, ...] | None = None) -> torch.Tensor:
        """(B, 3, s, s) raw crops in [0, 255] -> (B, D) float32 pooled embeddings of the last
        layer (``layers=None``), or (B, K, D) of the K hidden states ``layers`` (from
        :meth:`hidden_state_indices`)."""
        net = load_model(self.model, "backbone", self.device)
        pixels = normalize(crops, self.model.rescale, self.model.mean, self.model.std)
        if layers is None:
            with autocast(self.device, self.compute_dtype):
                hidden = net(pixel_values=pixels).last_hidden_state  # (B, 1 + R + L, D)
            return pool_tokens(hidden.float(), pooling, self.registers)
        final_norm = getattr(net, "layernorm", None)
        if not isinstance(final_norm, torch.nn.LayerNorm):
            raise ModelError(f"model {self.name!r} ({type(net).__name__}) has no final `layernorm`; layers other than -1 need a DINOv2-like encoder")
        with autocast(self.device, self.compute_dtype):
            # every hidden state, not hooks on chosen blocks: output_hidden_states is transformers'
            # public contract for every encoder; the cost is memory, (num_layers + 1) x one output
            states = net(pixel_values=pixels, output_hidden_states=True).hidden_states  # num_layers + 1 x (B, 1 + R + L, D)
            # the final norm on each, as the model applies it to the last: all on one scale, and
            # the last layer's rows equal those of the default path
            hidden = torch.stack([final_norm(states[i]) for i in layers], 1)  # (B, K, 1 + R + L, D)
        B, K = hidden.shape[:2]
        return pool_tokens(hidden.float().flatten(0, 1), pooling, self.registers).reshape(B, K, -1)  # (B, K, D)


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
        spec = {
            "feature_version": FEATURE_VERSION,
            **self.backbone.spec(),
            "crop": {"size": [self.config.crop_size, self.config.crop_size], "context": float(self.config.context), "sampling": SAMPLING},
            "pooling": self.config.pooling,
            "output_dtype": "float16",
        }
        if self.layers is not None:  # only then: stores of the last layer alone keep the fingerprint they had
            spec["layers"] = list(self.layers)
        return spec

    @cached_property
    def layers(self) -> tuple[int, ...] | None:
        """The hidden states to pool (0 .. num_layers, shallow to deep); None: the last alone."""
        return self.backbone.hidden_state_indices(self.config.layers)

    @property
    def dim(self) -> int:
        """D, the pooled size of one layer."""
        return self.backbone.hidden_size * (2 if self.config.pooling == "cls+mean" else 1)

    @property
    def row_shape(self) -> tuple[int, ...]:
        """(D,) for one layer, (L, D) for several."""
        return (self.dim,) if self.layers is None or len(self.layers) == 1 else (len(self.layers), self.dim)

    def arrays(self) -> list[ArraySpec]:
        dims = ("appearance_dim",) if len(self.row_shape) == 1 else (LAYER_DIM, "appearance_dim")
        return [ArraySpec("appearance", self.row_shape, "float16", dims)]

    def extract(self, clips: Sequence[Clip]) -> list[dict[str, np.ndarray]]:
        plan, values = self.features(clips)
        return [{"appearance": a} for a in plan.scatter(values.half().cpu().numpy(), clips)]

    def features(self, clips: Sequence[Clip]) -> tuple[CropPlan, torch.Tensor]:
        """The group's crop plan and (P, *row_shape) float32 embeddings of its valid person-frames, on the device."""
        plan = CropPlan.of(clips)
        if not len(plan):
            return plan, torch.zeros((0, *self.row_shape), device=self.backbone.device)
        self.backbone.check_crop_size()
        layers, shape = self.layers, self.row_shape
        with torch.inference_mode():
            bank = FrameBank(clips, plan, self.backbone.device)
            windows = context_windows(torch.from_numpy(plan.boxes).to(self.backbone.device), float(self.config.context))
            size = (self.config.crop_size, self.config.crop_size)

            def embed(crops: torch.Tensor) -> torch.Tensor:  # (B, 3, s, s) -> (B, *row_shape); one layer: (B, 1, D) -> (B, D)
                return self.backbone.embed(crops, self.config.pooling, layers).reshape(len(crops), *shape)

            return plan, map_crops(bank, windows, size, self.config.batch_size, embed)
