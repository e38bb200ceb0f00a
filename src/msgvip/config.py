"""Typed configs with defaults that work, and the rules for loading them from files."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass


class ConfigError(ValueError):
    """A config file, flag combination or label file that cannot be used; names the source."""


POOLINGS = ("cls", "mean", "cls+mean")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ExtractConfig:
    """What `msgvip extract` computes and how.

    Only the fields that change the numbers reach the fingerprint (through each extractor's
    ``spec()``); ``batch_size``, ``num_workers``, ``device`` and ``local_files_only`` never do.
    ``dtype="auto"`` means bf16 autocast on CUDA (fp16 where bf16 is unsupported) and fp32 on
    CPU; the resolved compute dtype is what the specs record.
    """

    features: tuple[str, ...] = ("geometry",)
    batch_size: int = 256  # crops per model call
    num_workers: int = 2  # clip-decoding threads / processes
    device: str = "cpu"
    backbone: str = "facebook/dinov2-base"  # appearance + face: hub id or local directory
    pose_model: str = "usyd-community/vitpose-base-simple"  # pose (+ face): hub id or local directory
    crop_size: int = 224  # appearance and face crops are crop_size x crop_size
    context: float = 0.1  # appearance crops: box grown by this fraction of its size on each side
    pooling: str = "cls+mean"  # appearance: "cls", "mean" (patch tokens) or "cls+mean" (both, concatenated)
    dtype: str = "auto"  # compute dtype: auto | float32 | bfloat16 | float16
    local_files_only: bool = False  # never reach the hub; models must be local or already cached

    def __post_init__(self) -> None:
        for name in ("backbone", "pose_model"):  # a pathlib.Path is welcome, a str is what JSON holds
            if isinstance(getattr(self, name), os.PathLike):
                object.__setattr__(self, name, os.fspath(getattr(self, name)))
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling {self.pooling!r} is not one of {list(POOLINGS)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype {self.dtype!r} is not one of {list(DTYPES)}")
        if isinstance(self.crop_size, bool) or not isinstance(self.crop_size, int) or self.crop_size < 1:
            raise ConfigError(f"crop_size must be a positive integer, got {self.crop_size!r}")
        if isinstance(self.context, bool) or not isinstance(self.context, (int, float)) or not 0 <= self.context <= 4:
            raise ConfigError(f"context must be a fraction of the box size in [0, 4], got {self.context!r}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")

    def settings(self) -> dict:
        """The options that decide the features (all but the runtime fields)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if k not in RUNTIME_FIELDS}


RUNTIME_FIELDS = ("batch_size", "num_workers", "device", "local_files_only")
