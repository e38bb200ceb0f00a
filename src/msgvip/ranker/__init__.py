"""The ranker: dataset from a store, model, losses, metrics, trainer. Knows nothing of extraction.

Its names load on first use (PEP 562), so a command that never trains (``msgvip --help``,
``cache ls``) starts without importing torch and torch_geometric.
"""

from __future__ import annotations

from typing import Any

_WHERE = {
    "ClipBatch": "dataset", "LabelError": "dataset", "StoreDataset": "dataset", "read_label_overrides": "dataset",
    "ranking_loss": "losses", "ranking_loss_terms": "losses",
    "largest_box_scores": "metrics", "most_central_scores": "metrics", "rank_of_target": "metrics", "ranking_metrics": "metrics",
    "ImportanceRanker": "model", "RankerConfig": "model",
    "ConfigError": "trainer", "TrainConfig": "trainer", "TrainSummary": "trainer", "build_config": "trainer", "evaluate_run": "trainer",
    "load_run": "trainer", "predict_run": "trainer", "train": "trainer",
}  # fmt: skip

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import dataset, losses, metrics, model, trainer  # torch and torch_geometric load here, on first use

    modules = {"dataset": dataset, "losses": losses, "metrics": metrics, "model": model, "trainer": trainer}
    return getattr(modules[_WHERE[name]], name)


def __dir__() -> list[str]:
    return __all__
