"""TensorBoard logging of epoch rows: what TensorBoard reads back is what metrics.csv holds."""

from __future__ import annotations

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from msgvip.ranker.loggers import TensorBoardLogger, scalar_tag


def epoch_rows(epochs: int) -> list[dict]:
    """Rows shaped like the trainer's metrics.csv rows, with values that differ per epoch."""
    return [
        {"epoch": e, "train_loss": 1.7 / e, "train_rank@1": 0.1 * e, "val_loss": 1.9 / e, "val_rank@1": 0.2 + 0.05 * e,
         "val_rank@3": 0.5 + 0.01 * e, "val_mrr": 0.4 + 0.03 * e, "lr": 3e-4 * (epochs - e + 1) / epochs, "seconds": 2.5 + e,
         "data_wait_fraction": 0.001 * e}  # fmt: skip
        for e in range(1, epochs + 1)
    ]


def read_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(s.step, s.value) for s in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_every_numeric_column_reads_back_with_its_values(tmp_path):
    rows = epoch_rows(3)
    with TensorBoardLogger(tmp_path) as logger:
        for row in rows:
            logger.log_epoch({**row, "lr": np.float32(row["lr"]), "note": "not a number", "stopped": False}, step=row["epoch"])
    scalars = read_scalars(tmp_path / "tb")
    columns = [c for c in rows[0] if c != "epoch"]
    assert sorted(scalars) == sorted(scalar_tag(c) for c in columns)
    for column in columns:
        expected = [(row["epoch"], pytest.approx(row[column], rel=1e-6)) for row in rows]  # TensorBoard keeps float32
        assert scalars[scalar_tag(column)] == expected, column


def test_train_and_val_columns_share_a_chart():
    assert [scalar_tag(c) for c in ("train_loss", "val_loss", "val_rank@1", "lr", "data_wait_fraction")] == [
        "loss/train", "loss/val", "rank@1/val", "lr", "data_wait_fraction",
    ]  # fmt: skip


def test_a_resumed_run_shows_each_epoch_once(tmp_path):
    rows = epoch_rows(4)
    with TensorBoardLogger(tmp_path) as logger:  # a run that crashed after logging epoch 3, checkpointed at 2
        for row in rows[:3]:
            logger.log_epoch(row, step=row["epoch"])
    with TensorBoardLogger(tmp_path, purge_step=3) as logger:  # resumed: epochs 3 and 4 again
        for row in rows[2:]:
            logger.log_epoch({**row, "val_mrr": row["val_mrr"] + 0.5}, step=row["epoch"])
    values = read_scalars(tmp_path / "tb")["mrr/val"]
    assert [step for step, _ in values] == [1, 2, 3, 4]
    assert values[2][1] == pytest.approx(rows[2]["val_mrr"] + 0.5)  # the resumed run's epoch 3, not the lost one
