"""Projection and prediction heads, and the momentum (EMA) update, shared by the self-supervised methods.

>>> head = mlp(512, 4096, 256, layers=2, batch_norm=True)            # BYOL's projector
>>> head(torch.zeros(8, 512)).shape
torch.Size([8, 256])

Which head has batch norm is a choice of each paper, so it is an explicit flag here, not a consequence of
depth: MoCo v2's 2-layer head has none; BYOL's 2-layer projector and predictor normalise the hidden layer;
MoCo v3's (and HNCL's) 3-layer projector also normalises its output (non-affine).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def mlp(
    in_dim: int, hidden: int, out_dim: int, layers: int = 2, batch_norm: bool = False, output_norm: bool = False
) -> nn.Sequential:
    """``layers`` linear layers with ReLU between them.

    Args:
        batch_norm: batch norm after every hidden layer (BYOL, MoCo v3); the linear layer before a batch norm
            has no bias (the norm's shift replaces it).
        output_norm: a non-affine batch norm on the output (MoCo v3's projector, HNCL).

    A ``(B, N, in_dim)`` input (one vector per region or pixel) is normalised over ``B * N`` rows, which is
    what a 1x1 convolution with ``BatchNorm1d`` does on ``(B, in_dim, N)``.
    """
    if layers < 1:
        raise ValueError(f"an MLP needs at least one layer, not {layers}")
    modules: list[nn.Module] = []
    dims = [in_dim] + [hidden] * (layers - 1) + [out_dim]
    for i in range(layers):
        last = i == layers - 1
        normed = output_norm if last else batch_norm
        modules.append(nn.Linear(dims[i], dims[i + 1], bias=not normed))
        if normed:
            modules.append(nn.BatchNorm1d(dims[i + 1], affine=not last))
        if not last:
            modules.append(nn.ReLU(inplace=True))
    return _RowwiseSequential(*modules)


class _RowwiseSequential(nn.Sequential):
    """A sequential MLP that also takes ``(B, N, D)`` input, treating its ``B * N`` rows as one batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:
            return super().forward(x)
        shape = x.shape
        return super().forward(x.reshape(-1, shape[-1])).reshape(*shape[:-1], -1)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters take no gradient: a momentum (target / key) network."""
    import copy

    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad = False
    return target


@torch.no_grad()
def update_momentum(pairs: Iterable[tuple[nn.Module, nn.Module]], momentum: float) -> None:
    """``target = momentum * target + (1 - momentum) * online`` for the parameters of every ``(online, target)``
    pair (MoCo's key encoder, BYOL's target network). Buffers (batch-norm statistics) are not averaged: each
    network keeps the statistics of its own forward passes, as in the reference implementations."""
    online, target = [], []
    for a, b in pairs:
        pa, pb = list(a.parameters()), list(b.parameters())
        if len(pa) != len(pb):
            raise ValueError(f"online and target differ in structure ({len(pa)} vs {len(pb)} parameters)")
        online += [p.detach() for p in pa]
        target += pb
    torch._foreach_mul_(target, momentum)
    torch._foreach_add_(target, online, alpha=1 - momentum)
