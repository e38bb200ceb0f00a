"""Feature extractors: a registry of families, each one module (geometry, appearance, pose, face).

The model families (appearance, pose, face) import torch and transformers only when asked for.
"""

from .geometry import GEOMETRY_FEATURES, GeometryExtractor, geometry_features
from .registry import EXTRACTORS, Extractor, UnknownFeatureError, build_extractors, identity

__all__ = [
    "EXTRACTORS",
    "GEOMETRY_FEATURES",
    "Extractor",
    "GeometryExtractor",
    "UnknownFeatureError",
    "build_extractors",
    "geometry_features",
    "identity",
]
