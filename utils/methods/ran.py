"""RAN: Region Attention Network (Wang, Peng, Yang, Meng and Qiao, "Region Attention Networks for Pose and
Occlusion Robust Facial Expression Recognition", IEEE TIP 2020; the authors' code:
github.com/kaiwang960112/Challenge-condition-FER-dataset, ``FERplus_dir/``). Written anew from the paper;
the code was read for its facts.

The aligned face and ``n`` crops of it go through one shared backbone; RAN weighs their features twice:

- **self-attention**: ``mu_i = sigmoid(q0 . F_i)`` per region; the weighted mean ``F_m``;
- **relation attention**: ``nu_i = sigmoid(q1 . [F_i : F_m])``; the face is
  ``P = sum_i mu_i nu_i [F_i : F_m] / sum_i mu_i nu_i``, and the classifier reads ``P``
  (:func:`utils.losses.ran_attention`);
- **region-biased loss**: ``max(0, delta - (max over crops mu_i - mu_0))``, ``mu_0`` the full face's weight,
  so that some crop matters more than the whole face; total loss = classification + ``lambda`` x it
  (:func:`utils.losses.region_biased_loss`; the authors: delta 0.1, lambda 1).

Crops (boxes relative to the face, the same for every image):

- ``fixed``: the four corners and the centre, each 0.75 of the side. The paper's fixed crops are three
  (top-left, top-right, centre-bottom, 0.75 of the side); the authors' FERPlus code feeds 5 crops and the
  face. Corners and centre cover brows and eyes (top), each cheek and mouth corner (bottom) and the nose;
- ``landmarks``: boxes around the left eye and brow, the right eye and brow, the nose and the mouth, at the
  mean position of those landmark groups over the training faces. The faces are aligned on the eyes, so a
  box at the mean position covers its part on most faces; boxes per image would have to follow every
  augmentation of the image.

Cost: every crop is one more backbone pass. Here a crop is resized to ``crop_size`` (36 px: the size a
0.75 crop of a 48-px face already has, so the fixed crops are not resampled) while the face stays at 48 px,
and the stride-2 stem of the suite's CPU runs is kept: five crops cost ``5 x (36/48)^2 = 2.8`` faces, 3.8x a
plain classifier's compute per image (the authors feed all six at 224 px: 6x).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torchvision.ops import roi_align

from ..losses import ran_attention, region_biased_loss
from ..regions import LANDMARK_GROUPS
from .base import register
from .supervised import Supervised, SupervisedConfig

CROP_LAYOUTS = ("fixed", "landmarks")
FIXED_CROPS = {  # (x0, y0, x1, y1) relative to the face
    "top-left": (0.0, 0.0, 0.75, 0.75),
    "top-right": (0.25, 0.0, 1.0, 0.75),
    "bottom-left": (0.0, 0.25, 0.75, 1.0),
    "bottom-right": (0.25, 0.25, 1.0, 1.0),
    "centre": (0.125, 0.125, 0.875, 0.875),
}
LANDMARK_CROPS = {  # landmark indices (iBUG 68) whose mean position centres each box
    "left eye": [*range(17, 22), *range(36, 42)],
    "right eye": [*range(22, 27), *range(42, 48)],
    "nose": list(LANDMARK_GROUPS["nose"]),
    "mouth": list(LANDMARK_GROUPS["mouth"]),
}
LANDMARK_CROP_SIDE = 0.5  # share of the face side a landmark box spans (24 px at 48)


@dataclass
class RANConfig(SupervisedConfig):
    """RAN's settings besides a classifier's.

    Attributes:
        crops: ``fixed`` (corners and centre) or ``landmarks`` (eyes, nose, mouth at their mean positions).
        crop_size: side the crops are resized to before the backbone (None: the face's size).
        margin: the region-biased loss's margin delta (authors: 0.1).
        rb_weight: its weight lambda in the total loss (authors: 1).
    """

    crops: str = "fixed"
    crop_size: int | None = 36
    margin: float = 0.1
    rb_weight: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if self.crops not in CROP_LAYOUTS:
            raise ValueError(f"crops must be one of {CROP_LAYOUTS}, not {self.crops!r}")
        if self.resize_from is not None:  # its crops are resized to crop_size whatever the face's side
            raise ValueError("RAN has no progressive resizing (resize_from): its crops keep crop_size")


def landmark_boxes(landmarks: np.ndarray, size: int, side: float = LANDMARK_CROP_SIDE) -> np.ndarray:
    """``(len(LANDMARK_CROPS), 4)`` relative boxes of side ``side`` centred at each group's mean position over
    the faces that have landmarks, kept inside the face."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    found = np.isfinite(landmarks).all(axis=(1, 2))
    if not found.any():
        raise ValueError("landmark crops need landmarks, and no face has them")
    mean = landmarks[found].mean(axis=0) / size  # (68, 2) relative
    boxes = []
    for points in LANDMARK_CROPS.values():
        cx, cy = mean[points].mean(axis=0)
        x0 = float(np.clip(cx - side / 2, 0.0, 1.0 - side))
        y0 = float(np.clip(cy - side / 2, 0.0, 1.0 - side))
        boxes.append((x0, y0, x0 + side, y0 + side))
    return np.asarray(boxes, dtype=np.float32)


def region_crops(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """``(B * n, C, size, size)``: each image's ``n`` boxes (relative ``(x0, y0, x1, y1)``, ``(n, 4)``), cut and
    resized with bilinear ``roi_align``, image by image (rows ``b * n ... b * n + n - 1`` are image ``b``)."""
    b, h, w = x.shape[0], x.shape[2], x.shape[3]  # shape[0], not len(): an exported graph keeps the batch free
    n = boxes.shape[0]
    scale = torch.stack([torch.full((), w), torch.full((), h), torch.full((), w), torch.full((), h)]).to(x.device)
    absolute = (boxes.float() * scale.float()).repeat(b, 1)  # (B * n, 4) pixel coordinates
    image = torch.arange(b, device=x.device).float().repeat_interleave(n)[:, None]  # (B * n, 1)
    rois = torch.cat([image, absolute], dim=1)  # (B * n, 5)
    crops = roi_align(x.float(), rois, output_size=size, spatial_scale=1.0, sampling_ratio=1, aligned=True)
    return crops.to(x.dtype)


class RANNet(nn.Module):
    """Images to logits through crops, a shared backbone and RAN's two attentions (a classifier)."""

    def __init__(self, encoder, num_classes: int, boxes: torch.Tensor, crop_size: int, dropout: float = 0.0):
        super().__init__()
        d = encoder.feature_dim
        self.encoder = encoder
        self.register_buffer("boxes", boxes.float())  # (n, 4) relative crop boxes
        self.crop_size = crop_size
        self.self_attention = nn.Linear(d, 1)  # q0
        self.relation_attention = nn.Linear(2 * d, 1)  # q1
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * d, num_classes))

    def region_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1 + n, D)``: the full face's pooled features, then each crop's."""
        face = self.encoder.features(x)  # (B, D)
        crops = self.encoder.features(region_crops(x, self.boxes, self.crop_size))  # (B * n, D)
        return torch.cat([face[:, None], crops.reshape(-1, self.boxes.shape[0], face.shape[1])], dim=1)

    def attend(self, x: torch.Tensor):
        """``(logits, mu, nu, shares)``: class scores ``(B, C)``, the two attention weights and each region's share
        of the pooled face, ``(B, 1 + n)`` each."""
        pooled, mu, nu, shares = ran_attention(self.region_features(x), self.self_attention, self.relation_attention)
        return self.head(pooled), mu, nu, shares

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attend(x)[0]


@register
class RAN(Supervised):
    """The face and its crops through one backbone, weighed by self- and relation attention (see above)."""

    name = "ran"
    Config = RANConfig

    def build(self, config: RANConfig, spec) -> None:  # the rest is the plain classifier's (labels, weights)
        encoder = config.encoder(spec, 0, pretrained=config.pretrained)
        boxes = torch.tensor(list(FIXED_CROPS.values()) if config.crops == "fixed" else [[0.0, 0.0, 1.0, 1.0]] * 4)
        self.net = RANNet(encoder, spec.num_classes, boxes, config.crop_size or spec.input_size, config.dropout)

    @property
    def encoder(self):
        return self.net.encoder

    @property
    def crop_names(self) -> list[str]:
        return ["face", *(FIXED_CROPS if self.config.crops == "fixed" else LANDMARK_CROPS)]

    def prepare(self, train, prepared, train_config) -> dict:
        facts = super().prepare(train, prepared, train_config)
        if self.config.crops == "landmarks":
            boxes = landmark_boxes(prepared.landmarks[train.index], prepared.images.shape[1])
            self.net.boxes.copy_(torch.from_numpy(boxes))
        return {**facts, "crops": dict(zip(self.crop_names[1:], self.net.boxes.tolist()))}

    def forward(self, x, y, rows, generator):
        x, partner, lam = self.inputs(x, generator)
        logits, mu, _, _ = self.net.attend(x)
        classification = self.mixed_loss(logits, y, rows, generator, partner, lam)
        biased = region_biased_loss(mu.float(), self.config.margin)
        loss = classification + self.config.rb_weight * biased
        logs = {"acc": (logits.argmax(dim=1) == y).float().mean().item(), "region_biased": biased.item()}
        return loss, {**logs, "mu_face": mu[:, 0].mean().item(), "mu_crops": mu[:, 1:].mean().item()}

    def classifier(self):
        return self.net
