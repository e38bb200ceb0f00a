"""End-to-end flows built from the stages: extraction (and later the demo)."""

from .extract import ExtractAborted, ExtractSummary, extract_features, run_extract

__all__ = ["ExtractAborted", "ExtractSummary", "extract_features", "run_extract"]
