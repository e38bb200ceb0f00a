"""The ranker: dataset from a store, model, losses, metrics, trainer. Knows nothing of extraction."""

from .dataset import ClipBatch, LabelError, StoreDataset, read_label_overrides
from .losses import ranking_loss, ranking_loss_terms
from .metrics import largest_box_scores, most_central_scores, rank_of_target, ranking_metrics
from .model import ImportanceRanker, RankerConfig
from .trainer import ConfigError, TrainConfig, TrainSummary, build_config, evaluate_run, load_run, predict_run, train

__all__ = [
    "ClipBatch", "ConfigError", "ImportanceRanker", "LabelError", "RankerConfig", "StoreDataset", "TrainConfig",
    "TrainSummary", "build_config", "evaluate_run", "largest_box_scores", "load_run",
    "most_central_scores", "predict_run", "rank_of_target", "ranking_loss", "ranking_loss_terms", "ranking_metrics",
    "read_label_overrides", "train",
]  # fmt: skip
