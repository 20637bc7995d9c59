"""RAN: Region Attention Network (Wang, Peng, Yang, Meng and Qiao, "Region Attention Networks for Pose and
Occlusion Robust Facial Expression Recognition", IEEE TIP 2020; the authors' code:
github.com/kaiwang960112/Challenge-condition-FER-dataset, ``FERplus_dir/``). Written anew from the paper;
the code was read for its facts.

The aligned face (region 0) and ``n`` crops of it are described by one shared backbone; RAN weighs the
regions' features twice (:func:`utils.methods.losses.ran_attention`):

- **self-attention**: a weight ``mu_i`` per region from ``sigmoid(q0 . F_i)``; their weighted mean ``F_m``;
- **relation attention**: ``nu_i`` from ``sigmoid(q1 . [F_i : F_m])``; the face is
  ``P = sum_i mu_i nu_i [F_i : F_m] / sum_i mu_i nu_i``, and the classifier reads ``P``;
- **region-biased loss**: ``max(0, delta - (max over crops mu_i - mu_0))``, ``mu_0`` the full face's weight,
  so that some crop matters more than the whole face; total loss = classification + ``lambda`` x it
  (:func:`utils.methods.losses.region_biased_loss`; the authors: delta 0.1, lambda 1).

The defaults are the authors' FERPlus code (five fixed crops and the face, each a backbone pass at the face's
size, a softmax of the sigmoids, the region-biased loss at full weight from the first step): a GPU recipe.
The CPU recipe (``recipes/``, notebook 06) cuts the paper's three crops from one layer3 map and ramps the loss
in. The weights: the paper divides the sigmoids by their sum; the authors' code takes a softmax over the
regions of the sigmoids (``attention="softmax"``). With the paper's form nothing keeps a region in
the pooled face: on a random backbone the region-biased loss drove the face's share from 0.17 to 0.01 within
100 steps, and the logits to |3-5|, where the sigmoids pass almost no gradient and the attention no longer
moves when a crop is hidden. The softmax bounds the ratio of any two weights by ``e``.

Where the regions come from (``regions_from``):

- ``layer3`` (the CPU recipe; ``layer1``, ``layer2`` work too): the backbone runs once on the face up to that stage;
  each region, the whole face included, is cut from that stage's map with RoIAlign at ``region_size`` cells
  and runs through the remaining stages. The face and the crops are then one population for the batch
  norms, and the convolutions before the stage are not repeated per crop. ResNets only.
- ``image`` (default): the paper's path, one backbone pass per region: the face and every crop resized to
  ``region_size`` pixels (None: the face's side, so crops are upsampled, as the authors' 224-px crops are)
  in one batch. Six regions cost six faces: a GPU recipe.

Crops (boxes relative to the face, the same for every image):

- ``three`` (the CPU recipe): the paper's fixed crops, top-left, top-right and bottom-centre, each 0.75 of the side:
  left eye and brow, right eye and brow, nose and mouth. Four regions with the face;
- ``fixed`` (default): the authors' FERPlus code, the four corners and the centre, each 0.75 of the side: brows and eyes
  (top), each cheek and mouth corner (bottom) and the nose. Six regions with the face;
- ``landmarks``: boxes around the left eye and brow, the right eye and brow, the nose and the mouth, at the
  mean position of those landmark groups over the training faces. The faces are aligned on the eyes, so a
  box at the mean position covers its part on most faces; boxes per image would have to follow every
  augmentation of the image.

Starting weights: the authors start from a ResNet-18 trained for face recognition (MS-Celeb-1M). Here any
finished run's backbone can be the start (``runs.run(..., init=...)``, notebook 06's ``INIT_RUN``), and the
region-biased loss is ramped in over the first ``rb_warmup`` of the schedule, so that it does not act on the
meaningless features of a random start.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torchvision.ops import roi_align

from utils.evaluation.regions import LANDMARK_GROUPS
from utils.methods.losses import RAN_NORMALISATIONS, RANAttention, ran_attention, region_biased_loss

from .base import register
from .supervised import Supervised, SupervisedConfig

CROP_LAYOUTS = ("three", "fixed", "landmarks")
THREE_CROPS = {  # the paper's fixed crops (Sec. III-B), (x0, y0, x1, y1) relative to the face, 0.75 of the side
    "top-left": (0.0, 0.0, 0.75, 0.75),  # left eye and brow
    "top-right": (0.25, 0.0, 1.0, 0.75),  # right eye and brow
    "bottom-centre": (0.125, 0.25, 0.875, 1.0),  # nose and mouth
}
FIXED_CROPS = {  # the authors' FERPlus code: the four corners and the centre, 0.75 of the side
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
FACE_BOX = (0.0, 0.0, 1.0, 1.0)  # region 0, the whole face


REGION_SOURCES = ("image", "layer1", "layer2", "layer3")


@dataclass
class RANConfig(SupervisedConfig):
    """RAN's settings besides a classifier's.

    Attributes:
        crops: ``three`` (the paper's: top-left, top-right, bottom-centre), ``fixed`` (the authors' FERPlus code:
            corners and centre) or ``landmarks`` (eyes, nose, mouth at their mean positions).
        regions_from: ``layer3`` (or ``layer1``, ``layer2``): regions cut from that stage's map of the face and
            run through the later stages; ``image``: one backbone pass per region (the paper).
        region_size: each region's side, in cells of that map (4: a 0.75 crop of a 48-px face's 6x6 layer3 map
            with the stride-2 stem is 4.5 cells), or in pixels with ``image`` (None: the face's side).
        attention: ``softmax`` (the authors' code: a softmax over the regions of the sigmoids) or ``sum`` (the
            paper's equations: the sigmoids divided by their sum), see :func:`utils.methods.losses.ran_attention`.
        margin: the region-biased loss's margin delta (authors: 0.1).
        rb_weight: its weight lambda in the total loss (authors: 1).
        rb_warmup: share of the schedule over which that weight rises linearly from 0 (0: full from the first
            step, as the authors, who start from a face-recognition network).
    """

    crops: str = "fixed"
    regions_from: str = "image"
    region_size: int | None = None
    attention: str = "softmax"
    margin: float = 0.1
    rb_weight: float = 1.0
    rb_warmup: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if self.crops not in CROP_LAYOUTS:
            raise ValueError(f"crops must be one of {CROP_LAYOUTS}, not {self.crops!r}")
        if self.regions_from not in REGION_SOURCES:
            raise ValueError(f"regions_from must be one of {REGION_SOURCES}, not {self.regions_from!r}")
        if self.regions_from != "image" and not self.backbone.startswith("resnet"):
            raise ValueError(f"regions_from={self.regions_from!r} needs a ResNet; with {self.backbone} use 'image'")
        if self.region_size is None and self.regions_from != "image":
            raise ValueError("region_size is a number of cells when regions come from a stage's map")
        if self.attention not in RAN_NORMALISATIONS:
            raise ValueError(f"attention must be one of {RAN_NORMALISATIONS}, not {self.attention!r}")
        if not 0.0 <= self.rb_warmup <= 1.0:
            raise ValueError(f"rb_warmup is a share of the schedule in [0, 1], not {self.rb_warmup!r}")
        if self.resize_from is not None:  # its regions have a fixed size whatever the face's side
            raise ValueError("RAN has no progressive resizing (resize_from): its regions keep region_size")


def fixed_boxes(layout: str) -> dict[str, tuple[float, float, float, float]]:
    """The crops of a layout by name: the fixed boxes, or for ``landmarks`` the whole face until
    :func:`landmark_boxes` places them on the training faces."""
    if layout == "landmarks":
        return dict.fromkeys(LANDMARK_CROPS, FACE_BOX)
    return THREE_CROPS if layout == "three" else FIXED_CROPS


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
    """Images to logits through regions, a shared backbone and RAN's two attentions (a classifier).

    Args:
        encoder: the backbone (:class:`~utils.methods.models.FERNet`).
        num_classes: the classifier's outputs.
        boxes: ``(n, 4)`` relative crop boxes; the whole face is added as region 0.
        regions_from: ``image`` or a ResNet stage (see :class:`RANConfig`).
        region_size: a region's side in pixels (``image``) or cells of the stage's map.
        attention: how the attention weights are normalised (:func:`utils.methods.losses.ran_attention`).
    """

    def __init__(
        self,
        encoder,
        num_classes: int,
        boxes: torch.Tensor,
        regions_from: str,
        region_size: int,
        attention: str = "softmax",
        dropout: float = 0.0,
    ):
        super().__init__()
        d = encoder.feature_dim
        self.encoder = encoder
        self.register_buffer("boxes", boxes.float())  # (n, 4) relative crop boxes
        self.regions_from, self.region_size, self.attention = regions_from, region_size, attention
        self.self_attention = nn.Linear(d, 1)  # q0
        self.relation_attention = nn.Linear(2 * d, 1)  # q1
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * d, num_classes))

    def region_boxes(self) -> torch.Tensor:
        """``(1 + n, 4)``: the whole face, then the crops."""
        return torch.cat([self.boxes.new_tensor([FACE_BOX]), self.boxes])

    def region_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """``(B * (1 + n), C, s, s)``: every region, the face first, as the stage after ``regions_from`` sees it:
        image crops, or crops of the face's map at that stage."""
        if self.regions_from == "image":
            return region_crops(x, self.region_boxes(), self.region_size)
        return region_crops(self.encoder.feature_map(x, self.regions_from), self.region_boxes(), self.region_size)

    def region_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1 + n, D)``: the full face's pooled features, then each crop's."""
        regions = self.region_inputs(x)
        if self.regions_from == "image":
            features = self.encoder.features(regions)
        else:
            features = self.encoder.features_from(regions, self.regions_from)
        return features.reshape(x.shape[0], 1 + self.boxes.shape[0], -1)

    def attend(self, x: torch.Tensor) -> tuple[torch.Tensor, RANAttention]:
        """``(logits, attention)``: class scores ``(B, C)`` and the attention's weights and logits
        (:class:`~utils.methods.losses.RANAttention`, ``(B, 1 + n)`` each)."""
        attention = ran_attention(self.region_features(x), self.self_attention, self.relation_attention, self.attention)
        return self.head(attention.pooled), attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attend(x)[0]


@register
class RAN(Supervised):
    """The face and its crops through one backbone, weighed by self- and relation attention (see above)."""

    name = "ran"
    Config = RANConfig

    def build(self, config: RANConfig, spec) -> None:  # the rest is the plain classifier's (labels, weights)
        encoder = config.encoder(spec, 0, pretrained=config.pretrained)
        boxes = torch.tensor(list(fixed_boxes(config.crops).values()))  # landmark boxes: set by prepare()
        size = config.region_size or spec.input_size
        self.net = RANNet(encoder, spec.num_classes, boxes, config.regions_from, size, config.attention, config.dropout)

    @property
    def encoder(self):
        return self.net.encoder

    @property
    def crop_names(self) -> list[str]:
        return ["face", *fixed_boxes(self.config.crops)]

    def prepare(self, train, prepared, train_config) -> dict:
        facts = super().prepare(train, prepared, train_config)
        if self.config.crops == "landmarks":
            boxes = landmark_boxes(prepared.landmarks[train.index], prepared.images.shape[1])
            self.net.boxes.copy_(torch.from_numpy(boxes))
        return {**facts, "crops": dict(zip(self.crop_names[1:], self.net.boxes.tolist()))}

    def rb_scale(self) -> float:
        """The region-biased loss's weight now: ``rb_weight``, ramped in over the first ``rb_warmup``."""
        c = self.config
        return c.rb_weight * (min(1.0, self.progress / c.rb_warmup) if c.rb_warmup > 0 else 1.0)

    def forward(self, x, y, rows, generator):
        x, partner, lam = self.inputs(x, generator)
        logits, attention = self.net.attend(x)
        classification = self.mixed_loss(logits, y, rows, generator, partner, lam)
        biased = region_biased_loss(attention.mu, self.config.margin)
        loss = classification + self.rb_scale() * biased
        both = torch.cat([attention.self_logits, attention.relation_logits], dim=1).detach()  # (B, 2 (1 + n))
        return loss, {
            "acc": (logits.argmax(dim=1) == y).float().mean().item(),
            "region_biased": biased.item(),
            "face_share": attention.shares[:, 0].mean().item(),  # the whole face's weight in the pooled face
            "attention_logit": both.abs().mean().item(),  # past about 4 a sigmoid passes < 7 % of its gradient
        }

    def classifier(self):
        return self.net
