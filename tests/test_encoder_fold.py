"""BatchNorm folded into the convolutions for inference (encoder/fold.py, used by FrameEncoder)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from timecycle.encoder import build_encoder
from timecycle.encoder.fold import fold_batchnorm
from timecycle.propagation.protocols import CRW
from timecycle.propagation.video import FrameEncoder


def _with_statistics(net: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters (a trained network's, not the
    identity map of a network as built), so that a wrong fold shows."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return net


@pytest.mark.parametrize("arch,head,padding", [("resnet18", False, "zeros"),
                                               ("resnet18", True, "reflect"),
                                               ("resnet50", False, "zeros")])
def test_folded_encoder_computes_the_same_features(arch, head, padding):
    net = _with_statistics(build_encoder(arch, head=head))
    net.set_padding_mode(padding)
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    folded = fold_batchnorm(net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert all(m.padding_mode == padding for m in folded.modules()
               if isinstance(m, nn.Conv2d) and sum(m.padding) > 0)
    # The given network is untouched: still training, same parameters and statistics.
    assert net.training and any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        want = net.eval()(x)
        got = folded(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_synchronised_batchnorm_folds_too():
    # A `train --sync-bn` network evaluated during training: SyncBatchNorm is, at test time,
    # the same affine map of its running statistics.
    net = nn.SyncBatchNorm.convert_sync_batchnorm(_with_statistics(build_encoder("resnet18")))
    folded = fold_batchnorm(net)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in folded.modules())
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        want = net.eval()(x)
        torch.testing.assert_close(folded(x), want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_batch_statistics_are_not_folded():
    """A BatchNorm without running statistics normalises with the batch's own: not a fixed
    affine map, so it stays."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    folded = fold_batchnorm(net)
    assert isinstance(folded[1], nn.BatchNorm2d)


def test_frame_encoder_leaves_the_callers_encoder_as_it_was():
    """Evaluation during training hands FrameEncoder the network being trained."""
    net = _with_statistics(build_encoder("resnet18")).train()
    fe = FrameEncoder(net, CRW, torch.device("cpu"))
    frames = np.random.default_rng(0).integers(0, 256, (1, 48, 64, 3), dtype=np.uint8)
    feats, _ = fe(frames)
    assert net.training
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fe.encoder.modules())
    net.eval()  # the same frames through the unfolded network
    ref = FrameEncoder.__new__(FrameEncoder)
    ref.__dict__.update(fe.__dict__, encoder=net)
    want, _ = ref(frames)
    torch.testing.assert_close(feats, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
