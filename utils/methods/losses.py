"""The losses of the suite's methods, as pure functions.

- :func:`info_nce`, :func:`multi_positive_info_nce`: MoCo v2 and HNCL; their embeddings are L2-normalised
  by the caller.
- :func:`byol_loss`, :func:`region_loss`: BYOL's and FRA's regression losses; they normalise their inputs.
- :func:`sinkhorn`, :func:`relation_loss`: FRA's balanced assignment of positions to regions.
- :func:`label_loss`: a classifier's loss under FERPlus's four label modes.
- :func:`ran_attention`, :func:`region_biased_loss`: RAN's attention pooling and its region-biased loss.

Shapes: ``B`` queries, ``D`` embedding size, ``K`` negatives (or clusters), ``P`` positives per query, ``R``
regions per image.
"""

from __future__ import annotations

import math
from typing import NamedTuple

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


# ------------------------------------------------------------------------------------ BYOL and FRA


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


def region_loss(prediction: torch.Tensor, target: torch.Tensor, decorrelation: float = 0.0) -> torch.Tensor:
    """FRA's region loss: BYOL's loss between each region's prediction and the *same* region's target, plus
    a decorrelation term that pushes a region's prediction away from the other regions' targets (the
    authors' code: weight 0.02 on the mean over regions of ``sum_{j != i} cos(p_i, z_j)^2 / R``).

    Args:
        prediction, target: ``(B, R, D)``, R regions per image.
        decorrelation: weight of the second term (0: BYOL's loss per region).
    """
    p = F.normalize(prediction.float(), dim=-1)
    z = F.normalize(target.float().detach(), dim=-1)
    loss = (2 - 2 * (p * z).sum(dim=-1)).mean()
    if decorrelation:
        regions = p.shape[1]
        cos = p @ z.transpose(1, 2)  # (B, R, R)
        off = cos.masked_fill(torch.eye(regions, dtype=torch.bool, device=cos.device), 0.0)
        loss = loss + decorrelation * ((off**2).sum(dim=-1) / regions).mean()
    return loss


@torch.no_grad()
def sinkhorn(probs: torch.Tensor, iterations: int = 3) -> torch.Tensor:
    """Balance an ``(N, K)`` assignment of N samples to K clusters (SwAV's Sinkhorn-Knopp, as FRA's code
    applies it to softmax probabilities): alternately rescale so that every cluster gets ``N / K`` of the mass
    and every sample 1. Returns ``(N, K)`` whose rows sum to 1 (exactly after the last step) and whose
    columns sum to about ``N / K``."""
    q = probs.float().T.clone()  # (K, N)
    k, n = q.shape
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True) * k  # each cluster: total 1 / K
        q /= q.sum(dim=0, keepdim=True) * n  # each sample: total 1 / N
    return (q * n).T


def relation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    student_temperature: float = 0.1,
    teacher_temperature: float = 0.04,
    iterations: int = 3,
    balance_weight: float = 1.0,
) -> torch.Tensor:
    """FRA's semantic-relation loss: each position's assignment to the regions, as the student sees it, must
    match the teacher's Sinkhorn-balanced assignment (cross-entropy), plus the authors' balance term
    ``log K - H(mean student assignment)`` that keeps every region in use (0 when all are used equally).

    Args:
        student: ``(N, K)`` scores (cosine similarities) of N positions with K region queries, online network.
        teacher: ``(N, K)`` the same from the target network (no gradient).
        student_temperature, teacher_temperature: softmax temperatures (authors: 0.1 and 0.04).
        iterations: Sinkhorn iterations on the teacher's assignment (authors: 3).
        balance_weight: weight of the balance term (authors: 1).
    """
    log_p = F.log_softmax(student.float() / student_temperature, dim=-1)  # (N, K)
    q = sinkhorn(F.softmax(teacher.float().detach() / teacher_temperature, dim=-1), iterations)  # (N, K)
    loss = -(q * log_p).sum(dim=-1).mean()
    if balance_weight:
        mean = log_p.exp().mean(dim=0)  # (K,)
        entropy = -(mean * mean.clamp_min(1e-12).log()).sum()
        loss = loss + balance_weight * (math.log(len(mean)) - entropy)
    return loss


# ------------------------------------------------------------------------------------------ classifiers

LABEL_MODES = ("majority", "crossentropy", "probability", "multi_target")
MULTI_TARGET_EPSILON = 0.001  # FERPlus reference code (ferplus.py, _process_target): avoids log(0)


def label_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    distributions: torch.Tensor | None = None,
    mode: str = "majority",
    generator: torch.Generator | None = None,
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """A classifier's loss under one of FERPlus's four training modes (Barsoum et al. 2016, "Training deep
    networks for facial expression recognition with crowd-sourced label distribution"; the rules are those
    of its reference code, ``src/train.py`` and ``src/ferplus.py``):

    - ``majority``: cross-entropy with the hard label (``labels``), optionally class-weighted and smoothed;
    - ``crossentropy``: cross-entropy against the vote distribution as a soft target, ``-sum_k t_k log p_k``;
    - ``probability``: each time an image is seen, one label is drawn from its vote distribution
      ("probabilistic label drawing"), then cross-entropy with it;
    - ``multi_target``: every emotion in the target counts as correct: with ``t = (1 - e) [d > 0] + e``
      (e = 0.001), the loss is ``-log max_k t_k p_k``.

    Args:
        logits: ``(B, C)``.
        labels: ``(B,)`` hard labels (majority).
        distributions: ``(B, C)`` the images' target distributions (FERPlus votes after its rule for the mode:
            :func:`utils.data.ferplus_distribution`); needed by every mode but ``majority``.
        generator: for ``probability``'s draws.
    """
    if mode not in LABEL_MODES:
        raise ValueError(f"mode must be one of {LABEL_MODES}, not {mode!r}")
    logits = logits.float()
    if mode == "majority":
        return F.cross_entropy(logits, labels, weight=weight, label_smoothing=label_smoothing)
    if distributions is None:
        raise ValueError(f"label mode {mode!r} needs the images' label distributions (FERPlus votes)")
    d = distributions.float()
    log_p = F.log_softmax(logits, dim=1)  # (B, C)
    if mode == "crossentropy":
        return -(d * log_p).sum(dim=1).mean()
    if mode == "probability":
        drawn = torch.multinomial(d.to(logits.device), 1, generator=generator).squeeze(1)  # (B,)
        return F.cross_entropy(logits, drawn, weight=weight, label_smoothing=label_smoothing)
    target = (1 - MULTI_TARGET_EPSILON) * (d > 0).float() + MULTI_TARGET_EPSILON  # (B, C)
    return -(torch.log(target) + log_p).max(dim=1).values.mean()  # log max_k t_k p_k


# ---------------------------------------------------------------------------------------------- RAN


class RANAttention(NamedTuple):
    """What :func:`ran_attention` computes for ``B`` images of ``n`` regions each (region 0 the whole face)."""

    pooled: torch.Tensor  # (B, 2D): the face representation P the classifier reads
    mu: torch.Tensor  # (B, n): self-attention weights (the region-biased loss compares them)
    nu: torch.Tensor  # (B, n): relation-attention weights
    shares: torch.Tensor  # (B, n): each region's weight in P, mu_i nu_i / sum_j mu_j nu_j (rows sum to 1)
    self_logits: torch.Tensor  # (B, n): q0 . F_i + b, before the sigmoid
    relation_logits: torch.Tensor  # (B, n): q1 . [F_i : F_m] + b


RAN_NORMALISATIONS = ("softmax", "sum")


def ran_attention(
    features: torch.Tensor,
    self_attention: torch.nn.Module,
    relation_attention: torch.nn.Module,
    normalise: str = "softmax",
) -> RANAttention:
    """RAN's two attention stages (Wang et al., IEEE TIP 2020, eqs. 1-4) over ``n`` region features per image.

    With ``normalise="sum"``, the paper's equations: ``mu_i = sigmoid(q0 . F_i)``, ``F_m = sum_i mu_i F_i /
    sum_i mu_i``; ``nu_i = sigmoid(q1 . [F_i : F_m])``, ``P = sum_i mu_i nu_i [F_i : F_m] / sum_i mu_i nu_i``.
    Nothing bounds the ratio of two regions' weights: a region whose sigmoid goes to 0 leaves ``P``.

    With ``normalise="softmax"`` (the authors' FERPlus code, ``FERplus_dir/attention_rank_loss.py``), the
    sigmoids are turned into weights by a softmax over the regions: ``mu_i = softmax_i(sigmoid(q0 . F_i))``,
    ``nu_i = softmax_i(sigmoid(q1 . [F_i : F_m]))``, and ``F_m``, ``P`` as above. A sigmoid lies in (0, 1), so
    no region weighs more than ``e`` times another, and none leaves the pooled face.

    Args:
        features: ``(B, n, D)``, region 0 the full face.
        self_attention: ``D -> 1`` (the linear map ``q0``); relation_attention: ``2D -> 1`` (``q1``).
        normalise: ``softmax`` or ``sum`` (see above).

    In ``sum`` mode the normalised weights are computed as softmaxes of ``log sigmoid`` scores: the same numbers,
    but finite when every sigmoid of an image underflows to 0 (``0 / 0`` would make the batch's loss NaN).
    """
    if normalise not in RAN_NORMALISATIONS:
        raise ValueError(f"normalise must be one of {RAN_NORMALISATIONS}, not {normalise!r}")
    # the weights of sum mode as log-weights: log sigmoid; softmax mode: the sigmoid itself is the log-weight
    log_weight = torch.sigmoid if normalise == "softmax" else F.logsigmoid
    with torch.autocast(features.device.type, enabled=False):  # float32: sigmoids saturate to 0 in bfloat16
        features = features.float()
        self_logits = self_attention(features).squeeze(-1)  # (B, n)
        self_share = torch.softmax(log_weight(self_logits), dim=1)  # (B, n): mu_i / sum_j mu_j
        pooled = (self_share[..., None] * features).sum(dim=1)  # (B, D): F_m
        joined = torch.cat([features, pooled[:, None].expand_as(features)], dim=-1)  # (B, n, 2D)
        relation_logits = relation_attention(joined).squeeze(-1)  # (B, n)
        shares = torch.softmax(log_weight(self_logits) + log_weight(relation_logits), dim=1)  # (B, n)
        out = (shares[..., None] * joined).sum(dim=1)  # (B, 2D)
        if normalise == "softmax":
            mu, nu = self_share, torch.softmax(torch.sigmoid(relation_logits), dim=1)
        else:
            mu, nu = torch.sigmoid(self_logits), torch.sigmoid(relation_logits)
    return RANAttention(out, mu, nu, shares, self_logits, relation_logits)


def region_biased_loss(mu: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
    """RAN's region-biased loss: ``max(0, margin - (max_{i >= 1} mu_i - mu_0))`` averaged over the batch: some
    crop must weigh ``margin`` more than the full face (region 0).

    Args:
        mu: ``(B, n)`` self-attention weights, column 0 the full face.
    """
    return F.relu(margin - (mu[:, 1:].max(dim=1).values - mu[:, 0])).mean()
