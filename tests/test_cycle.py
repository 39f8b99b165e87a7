"""The TimeCycle model: encoding, cycle structure, loss terms, gradients (SPEC 2-4)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from timecycle.encoder import ResNetEncoder
from timecycle.losses import preset, total_loss
from timecycle.losses.theta import theta_grid_distance
from timecycle.tracker import (
    PUBLIC_TRANSLATION_FACTOR,
    TimeCycle,
    cut_patch,
    params_to_theta,
    scale_translation,
)

TERMS = ("long", "skip", "sim_feature", "sim_inlier")


class CellEncoder(nn.Module):
    """A tiny linear stride-8 encoder: each 8 x 8 cell's 192 values, mixed by a 1x1 convolution.

    Cells do not overlap, so a cell-aligned crop of its features is exactly the features of the
    cropped image; and cells are high-dimensional, so random frames give distinct features.
    """

    def __init__(self, channels=32):
        super().__init__()
        self.conv = nn.Conv2d(3 * 64, channels, 1, bias=False)
        self.calls = []

    def forward(self, x):
        self.calls.append(x.shape[0])
        return self.conv(F.pixel_unshuffle(x, 8))


def clip(batch=1, past=4, frame=128, patch=56, theta=(0.1875, -0.0625, 0.0), seed=0):
    """Random frames, the target's patch cut at theta.

    For the defaults (16 x 16 cells, 7 x 7 patch cells) theta is cell-aligned: the patch's
    cells are cells 6..12 (x) and 4..10 (y) of the frame, shifted by 1.5 and -0.5 cells
    from the centre (cell centres sit at half-integer offsets for an odd patch).
    """
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(batch, past + 1, 3, frame, frame, generator=g)
    theta_gt = params_to_theta(torch.tensor([theta]), patch / frame).expand(batch, 2, 3)
    return frames, cut_patch(frames[:, -1], theta_gt, patch), theta_gt


class Oracle(nn.Module):
    """A localizer that always answers theta_gt (one theta for the whole batch)."""

    def __init__(self, theta):
        super().__init__()
        self.theta = theta

    def forward(self, affinity):
        return self.theta[:1].expand(affinity.shape[0], 2, 3)


def test_forward_keys_shapes_and_one_encoder_call_for_all_frames():
    torch.manual_seed(0)
    model = TimeCycle(CellEncoder(), frame_size=128, patch_size=56)
    frames, patch, theta_gt = clip(batch=2, past=3)
    out = model(frames, patch, theta_gt)
    assert set(out) == {*TERMS, "theta_long", "theta_skip", "theta_direct"}
    for key in TERMS:
        assert out[key].shape == (3,) and torch.isfinite(out[key]).all(), key
    for key in ("theta_long", "theta_skip", "theta_direct"):
        assert out[key].shape == (2, 3, 2, 3) and not out[key].requires_grad, key
    assert ((out["sim_inlier"] >= -1) & (out["sim_inlier"] <= 0)).all()
    # Frames of all clips in one call (BatchNorm pooled over the clip), the patches in another.
    assert model.encoder.calls == [2 * 4, 2]


def test_cycles_visit_the_frames_in_order():
    # Every frame has one constant colour, so a feature map, and a crop inside it, is
    # recognisable: record (query's frame, search frame) of every localisation, frame t-i as i.
    torch.manual_seed(0)
    past = 4
    colours = torch.randn(past + 1, 3)
    frames = colours.view(1, past + 1, 3, 1, 1).expand(1, past + 1, 3, 112, 112).contiguous()
    theta_gt = params_to_theta(torch.zeros(1, 3), 1 / 2)
    patch = cut_patch(frames[:, -1], theta_gt, 56)
    model = TimeCycle(CellEncoder(), frame_size=112, patch_size=56)
    with torch.no_grad():
        reference = F.normalize(model.encoder(frames[0])[:, :, 0, 0], dim=1)  # (K+1, C)

    def offsets(x, blocks=1):  # frame index j (0 = oldest) -> i = past - j, per stacked query
        h = x.shape[2] // blocks
        centre = x[:, :, h // 2 :: h, x.shape[3] // 2].transpose(1, 2).flatten(0, 1)
        cos, j = (F.normalize(centre, dim=1) @ reference.T).max(dim=1)
        assert (cos > 0.999).all()
        return tuple((past - j).tolist())

    calls = []
    locate, locate_stack = model.locate, model.locate_stack

    def recording(query, search):
        calls.append((offsets(query), offsets(search)))
        return locate(query, search)

    def recording_stack(queries, search):
        calls.append((offsets(queries, queries.shape[2] // 7), offsets(search)))
        return locate_stack(queries, search)

    model.locate, model.locate_stack = recording, recording_stack
    model(frames, patch, theta_gt)
    assert calls == [
        ((0, 0, 0, 0), (1, 2, 3, 4)),  # direct: patch in every past frame
        ((1,), (2,)), ((2,), (3,)), ((3,), (4,)),  # backward chain, shared by all lengths
        ((4,), (3,)),  # forward into I_{t-3}: cycle n = 4
        ((3, 3), (2,)),  # into I_{t-2}: n = 3 joins (in front), n = 4
        ((2, 2, 2), (1,)),  # into I_{t-1}: n = 2, 3, 4
        ((1, 2, 3, 4, 1, 1, 1), (0,)),  # into I_t: the skip cycles, then long n = 2, 3, 4
    ]  # fmt: skip


def sequential_cycles(model, frames, patch, theta_gt):
    """The cycles one localisation at a time, each recomputed from its start as the public code
    does (model_simple.py): theta_skip, theta_long (B, K, 2, 3) and the per-clip distances."""
    feats, patch_raw = model.encode(frames, patch)
    units = F.normalize(feats, dim=2)
    k = frames.shape[1] - 1
    query = F.normalize(patch_raw, dim=1)
    past_raw, past, target = feats[:, :k].flip(1), units[:, :k].flip(1), units[:, k]
    direct = [model.track(query, past[:, i], past_raw[:, i]) for i in range(k)]
    skip = [model.locate(crop, target)[0] for crop in direct]
    long = []
    for n in range(1, k + 1):
        crop = query
        for i in [*range(n), *range(n - 2, -1, -1)]:  # back to I_{t-n}, forward to I_{t-1}
            crop = model.track(crop, past[:, i], past_raw[:, i])
        long.append(model.locate(crop, target)[0])
    return torch.stack(skip, 1), torch.stack(long, 1)


@pytest.mark.parametrize("past", [1, 2, 4])
def test_batched_cycles_equal_the_cycles_run_one_by_one(past):
    # A random localizer, so every step moves somewhere else; float64 to compare tightly.
    torch.manual_seed(0)
    model = TimeCycle(CellEncoder(), frame_size=128, patch_size=56).double()
    frames, patch, theta_gt = (x.double() for x in clip(batch=3, past=past))
    theta_gt = theta_gt.clone()
    theta_gt[1, :, 2] += 0.2  # clips differ in theta_gt
    patch = cut_patch(frames[:, -1], theta_gt, 56)
    out = model(frames, patch, theta_gt)
    skip, long = sequential_cycles(model, frames, patch, theta_gt)
    assert skip.std() > 0.01 and long.std() > 0.01  # the thetas differ
    torch.testing.assert_close(out["theta_skip"], skip, rtol=0, atol=1e-10)
    torch.testing.assert_close(out["theta_long"], long, rtol=0, atol=1e-10)
    gt = theta_gt.unsqueeze(1).expand(-1, past, 2, 3).flatten(0, 1)
    for name, theta in (("skip", skip), ("long", long)):
        dist = theta_grid_distance(theta.flatten(0, 1), gt, model.theta_grid, "none")
        torch.testing.assert_close(out[name], dist.view(3, past).mean(0), rtol=0, atol=1e-10)


def test_a_perfect_tracker_on_identical_frames_scores_the_best_losses():
    torch.manual_seed(0)
    frames, patch, theta_gt = clip(batch=2, past=2)
    frames = frames[:, -1:].expand(-1, 3, -1, -1, -1)  # all frames are the target
    # A large affinity scale makes every softmax almost one-hot at the matching cell.
    model = TimeCycle(CellEncoder(), frame_size=128, patch_size=56, affinity_scale=1000.0)
    model.localizer = Oracle(theta_gt)
    out = model(frames, patch, theta_gt)
    torch.testing.assert_close(out["long"], torch.zeros(2))
    torch.testing.assert_close(out["skip"], torch.zeros(2))
    torch.testing.assert_close(out["sim_feature"], torch.full((2,), -1.0))  # crop == patch
    torch.testing.assert_close(out["sim_inlier"], torch.full((2,), -1.0), atol=1e-3, rtol=0)
    torch.testing.assert_close(out["theta_direct"], theta_gt[:, None].expand(2, 2, 2, 3))


def test_crop_query_is_the_targets_features_at_theta_gt_and_skips_the_patch_encoding():
    # With the cell encoder and a cell-aligned theta, the patch's own features equal the
    # target's features cropped at theta_gt, so both query sources give the same terms; the
    # crop query costs one encoder call instead of two.
    torch.manual_seed(0)
    frames, patch, theta_gt = clip(batch=2, past=3)
    by_patch = TimeCycle(CellEncoder(), frame_size=128, patch_size=56)
    by_crop = TimeCycle(CellEncoder(), frame_size=128, patch_size=56, query="crop")
    by_crop.load_state_dict(by_patch.state_dict())
    out_patch, out_crop = by_patch(frames, patch, theta_gt), by_crop(frames, None, theta_gt)
    assert by_crop.encoder.calls == [2 * 4] and by_patch.encoder.calls == [2 * 4, 2]
    for key in TERMS:
        torch.testing.assert_close(out_crop[key], out_patch[key], atol=1e-4, rtol=1e-4)
    # The crop query ignores the patch: another patch changes nothing.
    again = by_crop(frames, torch.zeros_like(patch), theta_gt)
    torch.testing.assert_close(again["long"], out_crop["long"])
    with pytest.raises(ValueError, match="query"):
        TimeCycle(CellEncoder(), frame_size=128, patch_size=56, query="frame")


def test_translation_factor_moves_the_crop_and_the_inlier_mask_together():
    # With the public 227/210 factor, g's theta must have its translation divided by it to
    # crop at theta_gt; both the crop and the inlier mask must then land on the patch's cells.
    torch.manual_seed(0)
    frames, patch, theta_gt = clip(batch=1, past=1)
    frames = frames[:, -1:].expand(-1, 2, -1, -1, -1)
    factor = PUBLIC_TRANSLATION_FACTOR
    model = TimeCycle(
        CellEncoder(),
        frame_size=128,
        patch_size=56,
        affinity_scale=1000.0,
        translation_factor=factor,
    )
    model.localizer = Oracle(scale_translation(theta_gt, 1 / factor))
    out = model(frames, patch, theta_gt)
    torch.testing.assert_close(out["sim_feature"], torch.full((1,), -1.0))
    torch.testing.assert_close(out["sim_inlier"], torch.full((1,), -1.0), atol=1e-3, rtol=0)
    assert out["skip"].item() > 0  # g's own theta differs from theta_gt by the factor


def test_freezing_the_encoder_keeps_gradients_for_the_localizer():
    torch.manual_seed(0)
    model = TimeCycle(CellEncoder(), frame_size=128, patch_size=56)
    frames, patch, theta_gt = clip(past=2)
    model.set_encoder_trainable(False)
    total_loss(model(frames, patch, theta_gt), preset("paper")).backward()
    assert model.encoder.conv.weight.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.localizer.parameters())
    model.set_encoder_trainable(True)
    total_loss(model(frames, patch, theta_gt), preset("paper")).backward()
    assert model.encoder.conv.weight.grad.abs().sum() > 0


def test_sizes_are_checked():
    with pytest.raises(ValueError):
        TimeCycle(CellEncoder(), frame_size=250, patch_size=80)
    model = TimeCycle(CellEncoder(), frame_size=128, patch_size=56)
    frames, patch, theta_gt = clip(frame=240, patch=80)
    with pytest.raises(ValueError, match="expected"):
        model(frames, patch, theta_gt)


@pytest.mark.slow
@pytest.mark.parametrize("name, past", [("paper", 4), ("code", 2)])
def test_resnet18_forward_backward_both_presets(name, past):
    # Reduced resolution: 112 frames and 56 patches give 14 x 14 and 7 x 7 features; fewer
    # past frames for the second preset keep the CPU time down.
    torch.manual_seed(0)
    config = preset(name)
    model = TimeCycle.build("resnet18", config, frame_size=112, patch_size=56)
    assert isinstance(model.encoder, ResNetEncoder) and model.encoder.head is not None
    assert any(key.startswith("encoder.layer3.") for key in model.state_dict())
    assert model.sampler.align_corners == config.align_corners
    frames = torch.randn(2, past + 1, 3, 112, 112)
    theta_gt = params_to_theta(torch.tensor([[0.2, -0.1, 0.4], [-0.3, 0.2, -0.5]]), 0.5)
    patch = cut_patch(frames[:, -1], theta_gt, 56, align_corners=config.align_corners)
    loss = total_loss(model(frames, patch, theta_gt), config)
    assert torch.isfinite(loss)
    loss.backward()
    encoder = model.encoder
    for param in (encoder.stem[0].weight, encoder.head.conv.weight, *model.localizer.parameters()):
        assert param.grad is not None and torch.isfinite(param.grad).all()
        assert param.grad.abs().sum() > 0


@pytest.mark.slow
def test_compiled_cycles_give_the_eager_losses_and_gradients():
    # What `--compile-cycles` runs: torch.compile of the cycles alone (inductor; C++ on the CPU).
    torch.manual_seed(0)
    model = TimeCycle(CellEncoder(), frame_size=128, patch_size=56)
    frames, patch, theta_gt = clip(batch=2, past=4)
    with torch.no_grad():
        feats, patch_raw = model.encode(frames, patch)

    def run(cycles):
        f, p = feats.clone().requires_grad_(), patch_raw.clone().requires_grad_()
        out = cycles(f, p, theta_gt)
        total_loss({k: out[k] for k in TERMS}, preset("paper")).backward()
        grads = [x.grad for x in (f, p)] + [w.grad.clone() for w in model.localizer.parameters()]
        model.zero_grad()
        return out, grads

    eager, eager_grads = run(model.cycles)
    compiled, compiled_grads = run(torch.compile(model.cycles, dynamic=False))
    for key in (*TERMS, "theta_long", "theta_skip"):
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-5, atol=1e-6, msg=key)
    for a, b in zip(compiled_grads, eager_grads):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


def test_thetas_and_cycle_distances_stay_float32_under_bf16_autocast():
    # Under autocast the features are bf16, but the localizer's thetas and the theta distances
    # (the cycle losses) are float32: the same distances as without autocast for those thetas.
    torch.manual_seed(0)
    model = TimeCycle(CellEncoder(), frame_size=128, patch_size=56)
    frames, patch, theta_gt = clip(batch=2, past=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(frames, patch, theta_gt)
        again = theta_grid_distance(out["theta_skip"].flatten(0, 1),
                                    theta_gt.repeat_interleave(3, dim=0), model.theta_grid,
                                    "none")
    for key in ("theta_long", "theta_skip", "theta_direct", "long", "skip"):
        assert out[key].dtype == torch.float32, key
    exact = theta_grid_distance(out["theta_skip"].flatten(0, 1),
                                theta_gt.repeat_interleave(3, dim=0), model.theta_grid, "none")
    assert again.dtype == torch.float32 and torch.equal(again, exact)
    torch.testing.assert_close(out["skip"], exact.view(2, 3).mean(0))
