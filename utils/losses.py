"""The losses of the suite's methods, as pure functions.

- :func:`info_nce`, :func:`multi_positive_info_nce`: MoCo v2 and HNCL; their embeddings are L2-normalised
  by the caller.
- :func:`byol_loss`: BYOL's regression loss; it normalises its inputs.

Shapes: ``B`` queries, ``D`` embedding size, ``K`` negatives, ``P`` positives per query.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(
    query: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float,
    negative_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE (van den Oord et al. 2018; MoCo's loss): cross-entropy of picking the positive among negatives.

    Args:
        query: ``(B, D)``.
        positive: ``(B, D)``, one positive per query (its other augmented view).
        negatives: ``(K, D)``, shared by all queries (MoCo's queue).
        temperature: the softmax temperature (MoCo v2: 0.2).
        negative_mask: optional ``(B, K)`` bool, True where a negative must be ignored for that query
            (it is the query's own image, or one of its positives).

    Returns:
        The mean loss over the batch (a scalar).
    """
    l_pos = (query * positive).sum(dim=1, keepdim=True)  # (B, 1)
    l_neg = query @ negatives.T  # (B, K)
    if negative_mask is not None:
        l_neg = l_neg.masked_fill(negative_mask, float("-inf"))
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature  # (B, 1 + K)
    labels = torch.zeros(len(query), dtype=torch.long, device=query.device)  # the positive is column 0
    return F.cross_entropy(logits, labels)


def multi_positive_info_nce(
    query: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float,
    positive_mask: torch.Tensor | None = None,
    negative_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE with several positives per query, averaged over them (SupCon's L_out form, Khosla et al. 2020).

    For query ``i`` with positives ``P_i`` and negatives ``N``::

        loss_i = -1/|P_i| * sum_{p in P_i} log( exp(q.p / t) / (sum_{p' in P_i} exp(q.p' / t) + sum_{n in N} exp(q.n / t)) )

    With one positive per query it is exactly :func:`info_nce`.

    Args:
        query: ``(B, D)``.
        positives: ``(B, P, D)``; column 0 is usually the query's other view, the rest its neighbours.
        negatives: ``(K, D)``.
        temperature: softmax temperature.
        positive_mask: optional ``(B, P)`` bool, False for a positive slot that is empty (a query with fewer
            neighbours); every query needs at least one valid positive.
        negative_mask: optional ``(B, K)`` bool, True for a negative to ignore.

    Returns:
        The mean loss over the batch.
    """
    l_pos = torch.einsum("bd,bpd->bp", query, positives) / temperature  # (B, P)
    l_neg = (query @ negatives.T) / temperature  # (B, K)
    if positive_mask is None:
        positive_mask = torch.ones_like(l_pos, dtype=torch.bool)
    if negative_mask is not None:
        l_neg = l_neg.masked_fill(negative_mask, float("-inf"))
    l_pos_in = l_pos.masked_fill(~positive_mask, float("-inf"))
    log_denominator = torch.logsumexp(torch.cat([l_pos_in, l_neg], dim=1), dim=1, keepdim=True)  # (B, 1)
    log_prob = l_pos - log_denominator  # (B, P)
    per_query = (log_prob * positive_mask).sum(dim=1) / positive_mask.sum(dim=1).clamp(min=1)
    return -per_query.mean()


# -------------------------------------------------------------------------------------------- BYOL


def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BYOL's normalised regression loss (Grill et al. 2020, eq. 2): ``2 - 2 cos(prediction, target)``, the
    squared distance of the two L2-normalised vectors, averaged over the batch. Normalises its inputs itself.

    Args:
        prediction: ``(..., D)`` the online network's predictions.
        target: ``(..., D)`` the target network's projections (no gradient flows into them).
    """
    p = F.normalize(prediction.float(), dim=-1)
    z = F.normalize(target.float().detach(), dim=-1)
    return (2 - 2 * (p * z).sum(dim=-1)).mean()
