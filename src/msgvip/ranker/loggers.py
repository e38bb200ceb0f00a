"""Training loggers beside metrics.csv (which the trainer always writes).

:class:`TensorBoardLogger` writes each epoch's row as TensorBoard scalars under ``RUN/tb/``, so
``tensorboard --logdir runs/`` shows every run side by side. A ``train_X`` / ``val_X`` column
becomes the tag ``X/train`` / ``X/val`` (both curves of a metric in one chart); any other
numeric column keeps its name (``lr``, ``seconds``, ``data_wait_fraction``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from pathlib import Path

LOG_DIR = "tb"
SPLIT_PREFIXES = ("train_", "val_")


def scalar_tag(column: str) -> str:
    """The TensorBoard tag of a metrics.csv column.

    >>> scalar_tag("val_rank@1"), scalar_tag("train_loss"), scalar_tag("lr")
    ('rank@1/val', 'loss/train', 'lr')
    """
    for prefix in SPLIT_PREFIXES:
        if column.startswith(prefix):
            return f"{column[len(prefix):]}/{prefix[:-1]}"
    return column


class TensorBoardLogger:
    """Scalars of each epoch row to ``run_dir/tb`` (rank 0 only, like metrics.csv).

    ``purge_step``: on a resume, the first epoch about to be written; events a crashed run wrote
    at that step or later are hidden, so the curves show each epoch once.
    """

    def __init__(self, run_dir: Path, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(run_dir) / LOG_DIR
        self._writer = SummaryWriter(str(self.log_dir), purge_step=purge_step)

    def log_epoch(self, row: Mapping[str, object], step: int) -> None:
        """Every numeric value of ``row`` but ``epoch`` (the step already says it) at ``step``."""
        for column, value in row.items():
            if column == "epoch" or isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):  # numpy scalars too
                continue  # (epoch 0, the probe before training, has no training loss)
            self._writer.add_scalar(scalar_tag(column), float(value), global_step=step)
        self._writer.flush()  # a crashed or interrupted run keeps every epoch it finished

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
