"""The fast propagation engine against the plain reference, and its invariants (SPEC 6)."""

from __future__ import annotations

import pytest
import torch

from reference_propagation import reference_propagate
from timecycle.propagation import propagator
from timecycle.propagation.propagator import LabelPropagator
from timecycle.propagation.protocols import CRW, DINO, PROTOCOLS, TIMECYCLE
from timecycle.propagation.resize import downsample_label, frame_size, label_to_ids, minmax
from timecycle.propagation.windows import make_geometry


def _video(t: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Features of a drifting random pattern with noise: (T, C, h, w)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(c, h, w + t, generator=g)
    return torch.stack([base[:, :, i : i + w] + 0.3 * torch.randn(c, h, w, generator=g) for i in range(t)])


def _label0() -> torch.Tensor:
    """A soft 3-class label on the 13 x 19 map of the reference comparisons."""
    g = torch.Generator().manual_seed(1)
    return torch.softmax(3 * torch.randn(3, 13, 19, generator=g), 0)


def _small(name: str):
    # Shrink context and radius so that restriction, padding and the context ring all matter
    # on a small map (radius 4 on 13x19 cuts most keys; n_context 3 < T wraps the ring).
    p = PROTOCOLS[name]
    return p.replace(n_context=3) if name == "timecycle" else p.replace(n_context=3, radius=4)


@pytest.mark.parametrize("name", list(PROTOCOLS))
@pytest.mark.parametrize("tile", [3, 8])
@pytest.mark.parametrize("products", ["onednn", "batched"])
def test_fast_equals_reference(name: str, tile: int, products: str, monkeypatch) -> None:
    # "onednn": the CPU's products as oneDNN convolutions; "batched": one bmm per tile row,
    # the CUDA path (and a CPU without oneDNN), run here on the CPU.
    monkeypatch.setattr(propagator, "onednn_products", lambda t: products == "onednn")
    p = _small(name)
    feats = _video(8, 16, 13, 19)
    label0 = _label0()
    ref = reference_propagate(p, feats, label0)
    prop = LabelPropagator(p, feats[0], label0, tile=tile)
    for t in range(1, feats.shape[0]):
        torch.testing.assert_close(prop.step(feats[t]), ref[t - 1], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("case", ["exp_direct", "logsumexp", "dense_joint"])
def test_unrestricted_paths_equal_reference(case: str) -> None:
    # per_frame_topk takes exp() as it is where 1/T + log(positions) keeps the sums inside
    # float32 (TimeCycle's T), else exp(top-k - logsumexp); dense_joint_topk (joint top-k with
    # no window) has no preset of its own.
    import math

    p = {"exp_direct": _small("timecycle"),
         "logsumexp": _small("timecycle").replace(temperature=0.01),
         "dense_joint": CRW.replace(n_context=3, restrict="none")}[case]
    feats = _video(8, 16, 13, 19)
    if case != "dense_joint":
        direct = 1 / p.temperature + math.log(13 * 19) < propagator.EXP_SAFE
        assert direct == (case == "exp_direct")
    label0 = _label0()
    ref = reference_propagate(p, feats, label0)
    prop = LabelPropagator(p, feats[0], label0)
    for t in range(1, feats.shape[0]):
        torch.testing.assert_close(prop.step(feats[t]), ref[t - 1], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["crw", "dino"])
def test_reused_buffers_do_not_leak_into_earlier_labels(name: str) -> None:
    # The CPU step writes its intermediates into buffers kept from frame to frame: every label
    # it returned must still equal the reference after later steps, and the buffers must be the
    # same memory each step (else the reuse is not happening).
    p = _small(name)
    feats = _video(7, 16, 13, 19, seed=5)
    label0 = torch.softmax(3 * torch.randn(3, 13, 19, generator=torch.Generator().manual_seed(6)), 0)
    ref = reference_propagate(p, feats, label0)
    prop = LabelPropagator(p, feats[0], label0, tile=3)
    outs, ptrs = [], set()
    for t in range(1, feats.shape[0]):
        outs.append(prop.step(feats[t]))
        ptrs.add(prop.scratch["allowed"].data_ptr())
    assert len(ptrs) == 1
    for t, out in enumerate(outs):
        torch.testing.assert_close(out, ref[t], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["crw", "dino"])
def test_full_size_protocol_equals_reference(name: str) -> None:
    # The real presets (radius 12, 20 or 7 context frames) on a map larger than the window.
    p = PROTOCOLS[name]
    feats = _video(4, 8, 30, 33, seed=3)
    label0 = torch.softmax(2 * torch.randn(2, 30, 33, generator=torch.Generator().manual_seed(4)), 0)
    ref = reference_propagate(p, feats, label0)
    prop = LabelPropagator(p, feats[0], label0)
    for t in range(1, 4):
        torch.testing.assert_close(prop.step(feats[t]), ref[t - 1], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", list(PROTOCOLS))
def test_identical_frames_return_the_label(name: str) -> None:
    # A one-hot label through identical frames comes back unchanged (STYLE 8): each query's
    # best key is itself, and with distinct random features the top-k weight concentrates there.
    p = PROTOCOLS[name]
    if name == "timecycle":
        p = p.replace(temperature=1 / 200)  # sharpen the per-frame softmax so the top-1 dominates
    feats = _video(1, 64, 12, 14)[0]
    ids = torch.randint(0, 3, (12, 14), generator=torch.Generator().manual_seed(5))
    label0 = torch.nn.functional.one_hot(ids, 3).permute(2, 0, 1).float()
    prop = LabelPropagator(p, feats, label0)
    for _ in range(3):
        out = prop.step(feats.clone())
        assert torch.equal(out.argmax(0), ids)


def test_soft_labels_are_convex_combinations() -> None:
    feats = _video(5, 16, 20, 20)
    label0 = torch.softmax(torch.randn(4, 20, 20), 0)
    for p in (CRW, DINO):
        prop = LabelPropagator(p, feats[0], label0)
        for t in range(1, 5):
            out = prop.step(feats[t])
            torch.testing.assert_close(out.sum(0), torch.ones(20, 20), atol=1e-5, rtol=0)
            assert out.min() >= 0


def test_memory_is_bounded_by_the_context() -> None:
    feats = _video(2, 8, 10, 10)
    label0 = torch.softmax(torch.randn(2, 10, 10), 0)
    prop = LabelPropagator(DINO.replace(n_context=2), feats[0], label0)
    sizes = set()
    for _ in range(6):
        prop.step(feats[1])
        sizes.add((prop.feats.shape, prop.count))
    assert {s[1] for s in sizes} == {1, 2}  # DINO's context grows to n_context, then stays
    assert len({s[0] for s in sizes}) == 1  # the buffers never grow


def test_window_shapes_match_the_public_definitions() -> None:
    disk = make_geometry(40, 40, 12, "disk")
    # CRW MaskedAttention: offsets with sqrt(dy^2 + dx^2) < 12 -> 437 keys.
    d = torch.arange(-12, 13)
    expected = int(((d[:, None] ** 2 + d[None] ** 2) < 144).sum())
    assert disk.allowed.shape[1] == expected == 437
    square = make_geometry(40, 40, 12, "square")
    assert square.allowed.shape[1] == 25 * 25  # DINO: |dy|, |dx| <= 12


def test_frame_sizes_per_protocol() -> None:
    assert frame_size(CRW, 480, 854) == (480, 854)
    assert frame_size(TIMECYCLE, 480, 854) == (320, 320)
    assert frame_size(DINO, 480, 854) == (480, 832)  # 854 floored to a multiple of 64
    assert frame_size(DINO, 854, 480) == (832, 480)


@pytest.mark.parametrize("name", ["crw", "dino"])
def test_frames_are_prepared_as_each_protocols_code_reads_them(name) -> None:
    import cv2
    import numpy as np
    from torch import nn

    from timecycle.encoder.pixel import PixelEncoder
    from timecycle.propagation.video import FrameEncoder

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 48, 90, 3), dtype=np.uint8)
    feats, size = FrameEncoder(nn.Identity(), PROTOCOLS[name], torch.device("cpu"))(frames)
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    if name == "dino":
        # DINO's read_frame: OpenCV's 8-bit bilinear resize (short side 480, long side floored
        # to x64), then / 255 and color_normalize with std 0.228 for red.
        assert size == (480, 896)
        small = np.stack([cv2.resize(f, (896, 480), interpolation=cv2.INTER_LINEAR) for f in frames])
        std = np.array([0.228, 0.224, 0.225], np.float32)
    else:  # CRW: the native frame, torchvision's ImageNet normalisation
        assert size == (48, 90)
        small, std = frames, np.array([0.229, 0.224, 0.225], np.float32)
    expected = ((small.astype(np.float32) / 255 - mean) / std).transpose(0, 3, 1, 2)
    torch.testing.assert_close(feats, torch.from_numpy(expected), rtol=1e-5, atol=1e-5)
    # The pixel baseline inverts the normalisation it is given: ImageNet's, under any protocol.
    pixel = FrameEncoder(PixelEncoder(), DINO, torch.device("cpu"))
    assert pixel.std.flatten().tolist() == pytest.approx([0.229, 0.224, 0.225])


def test_label_downsampling() -> None:
    ids = torch.zeros(16, 16, dtype=torch.long)
    ids[:, 8:] = 1
    crw = downsample_label(ids, 2, (2, 2), CRW)  # bilinear of one-hot: halves stay pure
    assert torch.equal(crw[1], torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    # Without antialiasing (as cv2.resize), output cell 0 samples x = 3.5: half of pixel 3 and
    # half of pixel 4. Marking pixel column 4 gives exactly 0.5; column 7 would not show at all.
    ids[:, 4] = 1
    blend = downsample_label(ids, 2, (2, 2), CRW)
    assert blend[1, 0, 0] == 0.5
    dino = downsample_label(ids, 2, (2, 2), DINO)  # nearest: stays one-hot
    assert set(dino.unique().tolist()) <= {0.0, 1.0}


def test_minmax_keeps_constant_channels() -> None:
    x = torch.tensor([[[0.2, 0.6]], [[0.5, 0.5]]])
    out = minmax(x)
    assert torch.equal(out[0], torch.tensor([[0.0, 1.0]]))
    assert torch.equal(out[1], x[1])


def test_label_to_ids_output_sizes() -> None:
    soft = torch.zeros(2, 4, 6)
    soft[1, :, 3:] = 1
    soft[0, :, :3] = 1
    for p, frame_hw in ((CRW, (32, 48)), (TIMECYCLE, (320, 320)), (DINO, (32, 48))):
        ids = label_to_ids(soft, p, frame_hw, (30, 45))
        assert ids.shape == (30, 45)
        assert ids[:, 0].eq(0).all() and ids[:, -1].eq(1).all()


def test_frames_are_read_in_order_and_a_wrong_size_names_its_file(tmp_path) -> None:
    # read_frames decodes several frames at once in threads; the order and the size check
    # must be those of reading one by one.
    import numpy as np
    from PIL import Image

    from timecycle.errors import UserError
    from timecycle.propagation.video import read_frames

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(9)]
    frames[6] = frames[6][:, :30]
    paths = []
    for i, f in enumerate(frames):
        paths.append(tmp_path / f"{i:05d}.png")
        Image.fromarray(f).save(paths[-1])
    got = []
    with pytest.raises(UserError, match="00006.png") as err:
        for frame in read_frames(paths, threads=3):
            got.append(frame)
    assert "30x24" in str(err.value)
    assert len(got) == 6
    for a, b in zip(got, frames):
        np.testing.assert_array_equal(a, b)
    assert [f.shape for f in read_frames(paths[:6], threads=4)] == [(24, 32, 3)] * 6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("name", ["crw", "dino"])
def test_cuda_graph_step_equals_the_eager_step(name: str) -> None:
    p = _small(name)
    feats = _video(8, 16, 13, 19).cuda()
    label0 = _label0()
    graph = LabelPropagator(p, feats[0], label0.cuda(), tile=3)
    eager = LabelPropagator(p, feats[0], label0.cuda(), tile=3, cuda_graph=False)
    assert graph.graph and not eager.graph
    for t in range(1, feats.shape[0]):
        # The same kernels replayed: equal up to a cuBLAS algorithm chosen differently.
        torch.testing.assert_close(graph.step(feats[t]), eager.step(feats[t]), atol=1e-5, rtol=0)


def test_a_failed_capture_falls_back_to_eager_steps(monkeypatch) -> None:
    # Where a CUDA graph cannot be captured, propagation goes on eagerly (with a warning)
    # and gives the eager labels. The capture is made to fail; the device is the CPU.
    import timecycle.propagation.propagator as propagator

    def fail(fn, device):
        raise RuntimeError("operation not permitted when stream is capturing\ndetails")

    monkeypatch.setattr(propagator, "capture", fail)
    monkeypatch.setattr(propagator, "_capture_error", None)  # restored after the test
    p = _small("crw")
    feats = _video(5, 16, 13, 19)
    label0 = _label0()
    eager = LabelPropagator(p, feats[0], label0, tile=3)
    assert not eager.graph  # never on the CPU
    forced = LabelPropagator(p, feats[0], label0, tile=3)
    forced.graph = True
    with pytest.warns(UserWarning, match="without CUDA graphs from here on: capturing one "
                                         r"failed \(operation not permitted when stream is "
                                         r"capturing\)"):
        first = forced.step(feats[1])
    assert not forced.graph
    # The process captures no more graphs: a failed capture can leave CUDA's allocator behind.
    assert propagator.cuda_graph_error() == "operation not permitted when stream is capturing"
    torch.testing.assert_close(first, eager.step(feats[1]), atol=0, rtol=0)
    for t in range(2, 5):
        torch.testing.assert_close(forced.step(feats[t]), eager.step(feats[t]), atol=0, rtol=0)


@pytest.mark.parametrize("onednn", [True, False])
def test_query_key_dots_equal_the_matrix_product(onednn: bool, monkeypatch) -> None:
    monkeypatch.setattr(propagator, "onednn_products", lambda t: onednn)
    g = torch.Generator().manual_seed(2)
    q = torch.randn(40, 24, generator=g)[::2]  # non-contiguous rows: the function copies them
    k = torch.randn(33, 24, generator=g)
    out = propagator.query_key_dots(q, k)
    assert out.shape == (20, 33) and out.is_contiguous()
    torch.testing.assert_close(out, q @ k.T, atol=1e-5, rtol=1e-5)
