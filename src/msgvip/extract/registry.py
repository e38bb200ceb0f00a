"""The extractor registry: one module per feature family, one line here per module.

An extractor has a ``name``, a ``spec()`` (a JSON record of everything that changes its numbers,
including a ``feature_version`` bumped by hand whenever its code changes its output), the
``arrays()`` it writes, and ``extract(clips)`` returning one ``{array name: (T, N, ...)}`` per clip.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from ..config import ExtractConfig
from ..data.clip import Clip
from ..store.feature_store import SCHEMA_VERSION, ArraySpec
from ..store.fingerprint import fingerprint
from .geometry import GeometryExtractor, SvipBoxExtractor


class Extractor(Protocol):
    name: str

    def spec(self) -> dict: ...

    def arrays(self) -> list[ArraySpec]: ...

    def extract(self, clips: list[Clip]) -> list[dict[str, np.ndarray]]: ...


def _appearance(config: ExtractConfig) -> Extractor:
    from .appearance import AppearanceExtractor  # torch + transformers load only when a model family is asked for

    return AppearanceExtractor(config)


def _face(config: ExtractConfig) -> Extractor:
    from .face import FaceExtractor

    return FaceExtractor(config)


def _pose(config: ExtractConfig) -> Extractor:
    from .pose import PoseExtractor

    return PoseExtractor(config)


EXTRACTORS: dict[str, Callable[[ExtractConfig], Extractor]] = {
    "appearance": _appearance,
    "face": _face,
    "geometry": lambda config: GeometryExtractor(),
    "pose": _pose,
    "svip_box": lambda config: SvipBoxExtractor(),
}


class UnknownFeatureError(ValueError):
    pass


def build_extractors(config: ExtractConfig) -> list[Extractor]:
    """The config's extractors, in a canonical order (so feature order never changes a key)."""
    unknown = sorted(set(config.features) - set(EXTRACTORS))
    if unknown or not config.features:
        raise UnknownFeatureError(f"unknown feature families {unknown or '(none given)'}; choose from {sorted(EXTRACTORS)}")
    return [EXTRACTORS[name](config) for name in sorted(set(config.features))]


def identity(extractors: list[Extractor]) -> tuple[str, dict]:
    """(fingerprint, record): the record is what the fingerprint hashes and the store keeps."""
    record = {"schema_version": SCHEMA_VERSION, "features": {e.name: e.spec() for e in extractors}}
    return fingerprint(record), record
