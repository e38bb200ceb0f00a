"""Typed configs with defaults that work, and the rules for loading them from files."""

from __future__ import annotations

from dataclasses import asdict, dataclass


class ConfigError(ValueError):
    """A config file, flag combination or label file that cannot be used; names the source."""


@dataclass(frozen=True)
class ExtractConfig:
    """What `msgvip extract` computes and how.

    Only the fields that change the numbers reach the fingerprint (through each extractor's
    ``spec()``); ``batch_size``, ``num_workers`` and ``device`` never do.
    """

    features: tuple[str, ...] = ("geometry",)
    batch_size: int = 256  # crops per model call
    num_workers: int = 2  # clip-decoding threads / processes
    device: str = "cpu"

    def settings(self) -> dict:
        """The options that decide the features (all but batch size, workers and device)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if k not in RUNTIME_FIELDS}


RUNTIME_FIELDS = ("batch_size", "num_workers", "device")
