"""Dropout whose mask is cheap on a CPU: one 64-bit random draw gives four 16-bit uniforms.

torch's CPU dropout draws one Bernoulli sample per element. At the step benchmark's shape (5,600
person-frames x 768) that took 38 ms a call, 9% of a width-matched training step with its 13
calls; comparing four 16-bit words of each 64-bit draw with a threshold makes the same mask in
10 ms. The 64-bit draws come from numpy's PCG64 seeded from torch's generator (so
``torch.manual_seed`` still fixes every mask): 3.6 ms against 8.1 ms from torch's own CPU
generator for one such mask. The keep probability is rounded to a multiple of 1/65536 (0.9 ->
0.899994) and kept values are scaled by the inverse of that rounded probability, so the
expectation is unchanged.

The mask is a float tensor (0 or that scale): applying it is one product forward and one
backward, and :func:`dropout_add` folds a residual sum into the same pass (``addcmul``).
Other devices (CUDA has a fused dropout kernel) and extreme rates use ``F.dropout``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Dropout", "dropout", "dropout_add"]

WORD_VALUES = 1 << 16  # each mask element compares one int16 word


def _mask(x: Tensor, p: float) -> Tensor | None:
    """A mask shaped like x, 0 where dropped and the keep scale elsewhere; None where torch's
    dropout should run instead (not a CPU, or a rate the 16-bit words cannot represent)."""
    kept_words = round((1.0 - p) * WORD_VALUES)  # words below the threshold keep their element
    if x.device.type != "cpu" or not 0 < kept_words < WORD_VALUES:
        return None
    n = x.numel()
    seed = int(torch.randint(1 << 62, ()))  # from torch's generator: torch.manual_seed fixes every mask
    draws = torch.from_numpy(np.random.PCG64(seed).random_raw((n + 3) // 4).view(np.int16))
    words = draws[:n].view(x.shape)  # uniform over the 65,536 int16 values
    return torch.where(words < kept_words - WORD_VALUES // 2, WORD_VALUES / kept_words, 0.0).to(x.dtype)


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """``F.dropout(x, p, training)`` in distribution, with a cheaper mask on a CPU."""
    if not training or p == 0.0:
        return x
    mask = _mask(x, p)
    return F.dropout(x, p, training) if mask is None else x * mask


def dropout_add(x: Tensor, y: Tensor, p: float, training: bool) -> Tensor:
    """``x + dropout(y, p, training)``, the residual sum in the same pass as the mask."""
    if not training or p == 0.0:
        return x + y
    mask = _mask(y, p)
    return x + F.dropout(y, p, training) if mask is None else torch.addcmul(x, y, mask)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same ``p``, same empty state) computed by :func:`dropout`."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)
