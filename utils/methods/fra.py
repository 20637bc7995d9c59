"""FRA: facial region awareness (Gao and Patras, "Self-Supervised Facial Representation Learning with Facial
Region Awareness", CVPR 2024). The facts below are from the paper and the authors' public code
(github.com/zaczgao/Facial_Region_Awareness, ``models/fra.py``); the code here is written anew.

BYOL (:mod:`utils.methods.byol`) plus a region branch on the backbone's spatial feature map:

1. ``queries`` learnable mask queries (authors: 8) attend to the map through a small transformer decoder
   (authors: 2 layers, 8 heads, width 256), and an MLP turns each into a *mask embedding*. In training the
   embeddings are averaged over the batch (one set of regions for the dataset, as the authors do); in
   evaluation their moving average (``prototypes``) is used.
2. Each position of the map gets a per-pixel projection; its cosine similarity with each mask embedding,
   divided by ``scale``, is turned into an assignment of the position to the regions by a softmax over the
   queries (the authors' code: regions compete for each position). A query's **heatmap** is its
   assignment normalised over the positions.
3. A **region feature** is the heatmap-weighted average of the backbone's map, projected by an MLP.

Loss (authors' weights): ``0.5 * global + 0.5 * region + 0.1 * relation``, where *global* is BYOL's loss
on the pooled features, *region* is BYOL's loss between each online region feature (through a predictor)
and the same query's target region feature of the other view (plus the authors' 0.02-weighted
decorrelation from the other regions), and *relation* makes the online network's assignment of positions
to regions (temperature 0.1) match the target network's Sinkhorn-balanced assignment (temperature 0.04),
with the authors' term that keeps every region in use (:func:`utils.methods.losses.relation_loss`).

Where the suite departs from the authors' recipe (ResNet-50 at 224 px, VGGFace2, LARS lr 0.9 at batch 512,
EMA 0.996 -> 1, hidden width 4,096 everywhere), and why:

- **The map must be at least 6x6.** A 48-px face through the stride-2 stem ends at 3x3 after ResNet-18's
  last stage (48 / 2 / 2 / 2 / 2). By default the last stage keeps the stride 1 (``last_stride=1``): its map
  is 6x6, and the regions and the pooled features every evaluation reads come from it, as in the authors'
  code. The other way, ``region_stage="layer3"`` with BYOL's backbone, trains the regions on a map the
  probes never read, and gives the last stage only the global loss's half of the gradient: on FER2013 its
  linear probe ended 2.6 points below BYOL's (README's results, ``results/``).
- **Sharper assignments.** ``scale`` 0.1 is the paper's beta = 10; at the authors' code value 1 the heatmaps
  that pool the regions stayed within 4 % of a uniform map on 48-px faces.
- **One direction per step**, as BYOL here (``symmetric=False``): the online network sees the first view; the
  target sees both, the second for the global and region losses, the first for the relation loss, which
  compares the two networks' assignments on the same view.
- **Dense heads are narrower**: the per-pixel projector, the region projector and the region predictor have
  ``dense_hidden`` (512) hidden units, not 4,096: they run on every position (36 per image) or every region
  (8), and at 4,096 the per-pixel projector alone would cost about as much as the backbone.
- **The decoder's queries** are the decoder's input (DETR and the authors start from zeros and add the
  queries as positional embeddings in every layer); the map's 2-D sine positions are added to the keys and
  values (DETR: the keys only). Dropout 0.1 as the authors.
- **Optimiser**: SGD with warm-up and cosine (no LARS), as BYOL here; the EMA schedule is the authors'.
- **Under torchrun** the batch mean of the mask embeddings is taken per process (the authors all-reduce it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from utils.methods.heads import frozen_copy, mlp
from utils.methods.losses import byol_loss, region_loss, relation_loss

from .base import register
from .byol import BYOL, BYOLConfig

MIN_MAP_SIDE = 6  # a coarser map cannot hold separate regions for brows, eyes, nose and mouth


@dataclass
class FRAConfig(BYOLConfig):
    """FRA's settings besides BYOL's.

    Attributes:
        last_stride: 1 (default) keeps ResNet's last map at 6x6 for a 48-px face with the stride-2 stem, so that
            the regions and the pooled features come from the same map, as the authors'; 2 is BYOL's backbone.
        region_stage: the stage whose map the region branch reads (None: the last, the default); ``layer3`` is
            6x6 for a 48-px face with the stride-2 stem whatever ``last_stride``.
        queries: mask queries, i.e. regions (authors: 8).
        decoder_layers, decoder_heads, decoder_dim: the transformer decoder (authors: 2, 8, 256).
        decoder_dropout: dropout in the decoder (authors: 0.1).
        dense_hidden: hidden width of the per-pixel projector, region projector and region predictor.
        scale: the similarities are divided by it before the softmax over queries (the paper's text: beta = 10,
            i.e. 0.1, the default; the authors' code: 1, which leaves the heatmaps within 4 % of uniform here).
        region_weight: weight of the region loss; the global loss gets ``1 - region_weight`` (authors: 0.5).
        region_decorrelation: weight of the region loss's decorrelation term (authors: 0.02).
        relation_weight: weight of the semantic-relation loss (authors: 0.1).
        student_temperature, teacher_temperature: the relation loss's temperatures (authors: 0.1, 0.04).
        sinkhorn_iterations: Sinkhorn iterations on the teacher's assignment (authors: 3).
        prototype_momentum: EMA rate of the mask embeddings kept for evaluation (authors: 0.9).
    """

    last_stride: int = 1
    region_stage: str | None = None
    queries: int = 8
    decoder_layers: int = 2
    decoder_heads: int = 8
    decoder_dim: int = 256
    decoder_dropout: float = 0.1
    dense_hidden: int = 512
    scale: float = 0.1
    region_weight: float = 0.5
    region_decorrelation: float = 0.02
    relation_weight: float = 0.1
    student_temperature: float = 0.1
    teacher_temperature: float = 0.04
    sinkhorn_iterations: int = 3
    prototype_momentum: float = 0.9


def sine_positions(height: int, width: int, dim: int, device=None) -> torch.Tensor:
    """DETR's 2-D sine positional encoding, normalised to the map: ``(dim, height, width)``, half of the
    channels for y, half for x."""
    if dim % 4:
        raise ValueError(f"the positional encoding needs a dimension divisible by 4, not {dim}")
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 1) / height * 2 * math.pi  # (h,)
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 1) / width * 2 * math.pi  # (w,)
    quarter = dim // 4
    freq = 10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter)  # (dim/4,)
    y = ys[:, None] / freq  # (h, dim/4)
    x = xs[:, None] / freq  # (w, dim/4)
    pos_y = torch.cat([y.sin(), y.cos()], dim=1)[:, :, None].expand(-1, -1, width)  # (h, dim/2, w)
    pos_x = torch.cat([x.sin(), x.cos()], dim=1)[:, :, None].expand(-1, -1, height)  # (w, dim/2, h)
    return torch.cat([pos_y.permute(1, 0, 2), pos_x.permute(1, 2, 0)], dim=0)  # (dim, h, w)


class RegionBranch(nn.Module):
    """Mask queries, decoder and the dense projectors of one network (online or target).

    Args:
        channels: channels of the feature map it reads.
        config: the FRA settings.
    """

    def __init__(self, channels: int, config: FRAConfig):
        super().__init__()
        c = config
        self.input_projection = nn.Conv2d(channels, c.decoder_dim, 1)
        self.queries = nn.Parameter(torch.randn(c.queries, c.decoder_dim))  # (Q, d), as nn.Embedding starts
        layer = nn.TransformerDecoderLayer(
            c.decoder_dim, c.decoder_heads, dim_feedforward=c.decoder_dim, dropout=c.decoder_dropout, batch_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, c.decoder_layers)
        self.mask_embedding = mlp(c.decoder_dim, c.decoder_dim, c.projector_dim, 3)  # the authors' 3-layer MLP
        self.pixel_projector = mlp(channels, c.dense_hidden, c.projector_dim, 2, batch_norm=True)
        self.region_projector = mlp(channels, c.dense_hidden, c.projector_dim, 2, batch_norm=True)

    def mask_embeddings(self, feature_map: torch.Tensor) -> torch.Tensor:
        """``(B, Q, D)``: each query's embedding after attending to ``feature_map`` ``(B, C, h, w)``."""
        b, _, h, w = feature_map.shape
        memory = self.input_projection(feature_map) + sine_positions(h, w, self.queries.shape[1], feature_map.device)
        memory = memory.flatten(2).transpose(1, 2)  # (B, hw, d)
        return self.mask_embedding(self.decoder(self.queries.expand(b, -1, -1), memory))  # (B, Q, D)


class Encoded(NamedTuple):
    """What one network makes of one view."""

    projection: torch.Tensor  # (B, D): the pooled features, projected
    regions: torch.Tensor  # (B, Q, D): the region features, projected
    scores: torch.Tensor  # (B, Q, hw): cosine similarity of each position with each mask embedding
    embeddings: torch.Tensor  # (B, Q, D): the mask embeddings
    map_size: tuple[int, int]  # (h, w) of the map the regions come from


@register
class FRA(BYOL):
    """BYOL with a facial-region branch (see the module docstring)."""

    name = "fra"
    Config = FRAConfig

    def __init__(self, config: FRAConfig, spec):
        super().__init__(config, spec)
        c = config
        with torch.no_grad():
            probe = torch.zeros(2, spec.in_channels, spec.input_size, spec.input_size)
            side_map = self.encoder.eval().feature_map(probe, c.region_stage)
            self.encoder.train()
        channels, h, w = side_map.shape[1:]
        if min(h, w) < MIN_MAP_SIDE:
            raise ValueError(
                f"FRA's region branch needs a feature map of at least {MIN_MAP_SIDE}x{MIN_MAP_SIDE}; "
                f"{c.backbone} with stem stride {c.stem_stride} and last stride {c.last_stride} gives {h}x{w} at "
                f"{spec.input_size} px: use last_stride=1, region_stage='layer3', or a smaller stem stride"
            )
        self.region = RegionBranch(channels, c)
        self.region_predictor = mlp(c.projector_dim, c.dense_hidden, c.projector_dim, 2, batch_norm=True)
        self.target_region = frozen_copy(self.region)
        self.register_buffer("prototypes", torch.randn(c.queries, c.projector_dim))  # (Q, D) for evaluation

    def momentum_pairs(self):
        return [*super().momentum_pairs(), (self.region, self.target_region)]

    def predictors(self):
        return [*super().predictors(), self.region_predictor]

    def encode(self, x: torch.Tensor, target: bool = False) -> Encoded:
        """One view through the online (or target) encoder, projector and region branch."""
        encoder, projector, region = (
            (self.target_encoder, self.target_projector, self.target_region)
            if target
            else (self.encoder, self.projector, self.region)
        )
        region_map, last_map = encoder.feature_maps(x, (self.config.region_stage, None))
        projection = projector(last_map.mean(dim=(2, 3)))  # (B, D)
        flat = region_map.flatten(2).transpose(1, 2)  # (B, hw, C)
        pixels = F.normalize(region.pixel_projector(flat), dim=-1)  # (B, hw, D)
        embeddings = region.mask_embeddings(region_map)  # (B, Q, D)
        if self.training:
            queries = embeddings.mean(dim=0, keepdim=True).expand_as(embeddings)  # one set of regions per batch
        else:
            queries = self.prototypes[None].expand_as(embeddings)
        scores = F.normalize(queries, dim=-1) @ pixels.transpose(1, 2)  # (B, Q, hw)
        heat = self.heatmaps_from_scores(scores)  # (B, Q, hw), each row sums to 1
        regions = region.region_projector(heat @ flat)  # (B, Q, D)
        return Encoded(projection, regions, scores, embeddings, tuple(region_map.shape[-2:]))

    def heatmaps_from_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """``(B, Q, hw)``: positions assigned to regions by a softmax over queries, then each query's share
        normalised over positions (the authors add 1e-7 so that an unused query still has a heatmap)."""
        assignment = (scores.float() / self.config.scale).softmax(dim=1) + 1e-7
        return (assignment / assignment.sum(dim=-1, keepdim=True)).to(scores.dtype)

    def forward(self, x, y, rows, generator):
        c = self.config
        views = self.views(x, generator)
        pairs = self.directions()
        online = {i: self.encode(views[i]) for i, _ in pairs}
        with torch.no_grad():
            # the target sees the other view of each direction, and the online view too (the relation loss)
            target = {k: self.encode(views[k], target=True) for k in sorted({k for pair in pairs for k in pair})}
            for o in online.values():  # the authors update the prototypes on every online pass
                batch_mean = o.embeddings.detach().float().mean(dim=0)
                self.prototypes.lerp_(batch_mean, 1 - c.prototype_momentum)
        global_loss = region = relation = 0.0
        for i, j in pairs:
            global_loss = global_loss + byol_loss(self.predictor(online[i].projection), target[j].projection)
            predicted = self.region_predictor(online[i].regions)
            region = region + region_loss(predicted, target[j].regions, c.region_decorrelation)
            # the relation loss compares the two networks on the same view: (B * hw, Q) assignments
            relation = relation + 0.5 * relation_loss(
                online[i].scores.transpose(1, 2).flatten(0, 1),
                target[i].scores.transpose(1, 2).flatten(0, 1),
                c.student_temperature,
                c.teacher_temperature,
                c.sinkhorn_iterations,
            )
        loss = (1 - c.region_weight) * global_loss + c.region_weight * region + c.relation_weight * relation
        logs = {"global": global_loss.item(), "region": region.item(), "relation": relation.item()}
        return loss, {**logs, "momentum": float(self.momentum)}

    @torch.no_grad()
    def region_heatmaps(self, x: torch.Tensor, hard: bool = False) -> torch.Tensor:
        """``(B, Q, h, w)`` each query's heatmap on each image (evaluation mode: the prototypes), summing to 1.

        Args:
            hard: instead of the soft heatmaps the regions are pooled with, each query's share of the positions
                it wins (argmax over queries: the partition of the face the relation loss trains), uniform
                over them; a query that wins no position has an all-zero map.
        """
        was_training = self.training
        self.eval()
        encoded = self.encode(x)
        self.train(was_training)
        scores = encoded.scores.float()  # (B, Q, hw)
        if hard:
            won = F.one_hot(scores.argmax(dim=1), scores.shape[1]).transpose(1, 2).float()  # (B, Q, hw)
            heat = won / won.sum(dim=-1, keepdim=True).clamp_min(1)
        else:
            heat = self.heatmaps_from_scores(scores)
        return heat.reshape(len(x), -1, *encoded.map_size)

    @torch.no_grad()
    def region_partition(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, h, w)`` the query that wins each position (argmax of the similarities over queries)."""
        was_training = self.training
        self.eval()
        encoded = self.encode(x)
        self.train(was_training)
        return encoded.scores.argmax(dim=1).reshape(len(x), *encoded.map_size)
