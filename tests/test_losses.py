"""Contrastive losses against slow per-query references, their special cases, masks and gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from utils.methods.losses import info_nce, multi_positive_info_nce

T = 0.2


def unit(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=dtype), dim=-1)


def random_mask(shape, p, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) < p


def slow_info_nce(q, pos, neg, t, negative_mask=None):
    """Per query: -log(exp(s_pos/t) / (exp(s_pos/t) + sum_n exp(s_n/t))), unmasked negatives only."""
    total = 0.0
    for i in range(len(q)):
        s_pos = math.exp(float(q[i] @ pos[i]) / t)
        s_neg = sum(
            math.exp(float(q[i] @ neg[n]) / t)
            for n in range(len(neg))
            if negative_mask is None or not negative_mask[i, n]
        )
        total += -math.log(s_pos / (s_pos + s_neg))
    return total / len(q)


def slow_multi_positive(q, pos, neg, t, positive_mask=None, negative_mask=None):
    """Per query: -1/|P_i| sum_p log(exp(s_p/t) / (sum_{p' valid} exp(s_p'/t) + sum_{n unmasked} exp(s_n/t)))."""
    total = 0.0
    for i in range(len(q)):
        valid = [p for p in range(pos.shape[1]) if positive_mask is None or positive_mask[i, p]]
        denominator = sum(math.exp(float(q[i] @ pos[i, p]) / t) for p in valid)
        denominator += sum(
            math.exp(float(q[i] @ neg[n]) / t)
            for n in range(len(neg))
            if negative_mask is None or not negative_mask[i, n]
        )
        total += -sum(math.log(math.exp(float(q[i] @ pos[i, p]) / t) / denominator) for p in valid) / len(valid)
    return total / len(q)


@pytest.mark.parametrize("masked", [False, True])
def test_info_nce_matches_slow_reference(masked):
    q, pos, neg = unit(6, 8, seed=0), unit(6, 8, seed=1), unit(10, 8, seed=2)
    mask = random_mask((6, 10), 0.3, seed=3) if masked else None
    fast = info_nce(q, pos, neg, T, mask)
    assert fast.dtype == torch.float64 and fast.ndim == 0
    assert float(fast) == pytest.approx(slow_info_nce(q, pos, neg, T, mask), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("masked", [False, True])
def test_multi_positive_matches_slow_reference(masked):
    q, pos, neg = unit(6, 8, seed=0), unit(6, 4, 8, seed=1), unit(10, 8, seed=2)
    positive_mask = negative_mask = None
    if masked:
        positive_mask = random_mask((6, 4), 0.5, seed=4)
        positive_mask[:, 0] = True  # every query keeps at least its other view
        positive_mask[1] = torch.tensor([True, False, False, False])  # one query with a single positive
        negative_mask = random_mask((6, 10), 0.3, seed=5)
    fast = multi_positive_info_nce(q, pos, neg, T, positive_mask, negative_mask)
    slow = slow_multi_positive(q, pos, neg, T, positive_mask, negative_mask)
    assert float(fast) == pytest.approx(slow, rel=1e-12, abs=1e-12)


def test_info_nce_is_cross_entropy_with_the_positive_first():
    q, pos, neg = unit(5, 8, seed=0), unit(5, 8, seed=1), unit(7, 8, seed=2)
    logits = torch.cat([(q * pos).sum(1, keepdim=True), q @ neg.T], dim=1) / T
    expected = F.cross_entropy(logits, torch.zeros(5, dtype=torch.long))
    torch.testing.assert_close(info_nce(q, pos, neg, T), expected, rtol=1e-12, atol=1e-12)


def test_multi_positive_with_one_positive_is_info_nce():
    q, pos, neg = unit(5, 8, seed=0), unit(5, 8, seed=1), unit(7, 8, seed=2)
    negative_mask = random_mask((5, 7), 0.3, seed=3)
    for mask in (None, negative_mask):
        torch.testing.assert_close(
            multi_positive_info_nce(q, pos[:, None], neg, T, negative_mask=mask),
            info_nce(q, pos, neg, T, mask),
            rtol=1e-12,
            atol=1e-12,
        )


def test_multi_positive_with_extra_positives_all_invalid_is_info_nce():
    q, pos, neg = unit(5, 8, seed=0), unit(5, 8, seed=1), unit(7, 8, seed=2)
    extra = unit(5, 3, 8, seed=4)
    positives = torch.cat([pos[:, None], extra], dim=1)  # (5, 4, 8)
    valid = torch.zeros(5, 4, dtype=torch.bool)
    valid[:, 0] = True
    negative_mask = random_mask((5, 7), 0.3, seed=3)
    torch.testing.assert_close(
        multi_positive_info_nce(q, positives, neg, T, valid, negative_mask),
        info_nce(q, pos, neg, T, negative_mask),
        rtol=1e-12,
        atol=1e-12,
    )
    # the extra positives do count once they are valid
    assert not torch.isclose(multi_positive_info_nce(q, positives, neg, T), info_nce(q, pos, neg, T))


def test_masking_a_negative_equals_deleting_it():
    q, pos, neg = unit(4, 8, seed=0), unit(4, 8, seed=1), unit(6, 8, seed=2)
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[:, 2] = True  # the same negative ignored for every query
    kept = torch.cat([neg[:2], neg[3:]])
    torch.testing.assert_close(info_nce(q, pos, neg, T, mask), info_nce(q, pos, kept, T), rtol=1e-12, atol=1e-12)
    positives = unit(4, 3, 8, seed=5)
    torch.testing.assert_close(
        multi_positive_info_nce(q, positives, neg, T, negative_mask=mask),
        multi_positive_info_nce(q, positives, kept, T),
        rtol=1e-12,
        atol=1e-12,
    )
    # a negative masked for one query only changes that query's term
    single = torch.zeros(1, 6, dtype=torch.bool)
    single[0, 4] = True
    per_query = [info_nce(q[i : i + 1], pos[i : i + 1], neg, T) for i in range(4)]
    per_query[0] = info_nce(q[:1], pos[:1], torch.cat([neg[:4], neg[5:]]), T)
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[0, 4] = True
    torch.testing.assert_close(info_nce(q, pos, neg, T, mask), torch.stack(per_query).mean(), rtol=1e-12, atol=1e-12)


def test_loss_is_non_negative_and_falls_as_the_positive_nears_the_query():
    q, neg = unit(1, 8, seed=0), unit(16, 8, seed=2)
    start = unit(1, 8, seed=1)
    losses = []
    for a in torch.linspace(0, 1, 6, dtype=torch.float64):
        pos = F.normalize((1 - a) * start + a * q, dim=1)  # moves from `start` onto the query
        loss = info_nce(q, pos, neg, T)
        multi = multi_positive_info_nce(q, torch.stack([pos, pos], dim=1), neg, T)
        assert loss >= 0 and multi >= 0
        losses.append(float(loss))
    assert all(b < a for a, b in zip(losses, losses[1:]))


def test_gradient_flows_only_to_the_query():
    q = unit(4, 8, seed=0).requires_grad_()
    pos = unit(4, 8, seed=1).requires_grad_()
    neg = unit(6, 8, seed=2).requires_grad_()
    info_nce(q, pos.detach(), neg.detach(), T).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert pos.grad is None and neg.grad is None

    q.grad = None
    positives = unit(4, 3, 8, seed=3).requires_grad_()
    multi_positive_info_nce(q, positives.detach(), neg.detach(), T).backward()
    assert q.grad is not None and torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0
    assert positives.grad is None and neg.grad is None


def test_masked_entries_give_finite_gradients():
    """Masked negatives and empty positive slots are -inf logits: they must not turn the gradient into NaN."""
    q = unit(4, 8, seed=0).requires_grad_()
    positives, neg = unit(4, 3, 8, seed=1), unit(6, 8, seed=2)
    valid = torch.tensor([[True, False, False], [True, True, False], [True, True, True], [True, False, True]])
    negative_mask = random_mask((4, 6), 0.5, seed=3)
    loss = multi_positive_info_nce(q, positives, neg, T, valid, negative_mask)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(q.grad).all()
