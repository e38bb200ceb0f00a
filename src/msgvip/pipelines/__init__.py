"""End-to-end flows built from the stages: extraction, training from a store, the demo, sweeps and run listings."""

from .extract import run_extract
from .extract_run import ExtractAborted, ExtractSummary, extract_features

__all__ = ["ExtractAborted", "ExtractSummary", "extract_features", "run_extract"]
