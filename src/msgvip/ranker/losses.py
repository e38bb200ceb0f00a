"""Ranking losses over the valid persons of each clip.

Padded slots never reach a loss: their logits are replaced (not multiplied) before any
arithmetic, so garbage there (even NaN or inf) changes neither the loss nor any gradient, and the
gradient reaching an invalid slot's logit is exactly zero.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch
from torch import Tensor

__all__ = ["RankingLossTerms", "ranking_loss", "ranking_loss_terms"]


class RankingLossTerms(NamedTuple):
    """The weighted total and its two unweighted parts (scalars, for logging)."""

    total: Tensor
    ce: Tensor
    pairwise: Tensor


class LossSettings(Protocol):
    """What a model's ``loss_terms`` reads of the training config (TrainConfig has both)."""

    margin: float
    pairwise_weight: float


def ranking_loss_terms(
    logits: Tensor,
    target: Tensor,
    valid: Tensor,
    margin: float = 1.0,
    pairwise_weight: float = 1.0,
    ce_weight: float = 1.0,
) -> RankingLossTerms:
    r"""Masked cross-entropy plus a pairwise margin term, averaged over the labeled clips.

    For a labeled clip with valid persons :math:`V`, target :math:`t` and logits :math:`s`:

    - ``ce`` :math:`= -\log \mathrm{softmax}_{V}(s)_t` (softmax over the valid persons only);
    - ``pairwise`` :math:`= \frac{1}{|V| - 1} \sum_{j \in V, j \ne t} \max(0, m - (s_t - s_j))`,
      0 for a clip with a single valid person.

    Each term is averaged over the labeled clips (``target >= 0``; clips with ``target < 0`` are
    ignored), and ``total = ce_weight * ce + pairwise_weight * pairwise``. With no labeled clip
    all three are a zero that is still connected to ``logits`` (``backward()`` works).

    Args:
        logits: (B, N) float, any value at invalid slots (``-inf`` from the model is fine).
        target: (B,) long, the important person's slot, or < 0 for an unlabeled clip.
        valid: (B, N) bool, slots holding a person in at least one frame of the clip.
        margin: hinge margin ``m`` of the pairwise term (default: 1.0).
        pairwise_weight: weight of the pairwise term (default: 1.0).
        ce_weight: weight of the cross-entropy term (default: 1.0).

    Raises:
        ValueError: on shape mismatches, or a labeled clip whose target slot is not valid.
    """
    if logits.dim() != 2 or valid.shape != logits.shape or target.shape != logits.shape[:1]:
        raise ValueError(
            f"expected logits (B, N), target (B,), valid (B, N); got {tuple(logits.shape)}, "
            f"{tuple(target.shape)}, {tuple(valid.shape)}"
        )
    valid = valid.to(torch.bool)
    target = target.long()
    labeled = target >= 0  # (B,)
    safe_target = target.clamp(min=0)
    target_valid = valid.gather(1, safe_target[:, None]).squeeze(1)  # (B,)
    bad = labeled & ~target_valid
    if bool(bad.any()):
        raise ValueError(
            f"target slot is not a valid person in clips {bad.nonzero().flatten().tolist()} "
            f"(targets {target[bad].tolist()}): fix the labels or the person mask"
        )

    logits = logits.float()
    # where(), not masked multiply: garbage (NaN/inf) at invalid slots never enters arithmetic
    masked = torch.where(valid, logits, torch.full_like(logits, float("-inf")))  # (B, N)
    finite = torch.where(valid, logits, torch.zeros_like(logits))  # (B, N)
    rows = labeled.nonzero().flatten()
    if rows.numel() == 0:
        zero = finite.sum() * 0.0
        return RankingLossTerms(zero, zero, zero)

    masked, finite, valid, safe_target = masked[rows], finite[rows], valid[rows], safe_target[rows]
    ce = -torch.log_softmax(masked, dim=1).gather(1, safe_target[:, None]).squeeze(1)  # (L,)

    target_logit = finite.gather(1, safe_target[:, None])  # (L, 1)
    others = valid.clone()
    others[torch.arange(rows.numel(), device=others.device), safe_target] = False  # (L, N)
    hinge = torch.clamp(margin - (target_logit - finite), min=0.0)  # (L, N)
    hinge = torch.where(others, hinge, torch.zeros_like(hinge))
    num_others = others.sum(1)  # (L,)
    pairwise = hinge.sum(1) / num_others.clamp(min=1)  # (L,), 0 when alone

    ce, pairwise = ce.mean(), pairwise.mean()
    return RankingLossTerms(ce_weight * ce + pairwise_weight * pairwise, ce, pairwise)


def ranking_loss(
    logits: Tensor,
    target: Tensor,
    valid: Tensor,
    margin: float = 1.0,
    pairwise_weight: float = 1.0,
    ce_weight: float = 1.0,
) -> Tensor:
    """Scalar training loss: ``ranking_loss_terms(...).total`` (see there for the formula)."""
    return ranking_loss_terms(logits, target, valid, margin, pairwise_weight, ce_weight).total
