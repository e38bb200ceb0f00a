"""A learned, softmax-weighted mix of a frozen backbone's layers (as speech toolkits mix the
layers of a frozen upstream model).

``msgvip extract --layers -1,-4,-8,-12`` stores the pooled tokens of several backbone layers per
person-frame, rows (L, D) with a ``"layer"`` axis in the store's ArraySpec. The ranker receives
each family flattened to (V, L * D); :class:`LayerMix` turns a family's layers back into one
(V, D) vector that the usual per-family LayerNorm + projection then take, so the width of
everything after the mix does not grow with L.

Example::

    >>> mix = LayerMix(4)
    >>> mix(torch.randn(10, 4, 768)).shape
    torch.Size([10, 768])
    >>> mix.weights()
    tensor([0.2500, 0.2500, 0.2500, 0.2500])
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from ..store.feature_store import ArraySpec

__all__ = ["LAYER_DIM", "LayerMix", "layer_counts"]

LAYER_DIM = "layer"  # the store's name for the layer axis (written by extract/appearance.py)


class LayerMix(nn.Module):
    """``sum_l softmax(w)_l * x_l``: a convex combination of L layers, one learned logit each.

    The logits start at 0, so training starts from the plain mean of the layers and the data
    decides which to lean on; being a softmax, the weights stay positive and sum to 1, so the
    mix keeps the scale of its inputs whatever it learns.

    There is no per-layer LayerNorm before the mix: extraction already sends every stored layer
    through the backbone's own final layer norm (the one the last layer gets), so the layers
    arrive on one scale; and the model's per-family LayerNorm after the mix renormalises the
    result. A per-layer norm would only add 2 x L x D parameters to fit on few clips.

    Args:
        layers: L, the number of layers mixed (>= 1).

    Shapes:
        - **input:** :math:`(*, L, D)`, e.g. :math:`(V, L, D)` for V person-frames.
        - **output:** :math:`(*, D)`.
    """

    def __init__(self, layers: int) -> None:
        super().__init__()
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
            raise ValueError(f"LayerMix needs a positive number of layers, got {layers!r}")
        self.layers = layers
        self.logits = nn.Parameter(torch.zeros(layers))  # (L,) uniform at init

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[-2] != self.layers:
            raise ValueError(f"LayerMix({self.layers}) takes (..., {self.layers}, D) inputs, got shape {tuple(x.shape)}")
        weights = torch.softmax(self.logits, 0).to(x.dtype)  # (L,)
        return torch.einsum("...ld,l->...d", x, weights)  # (*, D)

    def weights(self) -> Tensor:
        """(L,) the current mixing weights (detached), in the store's layer order (shallow to deep)."""
        return torch.softmax(self.logits.detach(), 0)

    def extra_repr(self) -> str:
        return f"layers={self.layers}"


def layer_counts(specs: Iterable[ArraySpec], families: Iterable[str]) -> dict[str, int]:
    """family -> L for each of ``families`` whose store rows are (L, ...) along a ``"layer"``
    axis; families without one (single-layer appearance, geometry, pose) are left out.

    >>> layer_counts([ArraySpec("appearance", (4, 768), "float16", ("layer", "appearance_dim"))], ["appearance"])
    {'appearance': 4}
    """
    wanted = set(families)
    return {s.name: s.shape[0] for s in specs if s.name in wanted and s.dims[:1] == (LAYER_DIM,)}
