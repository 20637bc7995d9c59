"""Backbones for 48-px faces: shapes for every backbone and channel count, the first-conv adaptation, offline weights."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from utils.methods.models import (
    BACKBONES,
    PretrainedWeightsUnavailable,
    adapt_first_conv,
    count_parameters,
    create_model,
)

LARGE = ("resnet50", "wide_resnet50_2")  # slow to build: tested with one input channel only

CASES = [(name, c) for name in BACKBONES for c in (1, 2) if not (name in LARGE and c == 2)]


@pytest.mark.parametrize(("name", "in_channels"), CASES)
def test_every_backbone_maps_a_batch_to_logits(name, in_channels):
    torch.manual_seed(0)
    model = create_model(name, 7, in_channels, stem_stride=2).eval()
    with torch.no_grad():
        out = model(torch.rand(2, in_channels, 48, 48))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("stride", "pools", "side"), [(1, 4, 3), (2, 4, 1), (4, 3, 1)])
def test_vgg_keeps_a_map_at_every_stem_stride(stride, pools, side):
    """The small stem drops VGG's last max-pool (48 px: 3x3 left at stride 1); a pool that would shrink the
    map to nothing (stride 4: 12 px, then 6, 3, 1) is skipped, not left to fail inside the forward pass."""
    model = create_model("vgg19_bn", 7, 1, stem_stride=stride).eval()
    features = model.backbone[0]
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in features) == pools
    with torch.no_grad():
        assert features(torch.rand(2, 1, 48, 48)).shape == (2, 512, side, side)
        assert model(torch.rand(2, 1, 48, 48)).shape == (2, 7)


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0"])
def test_without_classes_the_model_returns_features(name):
    model = create_model(name, num_classes=0, in_channels=1, stem_stride=2).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 48, 48))
    assert out.shape == (2, model.feature_dim)
    assert model.feature_dim == {"resnet18": 512, "efficientnet_b0": 1280}[name]


def test_features_feed_the_head():
    torch.manual_seed(0)
    model = create_model("resnet18", 7, 2, stem_stride=2).eval()
    x = torch.rand(2, 2, 48, 48)
    with torch.no_grad():
        features = model.features(x)
        torch.testing.assert_close(model.head(features), model(x))
    assert features.shape == (2, 512)


def test_training_step_runs_on_small_input():
    torch.manual_seed(0)
    model = create_model("resnet18", 7, 1, stem_stride=2, dropout=0.2)
    loss = nn.functional.cross_entropy(model(torch.rand(4, 1, 48, 48)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    first = next(p for p in model.parameters() if p.grad is not None)
    assert torch.isfinite(first.grad).all()


# ---------------------------------------------------------------------------------------- first conv


@pytest.fixture
def rgb_conv():
    torch.manual_seed(1)
    return nn.Conv2d(3, 8, kernel_size=7, stride=2, padding=3, bias=True)


def test_one_channel_conv_sums_the_rgb_filters(rgb_conv):
    grey_conv = adapt_first_conv(rgb_conv, 1)
    assert grey_conv.weight.shape == (8, 1, 7, 7)
    torch.testing.assert_close(grey_conv.weight, rgb_conv.weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(grey_conv.bias, rgb_conv.bias)
    assert grey_conv.stride == rgb_conv.stride

    grey = torch.rand(2, 1, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(grey_conv(grey), rgb_conv(grey.repeat(1, 3, 1, 1)), atol=1e-5, rtol=1e-5)


def test_heatmap_channel_starts_at_zero(rgb_conv):
    conv = adapt_first_conv(rgb_conv, 2)
    assert conv.weight.shape == (8, 2, 7, 7)
    assert torch.all(conv.weight[:, 1] == 0)
    grey, heat = torch.rand(2, 1, 20, 20), torch.rand(2, 1, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(
            conv(torch.cat([grey, heat], dim=1)), rgb_conv(grey.repeat(1, 3, 1, 1)), atol=1e-5, rtol=1e-5
        )


def test_rgb_keeps_its_filters_and_rgb_plus_heatmap_adds_a_zero_channel(rgb_conv):
    same = adapt_first_conv(rgb_conv, 3)
    torch.testing.assert_close(same.weight, rgb_conv.weight)
    four = adapt_first_conv(rgb_conv, 4)
    torch.testing.assert_close(four.weight[:, :3], rgb_conv.weight)
    assert torch.all(four.weight[:, 3] == 0)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(four(torch.cat([x, torch.rand(1, 1, 16, 16)], 1)), rgb_conv(x))


def test_new_stride_keeps_the_filters_and_new_kernel_drops_them(rgb_conv):
    stride1 = adapt_first_conv(rgb_conv, 1, stride=1)
    assert stride1.stride == (1, 1)
    torch.testing.assert_close(stride1.weight, rgb_conv.weight.sum(dim=1, keepdim=True))
    assert stride1(torch.rand(1, 1, 16, 16)).shape[-2:] == (16, 16)  # "same" padding
    small = adapt_first_conv(rgb_conv, 2, kernel=3)
    assert small.weight.shape == (8, 2, 3, 3)


# ------------------------------------------------------------------------------------- pretrained weights


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0"])
def test_offline_pretrained_request_names_the_url_and_the_folder(monkeypatch, tmp_path, name):
    requested = []

    def offline(url, *args, **kwargs):
        requested.append(url)
        raise urllib.error.URLError("no network in tests")

    # torchvision's weights download through this name; patched, no test can reach the network
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "_hub_dir", str(hub))

    url = torchvision.models.get_model_weights(name).DEFAULT.url
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        create_model(name, 7, 1, pretrained=True)
    message = str(info.value)
    assert requested == [url]
    assert url in message
    assert str(hub / "checkpoints") in message
    assert url.rsplit("/", 1)[-1] in message
    assert "pretrained=False" in message


def test_connection_errors_from_the_builder_are_reported_too(monkeypatch, tmp_path):
    def builder(weights=None, progress=True):
        raise ConnectionResetError("connection reset")

    monkeypatch.setattr(torchvision.models, "resnet18", builder)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    with pytest.raises(PretrainedWeightsUnavailable, match="resnet18"):
        create_model("resnet18", pretrained=True)


def test_unknown_backbone_or_stem_raises():
    with pytest.raises(ValueError, match="unknown backbone"):
        create_model("resnet19")
    with pytest.raises(ValueError, match="stem"):
        create_model("resnet18", stem="tiny")


def test_the_offline_message_names_the_home_folder_as_tilde(monkeypatch, tmp_path):
    """Stored notebook outputs show this message: it must not carry the user's home path."""

    def builder(weights=None, progress=True):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torchvision.models, "resnet18", builder)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / ".cache" / "torch" / "hub"))
    monkeypatch.setattr(Path, "home", lambda: tmp_path)
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        create_model("resnet18", pretrained=True)
    assert "~/.cache/torch/hub/checkpoints" in str(info.value) and str(tmp_path) not in str(info.value)


def test_feature_map_and_a_last_stage_without_stride():
    x = torch.zeros(2, 1, 48, 48)
    net = create_model("resnet18", 0, 1, stem_stride=2).eval()
    assert net.feature_map(x).shape == (2, 512, 3, 3)  # 48 / 2 (stem) / 2 / 2 / 2
    assert net.feature_map(x, "layer3").shape == (2, 256, 6, 6)
    pooled = net.feature_map(x).mean(dim=(2, 3))
    torch.testing.assert_close(pooled, net.features(x))
    wide = create_model("resnet18", 0, 1, stem_stride=2, last_stride=1).eval()
    assert wide.feature_map(x).shape == (2, 512, 6, 6)
    assert wide.features(x).shape == (2, 512)
    with pytest.raises(ValueError, match="stage"):
        net.feature_map(x, "layer5")
    with pytest.raises(ValueError, match="ResNets"):
        create_model("vgg19_bn", 0, 1, last_stride=1)


@pytest.mark.parametrize(("name", "blocks"), [("resnet18", 2), ("resnet50", 3)])
def test_a_narrower_resnet_halves_every_stage_and_keeps_its_maps_sizes(name, blocks):
    x = torch.zeros(2, 1, 48, 48)
    full = create_model(name, 7, 1, stem_stride=2).eval()
    half = create_model(name, 7, 1, stem_stride=2, width=32).eval()
    expansion = full.feature_dim // 512
    for stage, channels in zip(("layer1", "layer2", "layer3", "layer4"), (32, 64, 128, 256)):
        wide_map, narrow_map = full.feature_map(x, stage), half.feature_map(x, stage)
        assert narrow_map.shape == (2, channels * expansion, *wide_map.shape[2:])
    assert half.feature_dim == full.feature_dim // 2 and half(x).shape == (2, 7)
    assert len(half.backbone.layer1) == len(full.backbone.layer1) == blocks
    ratio = count_parameters(half) / count_parameters(full)
    assert 0.23 < ratio < 0.27  # convolutions' weights scale with the square of the width


def test_a_narrower_resnet_is_initialised_as_torchvision_initialises_one():
    torch.manual_seed(0)
    net = create_model("resnet18", 7, 1, stem_stride=2, width=32)
    conv = net.backbone.layer3[0].conv1.weight  # 128 x 64 x 3 x 3, He normal over fan-out
    assert abs(conv.std().item() - (2 / (128 * 9)) ** 0.5) < 0.1 * (2 / (128 * 9)) ** 0.5
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(bool((m.weight == 1).all() and (m.bias == 0).all()) for m in bns)


def test_width_is_refused_where_it_cannot_apply():
    with pytest.raises(ValueError, match="ResNets only"):
        create_model("vgg19_bn", 7, 1, width=32)
    with pytest.raises(ValueError, match="ImageNet weights exist for width 64 only"):
        create_model("resnet18", 7, 1, pretrained=True, width=32)  # refused before any download
    with pytest.raises(ValueError, match="at least 1"):
        create_model("resnet18", 7, 1, width=0)
