"""The CPU dropout: torch's in distribution, a cheaper mask; with a residual sum in the same pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from msgvip.ranker.dropout import WORD_VALUES, Dropout, dropout, dropout_add


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_keeps_one_minus_p_and_preserves_the_expectation(p):
    torch.manual_seed(0)
    x = torch.ones(1001, 1003)  # not a multiple of 4: the last 64-bit draw is used in part
    y = dropout(x, p, training=True)
    kept = y != 0
    kept_probability = round((1 - p) * WORD_VALUES) / WORD_VALUES
    assert abs(kept.float().mean().item() - kept_probability) < 3e-3
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / kept_probability))
    assert abs(y.mean().item() - 1.0) < 5e-3
    # each of the four words of a draw keeps alike, and independently of its neighbours
    words = kept.view(-1)[: 1000 * 1000].view(-1, 4).float()  # (draws, 4)
    assert words.mean(0).sub(kept_probability).abs().max() < 5e-3
    assert abs((words[:, :-1] * words[:, 1:]).mean().item() - kept_probability**2) < 5e-3
    assert abs(kept[-1].float().mean().item() - kept_probability) < 0.05  # the row that ends in the partial draw


def test_gradient_is_the_mask_times_the_scale_and_eval_is_identity():
    torch.manual_seed(1)
    x = torch.randn(64, 96, requires_grad=True)
    y = dropout(x, 0.25, training=True)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y != 0).float() * (WORD_VALUES / round(0.75 * WORD_VALUES)))
    assert dropout(x, 0.25, training=False) is x and dropout(x, 0.0, training=True) is x
    module = Dropout(0.25).eval()
    assert module(x) is x and module.state_dict() == {} and repr(module) == "Dropout(p=0.25, inplace=False)"


def test_same_seed_same_mask_and_extreme_rates_fall_back_to_torch():
    x = torch.randn(33, 17)
    torch.manual_seed(7)
    a = dropout(x, 0.5, training=True)
    torch.manual_seed(7)
    b = dropout(x, 0.5, training=True)
    assert torch.equal(a, b)
    torch.manual_seed(3)
    tiny = dropout(x, 1e-6, training=True)  # rounds to keeping every word: torch's own dropout
    torch.manual_seed(3)
    assert torch.equal(tiny, F.dropout(x, 1e-6, training=True))


def test_dropout_add_is_the_residual_plus_the_same_dropout():
    x = torch.randn(40, 24, requires_grad=True)
    y = torch.randn(40, 24, requires_grad=True)
    torch.manual_seed(5)
    out = dropout_add(x, y, 0.3, training=True)
    torch.manual_seed(5)
    torch.testing.assert_close(out, x + dropout(y, 0.3, training=True))
    kept = (out - x) != 0
    assert 0.6 < kept.float().mean() < 0.8
    out.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    torch.testing.assert_close(y.grad, kept.float() * (WORD_VALUES / round(0.7 * WORD_VALUES)))
    torch.testing.assert_close(dropout_add(x, y, 0.3, training=False), x + y)
