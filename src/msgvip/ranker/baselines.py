"""The two heuristic baselines every table sets a model beside: the largest box and the most
central person, each a person's mean over the frames it is in (:mod:`.metrics` scores them)."""

from __future__ import annotations

import numpy as np

from .dataset import StoreDataset
from .metrics import largest_box_scores, most_central_scores, ranking_metrics

__all__ = ["baseline_metrics"]


def baseline_metrics(data: StoreDataset, batch_size: int = 64) -> dict:
    """Metrics of the two heuristic baselines, a batch at a time, from the store's geometry or
    svip_box family (empty without either)."""
    if data.baseline_family is None or not len(data):
        return {}
    if data.baseline_family not in data.families:  # a model that reads no boxes is still set beside the heuristics
        data = data.with_families([data.baseline_family])
    largest = np.full((len(data), data.persons), -np.inf)
    central = np.full((len(data), data.persons), -np.inf)
    for batch in data.batches(batch_size, prefetch=0):
        area, dist = data.baseline_inputs(batch.features)
        n = batch.person_mask.shape[2]
        largest[batch.index.numpy(), :n] = largest_box_scores(area, batch.person_mask)
        central[batch.index.numpy(), :n] = most_central_scores(dist, batch.person_mask)
    target, valid = data.targets.numpy(), data.valid_slots().numpy()
    return {"largest_box": ranking_metrics(largest, target, valid), "most_central": ranking_metrics(central, target, valid)}
