"""Theta distance, similarity terms and loss presets (SPEC 4)."""

import math

import pytest
import torch
import torch.nn.functional as F

from timecycle.losses import (
    LossConfig,
    feature_similarity_loss,
    inlier_count_loss,
    preset,
    theta_grid_distance,
    total_loss,
    weak_inlier_count,
)
from timecycle.tracker import affinity, params_to_theta


def theta(tx=0.0, ty=0.0, angle=0.0, scale=1 / 3):
    return params_to_theta(torch.tensor([[tx, ty, angle]], dtype=torch.float64), scale)


# --- theta distance ---------------------------------------------------------------------------


def test_theta_distance_zero_for_identical_and_symmetric():
    a, b = theta(0.1, -0.2, 0.3), theta(-0.4, 0.5, -0.6)
    assert theta_grid_distance(a, a).item() == 0
    torch.testing.assert_close(theta_grid_distance(a, b), theta_grid_distance(b, a))


def test_theta_distance_of_a_pure_shift_is_its_squared_length():
    # Every grid point moves by (0.3, 0.4): squared distance 0.25 everywhere.
    d = theta_grid_distance(theta(0.3, 0.4, 0.7), theta(0.0, 0.0, 0.7))
    assert d.item() == pytest.approx(0.25)


def test_theta_distance_of_a_rotation_matches_the_grid_mean():
    # Rotating by a moves a point at radius r by 2 r s sin(a / 2); mean r^2 over the grid is
    # 2 * mean(x^2), mean(x^2) over linspace(-1, 1, 20).
    a = 0.5
    mean_x2 = torch.linspace(-1, 1, 20, dtype=torch.float64).pow(2).mean().item()
    expected = (2 * mean_x2) * (2 * math.sin(a / 2) / 3) ** 2
    assert theta_grid_distance(theta(angle=a), theta()).item() == pytest.approx(expected)


def test_theta_distance_grows_with_translation_and_rotation_error():
    shifts = [theta_grid_distance(theta(tx=t), theta()).item() for t in (0.0, 0.05, 0.1, 0.3, 0.6)]
    turns = [theta_grid_distance(theta(angle=a), theta()).item() for a in (0.0, 0.1, 0.5, 1.0, 3.0)]
    assert shifts == sorted(shifts) and len(set(shifts)) == len(shifts)
    assert turns == sorted(turns) and len(set(turns)) == len(turns)


def test_theta_distance_reduction_and_gradient():
    pred = torch.cat([theta(0.1), theta(0.2)]).requires_grad_()
    gt = torch.cat([theta(), theta()])
    per_sample = theta_grid_distance(pred, gt, reduction="none")
    torch.testing.assert_close(per_sample, torch.tensor([0.01, 0.04], dtype=torch.float64))
    theta_grid_distance(pred, gt).backward()
    assert pred.grad[:, :, 2].abs().sum() > 0


# --- similarity -------------------------------------------------------------------------------


def test_feature_similarity_loss_values():
    x = F.normalize(torch.randn(2, 8, 3, 3), dim=1)
    torch.testing.assert_close(feature_similarity_loss(x, x), torch.tensor(-1.0))
    torch.testing.assert_close(feature_similarity_loss(x, -x), torch.tensor(1.0))
    e0, e1 = torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3)
    e0[:, 0], e1[:, 1] = 1, 1
    assert feature_similarity_loss(e0, e1).item() == 0
    assert feature_similarity_loss(x, x, reduction="none").shape == (2,)


def public_style_inlier_count(aff, theta, search, query, align_corners):
    """The public code's construction: warp an identity volume with theta, mask the affinity."""
    (H, W), (h, w) = search, query
    n = aff.shape[0]
    eye = torch.eye(H * W, dtype=aff.dtype).view(1, H * W, H, W).expand(n, -1, -1, -1)
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=align_corners)
    mask = F.grid_sample(eye, grid, align_corners=align_corners).flatten(2)  # (n, H*W, h*w)
    return (mask * aff).sum(dim=(1, 2)) / mask.sum(dim=(1, 2))


@pytest.mark.parametrize("align_corners", [False, True])
def test_inlier_count_equals_the_identity_volume_construction(align_corners):
    torch.manual_seed(0)
    query, search = F.normalize(torch.randn(3, 8, 5, 5), dim=1), F.normalize(torch.randn(3, 8, 9, 9), dim=1)
    aff = affinity(query, search, 4.0)
    params = torch.tensor([[0.1, -0.2, 0.3], [0.5, 0.3, -0.8], [-0.7, 0.6, 1.2]])  # the last two
    thetas = params_to_theta(params, 5 / 9)  # reach partly outside the frame
    count = weak_inlier_count(aff, thetas, (9, 9), (5, 5), align_corners)
    expected = public_style_inlier_count(aff, thetas, (9, 9), (5, 5), align_corners)
    torch.testing.assert_close(count, expected)


def test_inlier_loss_in_range_and_minus_one_when_all_mass_is_in_place():
    torch.manual_seed(0)
    aff = torch.rand(4, 900, 100).softmax(dim=1)
    thetas = params_to_theta(torch.randn(4, 3) * 0.5, 1 / 3)
    loss = inlier_count_loss(aff, thetas, (30, 30), (10, 10), reduction="none")
    assert ((loss >= -1) & (loss <= 0)).all()
    # The centred, unrotated 1/3 theta selects cells 10..19 (align_corners=False): put each
    # query position's whole mass on its cell.
    rows = torch.arange(10, 20).view(10, 1) * 30 + torch.arange(10, 20).view(1, 10)
    one_hot = F.one_hot(rows.flatten(), 900).T.float().unsqueeze(0)  # (1, 900, 100)
    centred = params_to_theta(torch.zeros(1, 3), 1 / 3)
    assert inlier_count_loss(one_hot, centred, (30, 30), (10, 10)).item() == pytest.approx(-1.0)
    # A uniform affinity puts 1 / 900 of the mass on any one position.
    uniform = torch.full((1, 900, 100), 1 / 900)
    assert inlier_count_loss(uniform, centred, (30, 30), (10, 10)).item() == pytest.approx(-1 / 900)


def test_inlier_count_is_zero_when_theta_leaves_the_frame():
    aff = torch.rand(1, 900, 100).softmax(dim=1)
    outside = params_to_theta(torch.tensor([[5.0, 5.0, 0.0]]), 1 / 3)
    count = weak_inlier_count(aff, outside, (30, 30), (10, 10))
    assert count.item() == 0 and torch.isfinite(count).all()


def test_inlier_loss_gradient_reaches_affinity_and_theta():
    aff = torch.rand(2, 144, 49).softmax(dim=1).requires_grad_()
    params = torch.tensor([[0.1, 0.2, 0.3], [-0.2, 0.1, -0.4]])
    thetas = params_to_theta(params, 7 / 12).requires_grad_()
    inlier_count_loss(aff, thetas, (12, 12), (7, 7)).backward()
    assert aff.grad.abs().sum() > 0 and thetas.grad.abs().sum() > 0


# --- presets and total ------------------------------------------------------------------------


def test_presets_have_the_documented_weights():
    paper, code = preset("paper"), preset("code")
    def weights(c):
        return c.similarity, c.weight_similarity, c.weight_long, c.weight_skip

    assert weights(paper) == ("feature", 1, 0.1, 0.1)
    assert (paper.step_reduction, paper.align_corners, paper.translation_factor) == ("sum", False, 1)
    assert weights(code) == ("inlier", 1, 0.02, 0.1)
    assert (code.step_reduction, code.align_corners) == ("mean", True)
    assert code.translation_factor == pytest.approx(227 / 210)
    assert paper.theta_grid == code.theta_grid == 20
    assert preset("code", align_corners=False).align_corners is False
    with pytest.raises(ValueError):
        preset("nope")
    with pytest.raises(ValueError):
        LossConfig(similarity="cosine")


def test_total_loss_combines_the_terms_as_documented():
    terms = {
        "long": torch.tensor([1.0, 2.0, 3.0, 4.0]),
        "skip": torch.tensor([0.5, 0.5, 1.0, 1.0]),
        "sim_feature": torch.tensor([-0.5, -0.5, -0.25, -0.25]),
        "sim_inlier": torch.tensor([-0.2, -0.4, -0.6, -0.8]),
    }
    # paper: sum(sim) + 0.1 (sum(long) + sum(skip)) = -1.5 + 0.1 (10 + 3)
    assert total_loss(terms, preset("paper")).item() == pytest.approx(-1.5 + 1.3)
    # code: 0.02 mean(long) + mean(inlier) + 0.1 mean(skip) = 0.05 - 0.5 + 0.075
    assert total_loss(terms, preset("code")).item() == pytest.approx(0.05 - 0.5 + 0.075)
    for name in ("paper", "code"):
        assert torch.isfinite(total_loss(terms, preset(name)))
