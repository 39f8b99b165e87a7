"""The `timecycle` protocol follows TimeCycle's public test code (SPEC 6): test_davis.py,
models/dataset/davis_test.py, models/videos/model_test.py, preprocess/convert_davis.py.

Each test pins one step where that code differs from a plain propagation, on a small generated
case where the plain way gives another answer (so the test fails if the step is lost).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from reference_propagation import reference_propagate
from timecycle.propagation.propagator import LabelPropagator, per_frame_topk
from timecycle.propagation.protocols import TIMECYCLE
from timecycle.propagation.resize import LabelWarning, downsample_label, label_to_ids, minmax

SMALL = TIMECYCLE.replace(n_context=3)  # the ring wraps within a short video


def _video(t: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Features of a drifting random pattern with noise: (T, C, h, w)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(c, h, w + t, generator=g)
    noise = [0.5 * torch.randn(c, h, w, generator=g) for _ in range(t)]
    return torch.stack([base[:, :, i : i + w] + noise[i] for i in range(t)])


def _label(k: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    """A one-hot id map with blobs, made soft by a bilinear x2 downsampling: (K, h, w)."""
    g = torch.Generator().manual_seed(seed)
    ids = F.interpolate(torch.randint(0, k, (1, 1, h // 3 + 1, w // 3 + 1), generator=g).float(),
                        size=(2 * h, 2 * w), mode="nearest")[0, 0].long()
    onehot = F.one_hot(ids, k).permute(2, 0, 1).float()[None]
    return F.interpolate(onehot, size=(h, w), mode="bilinear", align_corners=False)[0]


def test_output_is_the_stored_normalised_label() -> None:
    # test_davis.py min-max normalises the propagated 40x40 label per channel, stores it, and
    # upsamples and argmaxes that same array; the raw average gives other masks.
    feats, label0 = _video(6, 16, 12, 14), _label(3, 12, 14)
    prop = LabelPropagator(SMALL, feats[0], label0)
    raw = LabelPropagator(SMALL.replace(output_label="prediction"), feats[0], label0)
    differ = 0
    for t in range(1, feats.shape[0]):
        out, pred = prop.step(feats[t]), raw.step(feats[t])
        torch.testing.assert_close(out, minmax(pred, constant="zero"))
        assert torch.equal(out.amin(dim=(1, 2)), torch.zeros(3))
        torch.testing.assert_close(out.amax(dim=(1, 2)), torch.ones(3))
        ids = label_to_ids(out, SMALL, (96, 112), (96, 112))
        differ += int((ids != label_to_ids(pred, SMALL, (96, 112), (96, 112))).sum())
    assert differ > 0  # the case tells the two outputs apart


def test_frame0_is_propagated_onto_itself_first() -> None:
    # davis_test.py puts 8 copies of frame 0 before the video, frame 0 included, and
    # test_davis.py propagates every item after the copies: frame 0 is the first target, and
    # its stored label is the newest previous frame of frame 1 (the oldest copy is dropped).
    feats, label0 = _video(4, 16, 12, 14), _label(3, 12, 14)
    n = SMALL.n_context
    prop = LabelPropagator(SMALL, feats[0], label0)
    f0 = F.normalize(feats[0], dim=0)
    # n + 1 identical context frames average to one frame's weights.
    def rows(x):  # (K, h, w) -> (h*w, K): the propagator's context layout
        return x.flatten(1).T

    self_label = minmax(per_frame_topk(f0, rows(f0)[None], rows(label0)[None], SMALL.topk,
                                       SMALL.temperature), constant="zero")
    assert not torch.allclose(self_label, label0, atol=1e-2)
    newest = 1 + (prop.next_slot - 1) % n
    torch.testing.assert_close(prop.labels[newest], rows(self_label))
    copies = [s for s in range(1, 1 + n) if s != newest]
    assert all(torch.equal(prop.labels[s], rows(label0)) for s in [0, *copies])
    # Frames 1..T-1 as TimeCycle's item indexing gives them (tests/reference_propagation.py),
    # and not as a propagation whose context starts with plain copies of frame 0.
    ref = reference_propagate(SMALL, feats, label0)
    plain = LabelPropagator(SMALL.replace(self_propagate=False), feats[0], label0)
    out1, plain1 = prop.step(feats[1]), plain.step(feats[1])
    torch.testing.assert_close(out1, ref[0], atol=2e-5, rtol=1e-4)
    assert (out1 - plain1).abs().max() > 1e-3
    for t in range(2, feats.shape[0]):
        torch.testing.assert_close(prop.step(feats[t]), ref[t - 1], atol=2e-5, rtol=1e-4)


def test_label_resize_to_the_canvas_is_pil_nearest() -> None:
    # davis_test.py: scipy.misc.imresize(label, (320, 320), 'nearest'), i.e. PIL NEAREST, which
    # samples pixel centres; a floor sampling (cv2 INTER_NEAREST) picks other rows and columns.
    p = TIMECYCLE.replace(label_canvas=32, min_label_pixels=0)
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, 3, (48, 85)))
    pil = Image.fromarray(ids.numpy().astype(np.uint8))
    expected = np.asarray(pil.resize((32, 32), Image.NEAREST))
    label = downsample_label(ids, 3, (32, 32), p)  # features at the canvas size: no blending
    assert set(label.unique().tolist()) == {0.0, 1.0}
    np.testing.assert_array_equal(label.argmax(0).numpy(), expected)
    floor = downsample_label(ids, 3, (32, 32), p.replace(label_nearest="floor"))
    assert (floor.argmax(0).numpy() != expected).any()


def test_labels_of_at_most_11_pixels_are_dropped() -> None:
    # test_davis.py keeps a colour of frame 0 only when its count (from its second pixel) is
    # above 10: at the 320 canvas an object of 11 pixels is dropped, one of 12 kept. The pixels
    # of a dropped object are in no channel, not even the background.
    p = TIMECYCLE.replace(label_canvas=16)
    ids = torch.zeros(16, 16, dtype=torch.long)
    ids.view(-1)[:11] = 1
    ids[10, :12] = 2
    with pytest.warns(LabelWarning, match=r"1 of its 3 labels .* fewer than 12 pixels .* 16x16"):
        label = downsample_label(ids, 3, (16, 16), p)  # said: its masks would be empty, silently
    assert int((ids == 1).sum()) == 11 and int((ids == 2).sum()) == 12
    assert label[1].abs().sum() == 0
    assert torch.equal(label[2], (ids == 2).float())
    assert label[:, ids == 1].abs().sum() == 0
    kept = downsample_label(ids, 3, (16, 16), p.replace(min_label_pixels=0))
    assert torch.equal(kept[1], (ids == 1).float())


def test_a_lost_label_stays_zero_not_nan() -> None:
    # A channel that is constant after propagation (a label no query reads any more) divides by
    # zero in test_davis.py's min-max; the NaN would win every later argmax. Here it is 0.
    x = torch.tensor([[[0.2, 0.6]], [[0.5, 0.5]], [[0.0, 0.0]]])
    out = minmax(x, constant="zero")
    assert torch.equal(out, torch.tensor([[[0.0, 1.0]], [[0.0, 0.0]], [[0.0, 0.0]]]))
    feats, label0 = _video(4, 16, 12, 14), _label(3, 12, 14)
    label0[2] = 0  # e.g. an object dropped for its size
    prop = LabelPropagator(SMALL, feats[0], label0)
    for t in range(1, feats.shape[0]):
        soft = prop.step(feats[t])
        assert torch.isfinite(soft).all() and soft[2].abs().sum() == 0
        assert label_to_ids(soft, SMALL, (96, 112), (96, 112)).ne(2).all()


def test_presets_that_follow_the_script() -> None:
    # JHMDB: the public script of TimeCycle's lineage (UVC test_jhmdb.py) keeps the copies,
    # the self-propagation and the normalised label it reads the joints from. VIP has no public
    # TimeCycle script and keeps the plain ends; CRW and DINO are untouched.
    from timecycle.propagation.presets import JHMDB_TIMECYCLE, VIP_TIMECYCLE
    from timecycle.propagation.protocols import CRW, DINO

    assert JHMDB_TIMECYCLE.self_propagate and JHMDB_TIMECYCLE.output_label == "stored"
    assert not VIP_TIMECYCLE.self_propagate and VIP_TIMECYCLE.output_label == "prediction"
    assert VIP_TIMECYCLE.min_label_pixels == 0 and VIP_TIMECYCLE.label_nearest == "floor"
    for p in (CRW, DINO):
        assert not p.self_propagate and p.output_label == "prediction" and p.min_label_pixels == 0
