"""What every method shares: its input description, the encoder settings, the :class:`Method` interface that
:func:`utils.core.engine.fit` trains and :func:`utils.core.runs.run` records, and the registry.

A method is one file in ``utils/methods/``: a config dataclass with only that method's settings and a
:class:`Method` subclass decorated with :func:`register`. The run code finds it by name (the files of this
package are imported on first use), so adding a method edits nothing else.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from utils.core.loader import channel_count
from utils.methods.models import DEFAULT_WIDTH, FERNet, create_model

KINDS = ("classifier", "representation")

_REGISTRY: dict[str, type[Method]] = {}


@dataclass(frozen=True)
class InputSpec:
    """What a method is built for, recorded with the run so that it can be rebuilt from its folder alone.

    Attributes:
        in_channels: input channels (image + heatmap channels).
        image_channels: how many of them are image (augmentation jitters only these).
        classes: class names of the dataset (the classifier's outputs, the probes' labels).
        input_size: image side in pixels.
        train_size: images in the training split (methods with a per-image memory size it by this).
    """

    in_channels: int
    image_channels: int
    classes: tuple[str, ...]
    input_size: int
    train_size: int

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class EncoderConfig:
    """The backbone every method trains, and its input (the fields shared by every method's config).

    Attributes:
        backbone: a name from :data:`utils.methods.models.BACKBONES`.
        channels: input layout (``gray``, ``gray+heatmap``, ...), see :data:`utils.core.loader.CHANNELS`.
        stem_stride: stride of the small-image stem (2: a quarter of the cost of 1, the CPU setting).
        last_stride: stride of a ResNet's last stage (1 doubles its map's side).
        width: channels of a ResNet's first stage, doubled at each stage (torchvision's: 64; 32 costs about a
            third on a CPU).
    """

    backbone: str = "resnet18"
    channels: str = "gray"
    stem_stride: int = 2
    last_stride: int = 2
    width: int = DEFAULT_WIDTH

    def __post_init__(self):
        channel_count(self.channels)  # raises on an unknown layout

    def encoder(self, spec: InputSpec, num_classes: int = 0, **kwargs) -> FERNet:
        """A fresh :class:`~utils.methods.models.FERNet` for ``spec`` (a feature extractor when ``num_classes`` is 0)."""
        return create_model(
            self.backbone,
            num_classes,
            spec.in_channels,
            input_size=spec.input_size,
            stem_stride=self.stem_stride,
            last_stride=self.last_stride,
            width=self.width,
            **kwargs,
        )


class Method(nn.Module):
    """Base class of every method: what :func:`~utils.core.engine.fit` trains and :func:`~utils.core.runs.run` records.

    Class attributes a subclass sets:
        name: the registry name (``"moco_v2"``), also the run record's ``method``.
        Config: its config dataclass (a subclass of :class:`EncoderConfig`).
        kind: ``"classifier"`` (evaluated by its predictions) or ``"representation"`` (by kNN and a linear
            probe on :meth:`embed`).
        trains: False for the floors, which are evaluated as built.
        seeded: False when nothing in the method is random (the raw-pixels floor): its runs ignore the seed.
        train_defaults: the :class:`~utils.core.engine.TrainConfig` values this method starts from.

    Subclasses implement :meth:`forward` (one batch's loss) and :meth:`embed`, and hold their backbone as
    ``self.encoder`` (a :class:`~utils.methods.models.FERNet`), the network kept after training.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = EncoderConfig
    kind: ClassVar[str] = "representation"
    trains: ClassVar[bool] = True
    seeded: ClassVar[bool] = True
    train_defaults: ClassVar[dict[str, Any]] = {}

    encoder: FERNet

    def __init__(self, config, spec: InputSpec):
        super().__init__()
        self.config = config
        self.spec = spec

    # --------------------------------------------------------------------------------------- training

    def prepare(self, train, prepared, train_config) -> dict:
        """Called once before training with the training split (:class:`~utils.core.loader.FaceTensors`), the
        :class:`~utils.data.faces.PreparedFaces` and the :class:`~utils.core.engine.TrainConfig`: set up what depends
        on the data (HNCL's neighbour index, class weights). Returns facts for the run record."""
        return {}

    def check_sizes(self, dataset_size: int, global_batch: int) -> None:
        """Refuse (or warn about) sizes the method cannot train with."""

    def forward(self, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, generator: torch.Generator):
        """Loss of one batch: ``x`` ``(B, C, H, W)`` float in [0, 1], labels ``y`` (unused by self-supervised
        methods), ``rows`` the images' positions in the training split, ``generator`` for the augmentation.

        Returns:
            ``(loss, logs)``: a scalar tensor and a dict of floats averaged over the epoch.
        """
        raise NotImplementedError

    def before_step(self, progress: float) -> None:
        """Called before every training step with the share of the schedule done (0..1)."""

    def after_step(self, progress: float) -> None:
        """Called after every optimizer step with the share of training done (0..1): momentum updates."""

    def on_schedule(self, total_steps: int) -> None:
        """Called with the schedule's length in optimizer steps before training, and again whenever a time
        budget fits it anew (:attr:`~utils.core.engine.TrainConfig.max_minutes`): rates sized to the run's length."""

    def step_cost(self, progress: np.ndarray) -> np.ndarray:
        """The compute of a training step at these shares of the schedule, relative to a full step: 1
        everywhere unless the method changes its work during training (progressive resizing). The engine fits a
        time budget's schedule with it."""
        return np.ones_like(progress, dtype=np.float64)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """The optimizer's parameter groups. Default: no weight decay on biases and normalisation parameters
        (1-d tensors), as is usual for every method here; a method may add its own groups (another lr)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ]

    # ------------------------------------------------------------------------------------- evaluation

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Frozen features ``(B, D)`` for the kNN monitor and the probes: the backbone's pooled features."""
        return self.encoder.features(x)

    def classifier(self) -> nn.Module:
        """The network mapping images to class logits (classifier methods)."""
        raise NotImplementedError(f"{type(self).__name__} is not a classifier")

    def variant(self) -> str:
        """What tells runs of this method apart in tables besides seed and epochs (HNCL: its neighbours)."""
        return ""

    def load_encoder(self, state: dict, source: str = "") -> None:
        """Start ``self.encoder`` from another run's ``backbone.pt`` (fine-tuning); only a head may be missing."""
        missing, unexpected = self.encoder.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("head.") for k in missing):
            raise ValueError(
                f"{source or 'the weights'}: not a backbone of {self.config.backbone} "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
            )

    def encoder_state(self) -> dict:
        """The backbone's weights without a classification head: what ``backbone.pt`` holds."""
        return {k: v for k, v in self.encoder.state_dict().items() if not k.startswith("head.")}


# ------------------------------------------------------------------------------------------ registry


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` known to :func:`get` under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a name")
    if cls.kind not in KINDS:
        raise ValueError(f"{cls.__name__}.kind must be one of {KINDS}, not {cls.kind!r}")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"two methods are called {cls.name!r}: {_REGISTRY[cls.name].__name__} and {cls.__name__}")
    _REGISTRY[cls.name] = cls
    return cls


# ---------------------------------------------------------------------------------- config round trip


def config_from_dict(cls: type, values: dict):
    """Rebuild a (nested) config dataclass from its ``asdict`` / JSON form: nested dataclasses are rebuilt
    and JSON lists become tuples where the field is a tuple. Unknown keys are an error, missing ones default."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _convert(hints.get(name), value)
    return cls(**kwargs)


def _convert(hint, value):
    """``value`` (from JSON) as the type ``hint`` expects: a dataclass from a dict, a tuple from a list."""
    if value is None or hint is None:
        return value
    options = [h for h in typing.get_args(hint) if h is not type(None)] if _is_union(hint) else [hint]
    for option in options:
        if dataclasses.is_dataclass(option) and isinstance(value, dict):
            return config_from_dict(option, value)
        if typing.get_origin(option) is tuple and isinstance(value, list):
            return tuple(value)
    return value


def _is_union(hint) -> bool:
    import types

    return typing.get_origin(hint) in (typing.Union, types.UnionType)
