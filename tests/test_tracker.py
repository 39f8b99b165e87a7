"""The tracker's parts: affinity, localizer g, sampler and cut_patch (SPEC 3)."""

import math

import pytest
import torch
import torch.nn.functional as F

from timecycle.tracker import (
    AFFINITY_SCALE,
    PUBLIC_TRANSLATION_FACTOR,
    Affinity,
    Localizer,
    Sampler,
    affine_sample,
    affinity,
    cut_patch,
    params_to_theta,
    scale_translation,
)
from timecycle.tracker.sampler import affine_sample_stack, bilinear_matmul


def unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=1)


def smooth_image(size, batch=1):
    """(batch, 3, size, size) low-frequency colours (periods of about 130 to 280 pixels)."""
    y, x = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    img = torch.stack(
        [torch.sin(x / 60 + y / 30), torch.cos(y / 45 - x / 30), torch.sin((x + y) / 30)]
    )
    return img.expand(batch, 3, size, size)


def pool_encoder(x):
    """A linear stride-8 "encoder": the mean colour of every 8 x 8 cell."""
    return F.avg_pool2d(x, 8)


def theta_of(tx, ty, angle, scale=1 / 3):
    return params_to_theta(torch.tensor([[tx, ty, angle]]), scale)


# --- affinity ---------------------------------------------------------------------------------


def test_affinity_shape_and_columns_are_distributions():
    aff = affinity(unit(2, 16, 4, 5), unit(2, 16, 6, 7, seed=1))
    assert aff.shape == (2, 42, 20)
    torch.testing.assert_close(aff.sum(dim=1), torch.ones(2, 20))
    assert (aff >= 0).all()


def test_affinity_default_scale_is_sqrt_512():
    assert Affinity().scale == pytest.approx(math.sqrt(512)) == AFFINITY_SCALE
    q, s = unit(1, 8, 2, 2), unit(1, 8, 3, 3, seed=1)
    logits = torch.einsum("cs,cq->sq", s[0].flatten(1), q[0].flatten(1)) * math.sqrt(512)
    torch.testing.assert_close(Affinity()(q, s)[0], logits.softmax(dim=0))


def test_affinity_of_a_cut_patch_peaks_where_it_was_cut():
    frame = unit(2, 64, 12, 12)
    y0, x0, h, w = 3, 5, 4, 6
    patch = frame[:, :, y0 : y0 + h, x0 : x0 + w]
    aff = Affinity()(patch, frame)
    qy, qx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    expected = ((qy + y0) * 12 + (qx + x0)).flatten()  # row-major search positions
    assert torch.equal(aff.argmax(dim=1), expected.expand(2, -1))


# --- localizer --------------------------------------------------------------------------------


def test_params_to_theta_values():
    theta = params_to_theta(torch.tensor([[0.1, -0.2, math.pi / 2], [0.0, 0.0, 0.0]]), scale=1 / 3)
    expected = torch.tensor([[[0, -1 / 3, 0.1], [1 / 3, 0, -0.2]], [[1 / 3, 0, 0], [0, 1 / 3, 0]]])
    torch.testing.assert_close(theta, expected)


def test_localizer_layers_follow_spec():
    g = Localizer()  # paper: 900 -> 128 -> 64 channels on 10 x 10, Linear 1024 -> 3
    assert (g.conv1.in_channels, g.conv1.out_channels, g.conv1.kernel_size) == (900, 128, (4, 4))
    assert (g.conv2.out_channels, g.conv2.kernel_size) == (64, (4, 4))
    assert g.conv1.bias is None and g.conv2.bias is None and g.conv1.padding == (0, 0)
    assert (g.fc.in_features, g.fc.out_features) == (1024, 3)
    assert Localizer((21, 21), (7, 7)).fc.in_features == 64
    with pytest.raises(ValueError):
        Localizer((18, 18), (6, 6))


def test_localizer_shapes_gradients_and_centred_start():
    torch.manual_seed(0)
    g = Localizer((12, 12), (8, 8))
    aff = affinity(unit(3, 16, 8, 8), unit(3, 16, 12, 12, seed=1)).requires_grad_()
    theta = g(aff)
    assert theta.shape == (3, 2, 3)
    # Initial theta: an unrotated 1/3-scale window near the centre.
    torch.testing.assert_close(theta[:, :, :2], torch.eye(2).expand(3, 2, 2) / 3, atol=0.02, rtol=0)
    assert theta[:, :, 2].abs().max() < 0.05
    theta.pow(2).sum().backward()
    assert aff.grad is not None and aff.grad.abs().sum() > 0
    for name, p in g.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_localizer_rejects_mismatched_affinity():
    with pytest.raises(ValueError):
        Localizer((12, 12), (8, 8))(torch.rand(1, 100, 64))


# --- sampler and cut_patch --------------------------------------------------------------------


@pytest.mark.parametrize("align_corners", [False, True])
def test_identity_theta_at_full_size_returns_the_input(align_corners):
    x = torch.randn(2, 3, 9, 9)
    eye = torch.eye(2, 3).expand(2, 2, 3)
    torch.testing.assert_close(affine_sample(x, eye, (9, 9), align_corners=align_corners), x)


def test_centred_third_selects_the_middle_cells_exactly():
    # align_corners=False: theta (0, 0, 0) at scale 1/3 picks cells 10..19 of 30 (SPEC 3 default).
    x = torch.randn(1, 4, 30, 30)
    crop = affine_sample(x, theta_of(0.0, 0.0, 0.0), (10, 10))
    torch.testing.assert_close(crop, x[:, :, 10:20, 10:20])
    shifted = affine_sample(x, theta_of(2 / 15, -4 / 15, 0.0), (10, 10))  # +2 and -4 cells
    torch.testing.assert_close(shifted, x[:, :, 6:16, 12:22])


def test_sampler_normalises_after_sampling_and_passes_gradients():
    feats = torch.rand(2, 8, 12, 12, requires_grad=True)
    theta = theta_of(0.1, -0.1, 0.3).expand(2, 2, 3).clone().requires_grad_()
    crop = Sampler((4, 4))(feats, theta)
    assert crop.shape == (2, 8, 4, 4)
    torch.testing.assert_close(crop.norm(dim=1), torch.ones(2, 4, 4))
    (crop * torch.randn_like(crop)).sum().backward()
    assert feats.grad.abs().sum() > 0 and theta.grad.abs().sum() > 0


def test_translation_factor_scales_only_the_translation():
    theta = theta_of(0.3, -0.2, 0.4)
    scaled = scale_translation(theta, PUBLIC_TRANSLATION_FACTOR)
    torch.testing.assert_close(scaled[:, :, :2], theta[:, :, :2])
    torch.testing.assert_close(scaled[:, :, 2], theta[:, :, 2] * 227 / 210)
    x = torch.randn(1, 3, 30, 30)
    with_factor = Sampler((10, 10), translation_factor=PUBLIC_TRANSLATION_FACTOR)(x, theta)
    torch.testing.assert_close(with_factor, Sampler((10, 10))(x, scaled))


@pytest.mark.parametrize("align_corners", [False, True])
def test_crop_of_pointwise_features_equals_features_of_cut_patch(align_corners):
    # A pointwise linear map commutes with bilinear sampling, so the two orders agree exactly.
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, 1, bias=False)
    frame = torch.randn(2, 3, 48, 48)
    theta = torch.cat([theta_of(0.2, -0.3, 0.5), theta_of(-0.5, 0.4, -0.7)])
    with torch.no_grad():
        via_patch = conv(cut_patch(frame, theta, 16, align_corners=align_corners))
        via_features = affine_sample(conv(frame), theta, (16, 16), align_corners=align_corners)
    torch.testing.assert_close(via_patch, via_features, atol=1e-5, rtol=0)


def test_cell_aligned_crop_of_stride8_features_is_exact():
    # 256 pixels = 32 cells, so a shift of 4 cells (0.25) is exact in binary floating point.
    frame = torch.randn(1, 3, 256, 256)
    theta = theta_of(0.25, -0.125, 0.0, scale=0.25)  # 4 and -2 cells of 8 pixels off centre
    patch = cut_patch(frame, theta, 64)
    torch.testing.assert_close(patch, frame[:, :, 80:144, 128:192])
    crop = affine_sample(pool_encoder(frame), theta, (8, 8))
    torch.testing.assert_close(pool_encoder(patch), crop)


def test_rotated_crop_of_smooth_stride8_features_matches_the_patch():
    frame = smooth_image(240)
    theta = torch.cat([theta_of(0.2, -0.3, 0.5), theta_of(0.5, 0.4, -0.7), theta_of(-0.6, 0.1, 0.3)])
    frame = frame.expand(3, -1, -1, -1)
    features = pool_encoder(frame)
    errors = {}
    for align_corners in (False, True):
        via_patch = pool_encoder(cut_patch(frame, theta, 80, align_corners=align_corners))
        via_features = affine_sample(features, theta, (10, 10), align_corners=align_corners)
        errors[align_corners] = (via_patch - via_features).abs().max().item()
    assert errors[False] < 0.03  # bilinear vs 8 x 8 cell means of a rotated window
    assert errors[False] < errors[True] / 5  # why align_corners=False is the default


@pytest.mark.parametrize("align_corners", [False, True])
def test_bilinear_matmul_equals_grid_sample_with_its_gradients(align_corners):
    # Points inside, on whole cells (where grid_sample's gradient is one-sided), on the border
    # and outside the map (zero padding), in float64.
    torch.manual_seed(0)
    source = torch.randn(2, 5, 6, 7, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last
    )
    grid = torch.rand(2, 4, 3, 2, dtype=torch.float64) * 2.6 - 1.3
    n = torch.tensor([7.0, 6.0], dtype=torch.float64)  # (W, H)
    cells = torch.tensor([2.0, 3.0], dtype=torch.float64)
    grid[:, 0, 0] = cells / (n - 1) * 2 - 1 if align_corners else (2 * cells + 1) / n - 1
    grid[:, 0, 1] = 1.6  # more than a cell beyond the last one either way
    source.requires_grad_(), grid.requires_grad_()
    weight = torch.randn(2, 5, 4, 3, dtype=torch.float64)
    outs = [
        F.grid_sample(source, grid, align_corners=align_corners),
        bilinear_matmul(source, grid, align_corners),
    ]
    grads = [torch.autograd.grad((o * weight).sum(), (source, grid)) for o in outs]
    assert outs[0].abs().min() < 1e-12 < outs[0].abs().max()  # some points read only padding
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-12)
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_stacked_crops_equal_separate_crops():
    torch.manual_seed(0)
    source = torch.randn(2, 4, 9, 9)
    theta = params_to_theta(torch.randn(2 * 3, 3) * 0.3, 1 / 3).view(2, 3, 2, 3)
    stacked = affine_sample_stack(source, theta, (3, 3))
    for j in range(3):
        grid = F.affine_grid(theta[:, j], [2, 4, 3, 3], align_corners=False)
        torch.testing.assert_close(stacked[:, :, 3 * j : 3 * j + 3],
                                   F.grid_sample(source, grid, align_corners=False))
