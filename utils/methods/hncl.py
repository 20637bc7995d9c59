"""HNCL: heatmap-neighbour contrastive learning (Liu et al., "Facial Expression Recognition With Heatmap
Neighbor Contrastive Learning", IEEE TMM 2025). No code is public; this is a reimplementation from the
paper's description, on MoCo v2 (:mod:`utils.methods.moco`).

For every image, its ``k`` nearest neighbours in landmark-heatmap space (:mod:`utils.methods.neighbours`) are
positives besides its other augmented view, in a multi-positive InfoNCE
(:func:`utils.methods.losses.multi_positive_info_nce`). The neighbours' keys come from a bank holding the latest
key embedding of every training image (updated whenever the image is in a batch), so they cost no extra
forward pass; a neighbour not yet in the bank is left out. The head is a 3-layer projector with batch norm
followed by a predictor. Negatives that are the query's own image or one of its neighbours are masked out of
the queue. With ``k = 0`` the loss is MoCo v2's, exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from utils.methods.heads import mlp
from utils.methods.losses import multi_positive_info_nce
from utils.methods.neighbours import NeighbourConfig, build_index, label_agreement

from .base import register
from .moco import MoCo, MoCoConfig


@dataclass
class HNCLConfig(MoCoConfig):
    """HNCL's settings besides MoCo v2's.

    Attributes:
        neighbours: the neighbour index (``k`` neighbours per image, the heatmap space).
        projector_layers: layers of the projection head (HNCL: 3).
        projector_batch_norm: batch norm in the projector, with a non-affine one on its output (MoCo v3's
            head; False with 2 layers is MoCo v2's head).
        predictor: a 2-layer batch-normed MLP predictor on the query branch.
    """

    neighbours: NeighbourConfig = field(default_factory=NeighbourConfig)
    projector_layers: int = 3
    projector_batch_norm: bool = True
    predictor: bool = True


@register
class HNCL(MoCo):
    """MoCo v2 with heatmap neighbours as extra positives (see the module docstring)."""

    name = "hncl"
    Config = HNCLConfig

    def __init__(self, config: HNCLConfig, spec):
        super().__init__(config, spec)
        n, k = spec.train_size, config.neighbours.k
        self.register_buffer("neighbours", torch.zeros(n, k, dtype=torch.long))  # (N, k) set by prepare()
        self.register_buffer("bank", F.normalize(torch.randn(n, config.dim), dim=1))  # (N, dim) latest keys
        self.register_buffer("bank_filled", torch.zeros(n, dtype=torch.bool))  # (N,)

    def heads(self, feature_dim: int) -> tuple[nn.Module, nn.Module]:
        c = self.config
        norm = c.projector_batch_norm
        projector = mlp(feature_dim, c.hidden, c.dim, c.projector_layers, batch_norm=norm, output_norm=norm)
        predictor = mlp(c.dim, c.hidden, c.dim, 2, batch_norm=True, output_norm=True) if c.predictor else nn.Identity()
        return projector, predictor

    def prepare(self, train, prepared, train_config) -> dict:
        """Build (or load from the cache) the neighbour index of the training images."""
        if self.config.neighbours.k == 0:
            return {"neighbours": {**asdict(self.config.neighbours), "label_agreement": None}}
        index = build_index(prepared, train.index, self.config.neighbours, device=train.x.device)
        self.set_neighbours(torch.as_tensor(index["neighbours"]))
        agreement = label_agreement(index["neighbours"], train.y.cpu().numpy())
        return {
            "neighbours": {
                **asdict(self.config.neighbours),
                "index_seconds": round(index["seconds"], 2),
                "search": index["search"],
                "label_agreement": agreement["agreement"],
                "chance_agreement": agreement["chance"],
            }
        }

    def set_neighbours(self, neighbours: torch.Tensor) -> None:
        """``(N, k)`` positions (within the training split) of each training image's neighbours."""
        if neighbours.shape != self.neighbours.shape:
            raise ValueError(f"neighbours must be {tuple(self.neighbours.shape)}, not {tuple(neighbours.shape)}")
        self.neighbours.copy_(neighbours)

    def variant(self) -> str:
        return f"{self.config.neighbours.space} k={self.config.neighbours.k}"

    def contrastive_loss(self, q, k, rows):
        if self.neighbours.shape[1] == 0:  # no neighbours: MoCo v2's loss
            loss, logs = super().contrastive_loss(q, k, rows)
            return loss, {**logs, "neighbours_used": 0.0}
        nb = self.neighbours[rows]  # (B, k)
        positives = torch.cat([k[:, None], self.bank[nb]], dim=1)  # (B, 1 + k, dim)
        valid = torch.cat([torch.ones_like(nb[:, :1], dtype=torch.bool), self.bank_filled[nb]], dim=1)  # (B, 1 + k)
        related = torch.cat([rows[:, None], nb], dim=1)  # (B, 1 + k): the image and its neighbours
        not_negative = (self.queue_rows[None, None, :] == related[:, :, None]).any(dim=1)  # (B, K)
        loss = multi_positive_info_nce(q, positives, self.queue.clone(), self.config.temperature, valid, not_negative)
        return loss, {"neighbours_used": float(valid[:, 1:].float().mean())}

    @torch.no_grad()
    def remember(self, keys, rows):
        super().remember(keys, rows)
        self.bank[rows] = keys
        self.bank_filled[rows] = True
