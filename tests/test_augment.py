"""Batch augmentation: one warp shared by all channels, photometric changes on the image channels only; mixup and
cutmix."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from utils.core.augment import AugmentConfig, BatchAugment, mix_batch

# Every change switched off: the warp is the identity and the photometric step does nothing.
IDENTITY = AugmentConfig(
    flip=0.0,
    rotate=0.0,
    translate=0.0,
    scale=(1.0, 1.0),
    ratio=(1.0, 1.0),
    jitter=0.0,
    blur=0.0,
    erase=0.0,
)


def only(**changes) -> AugmentConfig:
    """The identity configuration with ``changes`` switched on."""
    return dataclasses.replace(IDENTITY, **changes)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def smooth_images(n: int, size: int = 32, seed: int = 0, lo: float = 0.2, hi: float = 0.8) -> torch.Tensor:
    """``(n, 1, size, size)`` smooth random images with values in ``[lo, hi]``."""
    coarse = torch.rand(n, 1, 6, 6, generator=gen(seed))
    fine = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return lo + (hi - lo) * fine


def test_geometry_is_shared_by_image_and_heatmap_channels():
    image = smooth_images(16)
    ones = torch.ones_like(image)
    x = torch.cat([image, image, ones], dim=1)  # channel 1: the same image, but treated as a heatmap
    config = AugmentConfig(rotate=20.0, translate=0.15, scale=(0.6, 1.0), jitter=0.0)
    out = BatchAugment(config, image_channels=1).geometric(x, gen(0))

    assert out.shape == x.shape
    assert not torch.allclose(out[:, 0], x[:, 0], atol=1e-3)  # the images were moved
    inside = out[:, 2] > 1 - 1e-5  # the warped constant map is 1 exactly where the frame was sampled
    assert inside.float().mean() > 0.3
    assert (~inside).any()  # and some outputs did come from outside the frame
    torch.testing.assert_close(out[:, 0][inside], out[:, 1][inside], atol=1e-5, rtol=0)


def test_identity_configuration_returns_the_input():
    image = smooth_images(4)
    heat = torch.rand(4, 1, 32, 32, generator=gen(1))
    x = torch.cat([image, heat], dim=1)
    augment = BatchAugment(IDENTITY, image_channels=1)
    torch.testing.assert_close(augment.geometric(x, gen(0)), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(augment(x, gen(0)), x, atol=1e-5, rtol=0)


def test_certain_flip_mirrors_every_channel_exactly():
    x = torch.rand(3, 2, 20, 20, generator=gen(2))  # odd content, so any misalignment shows
    out = BatchAugment(only(flip=1.0), image_channels=1)(x, gen(0))
    torch.testing.assert_close(out, torch.flip(x, dims=[-1]), atol=1e-5, rtol=0)


def test_photometric_changes_leave_the_heatmap_untouched():
    image = smooth_images(8)
    heat = torch.rand(8, 1, 32, 32, generator=gen(3))
    x = torch.cat([image, heat], dim=1)
    config = only(jitter=1.0, brightness=0.4, contrast=0.4, blur=1.0, erase=1.0)
    augment = BatchAugment(config, image_channels=1)

    out = augment.photometric(x, gen(0))
    assert not torch.allclose(out[:, 0], x[:, 0], atol=1e-3)
    assert torch.equal(out[:, 1], x[:, 1])  # bit-identical

    out = augment(x, gen(0))  # through the (identity) warp as well
    assert not torch.allclose(out[:, 0], x[:, 0], atol=1e-3)
    torch.testing.assert_close(out[:, 1], x[:, 1], atol=1e-5, rtol=0)


def test_rgb_images_are_jittered_and_a_fourth_channel_is_not():
    x = torch.rand(4, 4, 16, 16, generator=gen(4))
    out = BatchAugment(only(jitter=1.0, brightness=0.4, contrast=0.4), image_channels=3).photometric(x, gen(0))
    for c in range(3):
        assert not torch.allclose(out[:, c], x[:, c], atol=1e-3)
    assert torch.equal(out[:, 3], x[:, 3])


def test_outside_the_frame_heatmap_is_zero_and_image_repeats_its_border():
    image = smooth_images(16, lo=0.2, hi=0.8)
    x = torch.cat([image, torch.ones_like(image)], dim=1)
    out = BatchAugment(only(translate=0.4), image_channels=1).geometric(x, gen(5))
    heat, shifted = out[:, 1], out[:, 0]

    corners = torch.stack([heat[:, 0, 0], heat[:, 0, -1], heat[:, -1, 0], heat[:, -1, -1]], dim=1)
    moved_out = (corners == 0).any(dim=1)
    assert moved_out.float().mean() > 0.5  # most images lost a corner to the shift
    outside = heat == 0
    assert outside.any()
    # the image is not zero-padded: it repeats its border pixels, so it stays within the input's range
    assert shifted[outside].min() >= 0.2 - 1e-5
    assert shifted[outside].max() <= 0.8 + 1e-5


def test_a_shifted_constant_image_stays_constant():
    """Border repetition: no dark band enters the image, whereas the heatmap gets zeros."""
    x = torch.full((8, 2, 24, 24), 0.5)
    out = BatchAugment(only(translate=0.4), image_channels=1).geometric(x, gen(6))
    torch.testing.assert_close(out[:, 0], x[:, 0], atol=1e-6, rtol=0)
    assert (out[:, 1] == 0).any()


def test_shift_is_at_most_translate_times_the_side():
    size, translate = 48, 0.25  # at most 12 px
    ones = torch.ones(32, 1, size, size)
    out = BatchAugment(only(translate=translate), image_channels=0).geometric(ones, gen(14))[:, 0]
    empty_columns = (out < 1e-6).all(dim=1).sum(dim=1)  # columns the shift emptied, per image
    empty_rows = (out < 1e-6).all(dim=2).sum(dim=1)
    limit = translate * size
    assert int(empty_columns.max()) <= limit and int(empty_rows.max()) <= limit
    assert int(empty_columns.max()) >= limit / 2  # and the shifts do reach well into the range


def test_random_resized_crop_without_shift_never_leaves_the_frame():
    ones = torch.ones(32, 1, 24, 24)
    config = only(scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3))
    out = BatchAugment(config, image_channels=0).geometric(ones, gen(15))  # all heatmap: zero outside
    torch.testing.assert_close(out[..., 1:-1, 1:-1], ones[..., 1:-1, 1:-1], atol=1e-5, rtol=0)
    # a crop reaching the frame's edge samples up to half a pixel beyond the outermost pixel centres,
    # where the zero padding blends in: the outermost pixels may fade, by at most a half
    assert out.min() >= 0.5 - 1e-5


def test_same_seed_same_augmentation_and_different_seeds_differ():
    x = torch.cat([smooth_images(6), torch.rand(6, 1, 32, 32, generator=gen(7))], dim=1)
    config = AugmentConfig(rotate=15.0, blur=0.5, erase=0.5)
    augment = BatchAugment(config, image_channels=1)
    a = augment(x, gen(11))
    b = augment(x, gen(11))
    c = augment(x, gen(12))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c, atol=1e-3)


def test_output_stays_in_the_unit_interval():
    x = (torch.rand(16, 2, 32, 32, generator=gen(8)) > 0.5).float()  # extreme values: 0s and 1s
    config = AugmentConfig(rotate=30.0, brightness=0.6, contrast=0.6, blur=1.0, erase=0.5)
    out = BatchAugment(config, image_channels=1)(x, gen(0))
    assert out.min() >= 0.0
    assert out.max() <= 1.0


def test_blur_reduces_the_variance_of_noise():
    x = torch.rand(6, 1, 48, 48, generator=gen(9))
    out = BatchAugment(only(blur=1.0, blur_sigma=(1.0, 1.5)), image_channels=1)(x, gen(0))
    before = x.var(dim=(1, 2, 3))
    after = out.var(dim=(1, 2, 3))
    assert torch.all(after < 0.5 * before)
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=0.02, rtol=0)


def test_blur_probability_is_per_image():
    x = torch.rand(32, 1, 16, 16, generator=gen(10))
    out = BatchAugment(only(blur=0.5), image_channels=1)(x, gen(0))
    unchanged = torch.isclose(out, x, atol=1e-6).flatten(1).all(dim=1)
    assert 0 < int(unchanged.sum()) < 32


def test_erasing_sets_a_rectangle_to_the_image_mean():
    x = torch.rand(8, 1, 32, 32, generator=gen(13))
    out = BatchAugment(only(erase=1.0, erase_area=(0.05, 0.2)), image_channels=1)(x, gen(0))
    for i in range(len(x)):
        changed = out[i, 0] != x[i, 0]
        assert changed.any()
        torch.testing.assert_close(out[i, 0][changed], x[i].mean().expand(int(changed.sum())))
        rows = changed.any(dim=1).nonzero().flatten()
        cols = changed.any(dim=0).nonzero().flatten()
        box = torch.zeros_like(changed)
        box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
        assert torch.equal(changed, box)  # one solid rectangle
        assert changed.float().mean() <= 0.35  # about the requested share of the area


def test_sampling_grid_equals_affine_grid():
    from utils.core.augment import sampling_grid

    theta = BatchAugment(AugmentConfig(rotate=30, translate=0.2, scale=(0.5, 1.0), ratio=(0.7, 1.4))).affine_matrices(
        9, "cpu", torch.Generator().manual_seed(3)
    )
    expected = F.affine_grid(theta, [9, 2, 48, 40], align_corners=False)
    torch.testing.assert_close(sampling_grid(theta, 48, 40), expected, atol=1e-6, rtol=0)


def labelled_batch(n=8, channels=2, size=12) -> torch.Tensor:
    """Image i filled with the value i in every channel: each output pixel says which image it came from."""
    return torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, channels, size, size).clone()


def test_mixup_blends_each_image_with_its_partner():
    x = labelled_batch()
    mixed, partner, lam = mix_batch(x, gen(0), "mixup", alpha=1.0)
    assert sorted(partner.tolist()) == list(range(len(x))) and 0.0 < lam < 1.0
    expected = lam * torch.arange(len(x)).float() + (1 - lam) * partner.float()
    torch.testing.assert_close(mixed, expected[:, None, None, None].expand_as(x))


def test_mixing_shares_follow_beta_alpha_alpha():
    for alpha in (0.2, 1.0):
        lams = np.array([mix_batch(labelled_batch(), gen(s), "mixup", alpha)[2] for s in range(600)])
        assert lams.mean() == pytest.approx(0.5, abs=0.04)
        assert lams.var() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.15)  # Beta(a, a)'s variance


def test_cutmix_pastes_one_box_from_the_partner_in_every_channel_and_lam_is_what_is_left():
    x = labelled_batch()
    for seed in range(20):
        mixed, partner, lam = mix_batch(x, gen(seed), "cutmix", alpha=1.0)
        own = mixed == torch.arange(len(x)).float()[:, None, None, None]
        pasted = mixed == partner.float()[:, None, None, None]
        moved = partner != torch.arange(len(x))
        assert (own | pasted).all()  # every pixel is the image's own or its partner's
        box = (~own[moved]).any(dim=0).any(dim=0)  # (H, W): where partners were pasted
        assert torch.equal((~own[moved]).all(dim=1), box.expand(int(moved.sum()), *box.shape))  # same box, all channels
        rows, cols = box.any(dim=1).nonzero().flatten(), box.any(dim=0).nonzero().flatten()
        if len(rows):  # a rectangle
            assert box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
        assert lam == pytest.approx(1 - box.float().mean().item())


def test_mixing_is_reproducible_and_refuses_bad_settings():
    x = labelled_batch()
    a, b = mix_batch(x, gen(3), "cutmix"), mix_batch(x, gen(3), "cutmix")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
    with pytest.raises(ValueError, match="mode"):
        mix_batch(x, gen(0), "mosaic")
    with pytest.raises(ValueError, match="alpha"):
        mix_batch(x, gen(0), "mixup", alpha=0.0)
