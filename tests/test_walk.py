"""The contrastive random walk (SPEC 9): transitions, palindromes, loss, clips, and its training
run in the engine (checkpoints that propagation loads, resume), plus the engine's frozen
BatchNorm and the unrelated-frames probe."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from timecycle.data import build_index
from timecycle.data.walk import WalkConfig, WalkDataset, random_resized_box, walk_boxes
from timecycle.encoder.resnet import ResNetEncoder
from timecycle.encoder.weights import load_weights
from timecycle.engine.checkpoint import load_checkpoint
from timecycle.engine.config import make_config
from timecycle.engine.logging import read_metrics
from timecycle.engine.step import freeze_batchnorm, unrelated
from timecycle.engine.train import train
from timecycle.losses.walk import walk_cross_entropy
from timecycle.tracker import ContrastiveWalk

pytestmark = pytest.mark.usefixtures("one_thread")


class Flat(nn.Module):
    """A stand-in encoder: the patch's pixels are its feature map (3 channels, no stride)."""

    out_channels = 3

    def forward(self, x):
        return x


def walker(tau=0.05, drop=0.0):
    model = ContrastiveWalk(Flat(), embed_dim=3, temperature=tau, edge_dropout=drop)
    with torch.no_grad():
        model.walk_head.weight.copy_(torch.eye(3))
        model.walk_head.bias.zero_()
    return model


def test_transitions_are_row_stochastic_both_ways():
    torch.manual_seed(0)
    nodes = torch.nn.functional.normalize(torch.randn(2, 4, 9, 16), dim=-1)
    model = walker(drop=0.1).train()
    forward, backward = model.transitions(nodes)
    assert len(forward) == len(backward) == 3
    for a in forward + backward:
        assert a.shape == (2, 9, 9)
        assert torch.allclose(a.sum(-1), torch.ones(2, 9), atol=1e-5)
    walks = model.walks(forward, backward)
    assert len(walks) == 2  # palindromes of length 2 and 3 for T = 4 (model.py)
    for w in walks:
        assert torch.allclose(w.sum(-1), torch.ones(2, 9), atol=1e-5)


def test_identical_distinct_nodes_and_a_small_temperature_give_a_near_zero_loss():
    # Every frame shows the same 3 patches of distinct colours: each node's walk returns home.
    colours = torch.eye(3)[:, :, None, None].expand(3, 3, 8, 8) - 0.3
    patches = colours[None, None].expand(2, 5, 3, 3, 8, 8).contiguous()
    out = walker(tau=0.01).eval()(patches)
    assert out["xent"].shape == (3,) and out["xent"].max() < 1e-3
    assert torch.all(out["acc"] == 1)
    # Unrelated, shuffled frames: the walk no longer returns with certainty.
    shuffled = patches.clone()
    shuffled[:, 1] = patches[:, 1, [1, 2, 0]]
    mixed = walker(tau=1.0).eval()(shuffled)
    assert mixed["xent"].min() > 0.5


def test_edge_dropout_at_rate_zero_changes_nothing_and_is_off_in_eval():
    torch.manual_seed(0)
    nodes = torch.nn.functional.normalize(torch.randn(2, 4, 9, 16), dim=-1)
    plain = walker(drop=0.0).train().transitions(nodes)[0]
    again = walker(drop=0.0).train().transitions(nodes)[0]
    evald = walker(drop=0.5).eval().transitions(nodes)[0]
    for a, b, c in zip(plain, again, evald):
        assert torch.equal(a, b) and torch.allclose(a, c)
    dropped = walker(drop=0.5).train().transitions(nodes)[0]
    assert any(not torch.allclose(a, d) for a, d in zip(plain, dropped))
    assert any((d == 0).any() for d in dropped)  # a dropped edge gets no mass


def test_walk_cross_entropy_targets_the_start_node():
    walk = torch.tensor([[[0.9, 0.1], [0.8, 0.2]]])
    xent, acc = walk_cross_entropy(walk)
    assert xent.item() == pytest.approx(-(np.log(0.9) + np.log(0.2)) / 2, rel=1e-5)
    assert acc.item() == 0.5


def test_random_resized_box_stays_inside_and_in_range():
    rng = np.random.default_rng(0)
    for _ in range(200):
        x, y, w, h = random_resized_box(rng, 200, 120, (0.8, 0.95), (0.7, 1.3))
        assert 0 <= x and 0 <= y and x + w <= 200 and y + h <= 120
        assert 0.78 * 200 * 120 <= w * h <= 0.97 * 200 * 120


def test_walk_boxes_grid_and_independent_crops():
    cfg = WalkConfig(clip_len=3, img_size=128, patch=32, stride=16)
    boxes = walk_boxes(cfg, 170, 128, np.random.default_rng(0))
    assert cfg.grid == 7 and boxes.shape == (3 * 49, 5)
    assert torch.equal(boxes[:, 0], torch.arange(3).repeat_interleave(49).float())
    b = boxes.view(3, 7, 7, 5)
    # Raster order: x grows along a row, y down the rows; frames get different crops.
    assert torch.all(b[:, :, 1:, 1] > b[:, :, :-1, 1]) and torch.all(b[:, 1:, :, 2] > b[:, :-1, :, 2])
    assert not torch.allclose(b[0, :, :, 1:], b[1, :, :, 1:])
    assert boxes[:, 1].min() >= 0 and boxes[:, 3].max() <= 170 and boxes[:, 4].max() <= 128


def test_walk_dataset_sample_shape_and_determinism(data):
    cfg = WalkConfig(clip_len=4, fps=None, short_side=64, img_size=64, patch=16, stride=8)
    ds = WalkDataset(build_index(data), cfg, seed=3)
    a, b = ds[5], ds[5]
    assert a["patches"].shape == (4, 49, 3, 16, 16)
    assert torch.equal(a["patches"], b["patches"])
    assert not torch.equal(a["patches"], ds[6]["patches"])


def test_unrelated_batch_takes_each_frame_from_another_clip():
    frames = torch.arange(6 * 5).view(6, 5, 1).float()  # value = 5 * clip + frame
    mixed = unrelated({"frames": frames})["frames"][..., 0]
    for b in range(6):
        clips = (mixed[b] // 5).long().tolist()
        assert clips[-1] == b  # the target (and its patch) stay
        assert len(set(clips)) == 5 and mixed[b, 2] % 5 == 2  # same time slot, other clips
    walk = unrelated({"patches": frames[:, :4]})["patches"][..., 0]
    assert all(len(set((walk[b] // 5).long().tolist())) == 4 for b in range(6))


def test_frozen_batchnorm_keeps_the_statistics_and_the_test_time_network(data, tmp_path):
    run = train(make_config("small", data=[str(data)], out=str(tmp_path / "run"), short_side=64,
                            crop=64, patch=56, batch_size=2, steps=2, workers=0, fps=None,
                            progress=False, tensorboard=False, batchnorm="frozen",
                            loss="code", query="crop"))
    state = load_checkpoint(run / "last.pt")["model"]
    means = [v for k, v in state.items() if k.endswith("running_mean")]
    vars_ = [v for k, v in state.items() if k.endswith("running_var")]
    assert means and all(torch.all(m == 0) for m in means)
    assert all(torch.all(v == 1) for v in vars_)
    model = ContrastiveWalk.build("resnet18").train()
    freeze_batchnorm(model)
    assert not any(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_crw_run_logs_the_probe_and_its_checkpoint_propagates(data, tmp_path):
    cfg = make_config("crw-small", data=[str(data)], out=str(tmp_path / "crw"), short_side=64,
                      crop=64, patch=16, walk_stride=8, batch_size=4, steps=3, workers=0,
                      fps=None, log_every=1, probe_every=2, progress=False, tensorboard=False)
    run = train(cfg)
    records = read_metrics(run)
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        assert 0 < r["walk_xent"] < 10 and 0 <= r["walk_acc"] <= 1
    # The probe every 2nd step and at the last one, not on every log line.
    assert [r["step"] for r in records if "probe_real" in r] == [2, 3]
    for r in records[1:]:
        assert r["probe_real"] > 0 and r["probe_unrelated"] > 0 and r["probe_s"] > 0
        assert not {"long", "skip", "sim_feature", "sim_inlier"} & set(r)  # TimeCycle's terms
    assert "probe_s" not in records[0]
    encoder = ResNetEncoder("resnet18")
    info = load_weights(encoder, run / "last.pt")
    assert info.format == "native" and info.padding_mode == "reflect"
    assert encoder.padding_mode == "reflect"
    assert set(info.ignored) == {"walk_head.weight", "walk_head.bias"}
    # Resuming continues the same run.
    cfg.steps = 4
    train(cfg, resume=True)
    assert load_checkpoint(run / "last.pt")["step"] == 4


def test_layer4_head_is_the_trunks_own_layer4_at_stride_one_and_trains_the_encoder():
    from timecycle.encoder.blocks import ResNetTrunk

    model = ContrastiveWalk.build("resnet18", seed=3, layer4=True).train()
    torch.manual_seed(3)
    trunk_layer4 = ResNetTrunk("resnet18").layer4.state_dict()
    assert all(torch.equal(v, trunk_layer4[k]) for k, v in model.layer4.state_dict().items())
    convs = [m for m in model.layer4.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.stride == (1, 1) for c in convs)  # videowalk resnet.py modify
    assert all(c.padding_mode == "reflect" for c in convs if sum(c.padding) > 0)
    assert model.walk_head.in_features == 512
    # The same seed builds the same encoder with or without layer4 (the random network as built).
    plain = ContrastiveWalk.build("resnet18", seed=3)
    assert plain.layer4 is None and plain.walk_head.in_features == 256
    assert all(torch.equal(a, b) for a, b in zip(plain.encoder.state_dict().values(),
                                                 model.encoder.state_dict().values()))
    patches = torch.randn(2, 3, 4, 3, 32, 32)
    nodes = model.embed(patches)
    assert nodes.shape == (2, 3, 4, 128)
    assert torch.allclose(nodes.norm(dim=-1), torch.ones(2, 3, 4), atol=1e-5)
    model(patches)["xent"].mean().backward()
    assert model.encoder.layer3[0].conv1.weight.grad.abs().sum() > 0  # through layer4


def test_a_layer4_run_propagates_with_layer3_and_resumes_only_with_layer4(data, tmp_path):
    from timecycle.engine.config import check_resumable
    from timecycle.errors import UserError

    cfg = make_config("crw-small", data=[str(data)], out=str(tmp_path / "crw4"), short_side=64,
                      crop=64, patch=16, walk_stride=8, batch_size=2, steps=1, workers=0,
                      fps=None, probe_every=0, progress=False, tensorboard=False,
                      walk_layer4=True)
    run = train(cfg)
    state = load_checkpoint(run / "last.pt")["model"]
    assert any(k.startswith("layer4.") for k in state)
    encoder = ResNetEncoder("resnet18")
    info = load_weights(encoder, run / "last.pt")
    assert {k for k in info.ignored if not k.startswith("layer4.")} == {"walk_head.weight",
                                                                       "walk_head.bias"}
    assert all(torch.equal(v, state["encoder." + k]) for k, v in encoder.state_dict().items())
    with pytest.raises(UserError, match="has no walk"):
        make_config("small", walk_layer4=True)
    with pytest.raises(UserError, match="walk_layer4 True -> False"):
        check_resumable(cfg, dataclasses.replace(cfg, walk_layer4=False))


def test_evaluation_during_training_logs_keeps_best_and_resumes(data, synthetic_davis, tmp_path):
    from timecycle.datasets.davis import DavisRoot

    names = DavisRoot(synthetic_davis).sequence_names() if hasattr(DavisRoot, "sequence_names") \
        else sorted(p.name for p in (synthetic_davis / "JPEGImages" / "480p").iterdir())
    cfg = make_config("small", data=[str(data)], out=str(tmp_path / "run"), short_side=64,
                      crop=64, patch=56, batch_size=2, steps=3, workers=0, fps=None,
                      log_every=2, progress=False, tensorboard=False, eval_davis=str(synthetic_davis),
                      eval_sequences=names[:2], eval_every=2, eval_frames=4, eval_size=64)
    run = train(cfg)
    records = read_metrics(run)
    evals = [r for r in records if "eval_jf" in r]
    assert [r["step"] for r in evals] == [2, 3]  # every 2 steps and at the end
    for r in evals:
        assert 0 <= r["eval_jf"] <= 1 and "first 4 frames" in r["eval_label"]
        assert r["eval_s"] > 0
    best = max(r["eval_jf"] for r in evals)
    assert evals[-1]["eval_best_jf"] == best
    saved = load_checkpoint(run / "best.pt")
    assert saved["best_eval_jf"] == best
    assert saved["step"] == [r["step"] for r in evals if r["eval_jf"] == best][0]
    cfg.steps = 4
    train(cfg, resume=True)
    again = [r for r in read_metrics(run) if "eval_jf" in r]
    assert [r["step"] for r in again] == [2, 3, 4]
    assert again[-1]["eval_best_jf"] == max(r["eval_jf"] for r in again)
    assert not list(run.glob("timecycle-eval-*"))
