"""Backbones from torchvision, adapted to face crops: any number of input channels, a small-image stem.

>>> net = create_model("resnet18", num_classes=7, in_channels=2)   # grey + heatmap, 48x48
>>> net(torch.zeros(4, 2, 48, 48)).shape
torch.Size([4, 7])

The standard ImageNet stems (a 7x7 stride-2 convolution and a max-pool for ResNets) shrink a 48x48 face
to 12x12 before the first block; the ``small`` stem used below 112 px replaces them by a 3x3 convolution
of stride ``stem_stride`` without max-pool (as CIFAR ResNets and solo-learn do for small images).
``stem_stride=2`` costs a quarter of ``stem_stride=1`` and is what the CPU-budget runs use.
"""

from __future__ import annotations

import contextlib
import io
import sys
import urllib.error
from pathlib import Path

import torch
import torchvision
from torch import nn

DEFAULT_WIDTH = 64  # channels of a torchvision ResNet's first stage
BACKBONES = ("resnet18", "resnet50", "wide_resnet50_2", "vgg19_bn", "efficientnet_b0")
RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")


class PretrainedWeightsUnavailable(RuntimeError):
    """ImageNet weights were asked for but could not be downloaded (offline machine)."""


class FERNet(nn.Module):
    """A backbone that maps images to a feature vector, and a linear head on top.

    Attributes:
        backbone: ``(N, C, H, W) -> (N, feature_dim)``.
        head: dropout + linear layer to ``num_classes`` logits (identity when ``num_classes`` is 0).
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.head = (
            nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes)) if num_classes else nn.Identity()
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, feature_dim)``: the globally pooled features the head reads."""
        return self.backbone(x)

    def feature_map(self, x: torch.Tensor, stage: str | None = None) -> torch.Tensor:
        """Spatial features ``(N, C, h, w)`` before global pooling (region branches, attention maps).

        Args:
            stage: for ResNets, the block whose output is returned (``"layer1"`` ... ``"layer4"``); None, the
                last map (for VGG and EfficientNet only the last is available).
        """
        return self.feature_maps(x, (stage,))[0]

    def feature_maps(self, x: torch.Tensor, stages: tuple[str | None, ...]) -> list[torch.Tensor]:
        """The maps after each of ``stages`` (None: the last), from one forward pass. Averaging the last map
        over its positions gives :meth:`features`."""
        b = self.backbone
        if not isinstance(b, torchvision.models.ResNet):
            if any(s is not None for s in stages):
                raise ValueError(f"only ResNets expose intermediate stages, not {type(b).__name__}")
            return [b[0](x)] * len(stages)  # Sequential(features, pool, flatten)
        wanted = [RESNET_STAGES[-1] if s is None else s for s in stages]
        unknown = set(wanted) - set(RESNET_STAGES)
        if unknown:
            raise ValueError(f"stage must be one of {RESNET_STAGES} or None, not {sorted(unknown)}")
        maps = {}
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        for name in RESNET_STAGES[: max(RESNET_STAGES.index(w) for w in wanted) + 1]:
            x = maps[name] = getattr(b, name)(x)
        return [maps[w] for w in wanted]

    def features_from(self, feature_map: torch.Tensor, stage: str) -> torch.Tensor:
        """``(N, feature_dim)``: the pooled features of a ResNet, run on from the map after ``stage`` (the stages
        after it, then global pooling). ``features_from(feature_map(x, stage), stage)`` is ``features(x)``."""
        b = self.backbone
        if not isinstance(b, torchvision.models.ResNet) or stage not in RESNET_STAGES:
            raise ValueError(f"only a ResNet runs on from a stage ({RESNET_STAGES}), not {type(b).__name__} {stage!r}")
        x = feature_map
        for name in RESNET_STAGES[RESNET_STAGES.index(stage) + 1 :]:
            x = getattr(b, name)(x)
        return torch.flatten(b.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def _imagenet_weights(name: str):
    return torchvision.models.get_model_weights(name).DEFAULT


def _build(name: str, pretrained: bool) -> nn.Module:
    builder = getattr(torchvision.models, name)
    if not pretrained:
        return builder(weights=None)
    weights = _imagenet_weights(name)
    said = io.StringIO()  # torch.hub announces the download with the full cache path: say it without the home
    try:
        with contextlib.redirect_stdout(said):
            net = builder(weights=weights, progress=False)
        sys.stdout.write(_without_home(said.getvalue()))
        return net
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
        folder = _without_home(torch.hub.get_dir() + "/checkpoints")
        file = weights.url.rsplit("/", 1)[-1]
        raise PretrainedWeightsUnavailable(
            f"ImageNet weights for {name} could not be downloaded ({type(e).__name__}: {e}). "
            f"On an offline machine, fetch {weights.url} elsewhere and put it at {folder}/{file}, "
            "or use pretrained=False."
        ) from None


def _set_resnet_width(net: torchvision.models.ResNet, width: int) -> None:
    """Rebuild ``net``'s stem and stages with ``width`` channels in the first stage, doubled at each stage after
    it: the same blocks, depths, strides and initialisation as torchvision's constructor."""
    block = type(net.layer1[0])
    net.inplanes, net.dilation = width, 1
    net.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)  # torchvision's stem; adapt_first_conv adapts it below
    net.bn1 = net._norm_layer(width)
    for i, stage in enumerate(RESNET_STAGES):
        depth = len(getattr(net, stage))
        setattr(net, stage, net._make_layer(block, width * 2**i, depth, stride=1 if i == 0 else 2))
    net.fc = nn.Linear(net.inplanes, net.fc.out_features)
    for m in net.modules():  # torchvision's ResNet initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


def _without_home(text: str) -> str:
    """``text`` with the user's home folder written ``~`` (messages that end up in stored notebooks)."""
    return text.replace(str(Path.home()), "~")


def adapt_first_conv(
    conv: nn.Conv2d, in_channels: int, stride: int | None = None, kernel: int | None = None
) -> nn.Conv2d:
    """A copy of ``conv`` for ``in_channels`` inputs (and optionally another stride or kernel size).

    Pretrained RGB filters become one grey filter (their sum: a grey image repeated three times gives the
    same response), and any further channel (the heatmap) starts at zero, so the adapted network first
    behaves exactly as the pretrained one on the grey image. A new kernel size drops the weights.
    """
    kernel = kernel or conv.kernel_size[0]
    stride = stride or conv.stride[0]
    new = nn.Conv2d(in_channels, conv.out_channels, kernel, stride, kernel // 2, bias=conv.bias is not None)
    if kernel == conv.kernel_size[0]:
        with torch.no_grad():
            w = conv.weight  # (out, 3, k, k)
            if in_channels == w.shape[1]:
                new.weight.copy_(w)
            else:
                new.weight.zero_()
                grey = w.sum(dim=1) if w.shape[1] == 3 else w[:, 0]
                new.weight[:, 0] = grey
                if in_channels >= 3 and w.shape[1] == 3:
                    new.weight[:, :3] = w
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
    return new


def create_model(
    name: str,
    num_classes: int = 7,
    in_channels: int = 1,
    pretrained: bool = False,
    input_size: int = 48,
    stem: str | None = None,
    stem_stride: int = 1,
    dropout: float = 0.0,
    last_stride: int = 2,
    width: int = DEFAULT_WIDTH,
) -> FERNet:
    """A torchvision backbone adapted to FER input, with a linear head.

    Args:
        name: one of :data:`BACKBONES`.
        num_classes: logits of the head; 0 for a feature extractor only.
        in_channels: 1 grey, 2 grey + heatmap, 3 RGB.
        pretrained: start from torchvision's ImageNet weights (downloads them once; raises
            :class:`PretrainedWeightsUnavailable` with instructions when offline).
        input_size: image side; decides the default stem.
        stem: ``"small"`` (3x3 convolution, no max-pool) or ``"imagenet"`` (the standard stem); default
            small below 112 px. With pretrained ResNets the small stem keeps the pretrained 7x7 filters.
        stem_stride: stride of the small stem (1: full resolution; 2: a quarter of the cost).
        dropout: dropout before the head.
        last_stride: stride of a ResNet's last stage (1 keeps its map at the size of the stage before, as
            person re-identification and region methods do: 6x6 instead of 3x3 for 48 px with a stride-2 stem).
        width: channels of a ResNet's first stage, doubled at each stage after it (torchvision's: 64). 32 makes
            ResNet-18 a quarter of the parameters and about a third of the training time on a CPU.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")
    if last_stride != 2 and not name.startswith(("resnet", "wide_resnet")):
        raise ValueError(f"last_stride applies to ResNets only, not {name}")
    if width != DEFAULT_WIDTH and not name.startswith(("resnet", "wide_resnet")):
        raise ValueError(f"width applies to ResNets only, not {name}")
    if width != DEFAULT_WIDTH and pretrained:
        raise ValueError(f"ImageNet weights exist for width {DEFAULT_WIDTH} only, not {width}: use pretrained=False")
    if width < 1:
        raise ValueError(f"width is a number of channels, at least 1, not {width}")
    stem = stem or ("small" if input_size < 112 else "imagenet")
    if stem not in ("small", "imagenet"):
        raise ValueError(f"stem must be 'small' or 'imagenet', not {stem!r}")
    small = stem == "small"
    net = _build(name, pretrained)

    if name.startswith(("resnet", "wide_resnet")):
        if width != DEFAULT_WIDTH:
            _set_resnet_width(net, width)
        kernel = 7 if pretrained else (3 if small else 7)
        net.conv1 = adapt_first_conv(net.conv1, in_channels, stride=stem_stride if small else 2, kernel=kernel)
        if small:
            net.maxpool = nn.Identity()
        if last_stride != 2:
            for module in net.layer4[0].modules():  # the strided 3x3 convolution and the shortcut
                if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
                    module.stride = (last_stride, last_stride)
        dim = net.fc.in_features
        net.fc = nn.Identity()
        backbone = net
    elif name == "vgg19_bn":
        layers = list(net.features)
        layers[0] = adapt_first_conv(layers[0], in_channels)
        if small:  # five max-pools shrink 48 px to 1; dropping the last keeps a 3x3 map
            layers = layers[:-1]
            if stem_stride > 1:
                layers[0] = adapt_first_conv(layers[0], in_channels, stride=stem_stride)
            side = -(-input_size // stem_stride)  # after the stem (3x3, padding 1)
            for i, layer in enumerate(layers):  # a pool that would leave no map at all is skipped
                if isinstance(layer, nn.MaxPool2d):
                    if side < 2:
                        layers[i] = nn.Identity()
                    else:
                        side //= 2
        backbone = nn.Sequential(nn.Sequential(*layers), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        dim = 512
    else:  # efficientnet_b0
        first = net.features[0][0]
        net.features[0][0] = adapt_first_conv(first, in_channels, stride=stem_stride if small else 2)
        backbone = nn.Sequential(net.features, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        dim = net.classifier[1].in_features
    return FERNet(backbone, dim, num_classes, dropout)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
