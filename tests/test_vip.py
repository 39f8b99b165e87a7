"""VIP: the generated layout, part propagation with the no-learning baselines, CLI and errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from timecycle.datasets.io import read_mask, write_mask
from timecycle.datasets.vip import N_CLASSES, VipRoot, write_vip_root
from timecycle.errors import UserError
from timecycle.propagation.presets import PROTOCOLS_BY_BENCHMARK, VIP_CRW
from helpers import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def vip_root(tmp_path_factory) -> Path:
    """Two generated videos, 8 frames, annotated every 3rd frame (read-only for the tests)."""
    root = tmp_path_factory.mktemp("vip")
    write_vip_root(root, 2, seed=0, n_frames=8, height=64, width=96, every=3)
    return root


def _propagate(capsys, root: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return run_cli(capsys, "propagate", "vip", "--root", str(root), "--out", str(out), "--device", "cpu",
                   "--quiet", *extra)


def _miou(out: Path) -> float:
    rows = list(csv.reader(open(out / "miou.csv")))
    assert rows[-1][0] == "mean"
    return float(rows[-1][1])


def test_generated_layout(vip_root):
    root = VipRoot(vip_root)
    names = root.video_names()
    assert names == ["videos000", "videos001"]
    video = root.video(names[1])
    assert len(video.frames) == 8 and video.frames[0].name == "000000000000.jpg"
    assert [i for i, _ in video.annotated()] == [0, 3, 6]
    ids = video.first_label()
    classes = set(np.unique(ids).tolist())
    assert 0 in classes and len(classes) == 1 + 3  # background and 3 parts (2 + 1 % 3)
    assert classes - {0} != {1, 2, 3} and max(classes) < N_CLASSES  # random part ids, not 1..n
    assert Image.open(video.annotation_path(video.frames[0])).mode == "P"


def test_presets():
    assert VIP_CRW.size == 560 and VIP_CRW.frame_resize == "square" and VIP_CRW.n_context == 4
    assert VIP_CRW.topk == 10 and VIP_CRW.radius == 12 and VIP_CRW.temperature == 0.05
    jhmdb = PROTOCOLS_BY_BENCHMARK["jhmdb"]
    assert jhmdb["crw"].size == 320 and jhmdb["crw"].n_context == 7 and jhmdb["crw"].restrict == "disk"
    assert jhmdb["timecycle"].n_context == 7 and jhmdb["timecycle"].topk == 5
    assert PROTOCOLS_BY_BENCHMARK["davis"]["crw"].frame_resize == "native"  # DAVIS unchanged


def _check_predictions(root: VipRoot, out: Path) -> None:
    for name in root.video_names():
        video = root.video(name)
        first = video.first_label()
        preds = sorted((out / name).iterdir())
        assert [p.stem for p in preds] == [f.stem for f in video.frames]
        assert Image.open(preds[0]).mode == "P"
        assert np.array_equal(read_mask(preds[0]), first)  # frame 0 is its annotation
        for p in preds[1:]:
            ids = read_mask(p)
            assert ids.shape == first.shape
            assert set(np.unique(ids).tolist()) <= set(np.unique(first).tolist())  # frame-0 classes only
    assert not list(out.glob(".partial-*"))


@pytest.mark.parametrize("preset", ["crw", "timecycle"])
def test_pixel_propagates_parts_better_than_identity(vip_root, tmp_path, preset):
    from timecycle.encoder import build_encoder
    from timecycle.metrics.vip import evaluate_vip
    from timecycle.propagation.video import FrameEncoder
    from timecycle.propagation.vip import propagate_vip

    root = VipRoot(vip_root)
    names = root.video_names()
    # The presets' rules at 192 x 192 instead of 560 x 560, to keep the test fast on a CPU.
    protocol = PROTOCOLS_BY_BENCHMARK["vip"][preset].replace(size=192)
    if protocol.label_canvas:
        protocol = protocol.replace(label_canvas=192)
    scores = {}
    for enc in ("identity", "pixel"):
        encoder = None if enc == "identity" else FrameEncoder(build_encoder(enc), protocol, torch.device("cpu"))
        out = tmp_path / enc
        propagate_vip(root, names, out, encoder, protocol, {"encoder": enc}, progress=False)
        scores[enc] = evaluate_vip(root, out, names).summary["mIoU"]
        _check_predictions(root, out)
    # The parts move several pixels per frame: copying frame 0 falls behind, colour follows.
    assert scores["pixel"] > scores["identity"] + 0.1, scores
    assert scores["pixel"] > 0.7, scores


@pytest.mark.slow  # 560 x 560: about 2 s alone, 10 s on shared cores
def test_cli_pixel_at_the_preset_size(vip_root, tmp_path, capsys):
    out = tmp_path / "pixel"
    code, stdout, err = _propagate(capsys, vip_root, out, "--encoder", "pixel", "--evaluate")
    assert code == 0, err
    assert "mIoU" in stdout
    _check_predictions(VipRoot(vip_root), out)
    record = json.loads((out / "miou.json").read_text())
    assert record["frames_scored"] == 6 and record["provenance"]["propagation"]["encoder"] == "pixel"
    assert record["provenance"]["propagation"]["protocol"]["size"] == 560
    assert record["mIoU"] == pytest.approx(_miou(out), abs=5e-7)
    assert record["mIoU"] > 0.7


def test_evaluate_rescores_after_a_change(vip_root, tmp_path, capsys):
    out = tmp_path / "id"
    assert _propagate(capsys, vip_root, out, "--encoder", "identity", "--evaluate")[0] == 0
    before = _miou(out)
    # Damage an unannotated frame: nothing changes. Damage an annotated one: the score drops.
    p1 = out / "videos000" / "000000000004.png"
    write_mask(p1, np.zeros_like(read_mask(p1)))
    assert run_cli(capsys, "evaluate", "vip", "--root", str(vip_root), "--results", str(out))[0] == 0
    assert _miou(out) == before
    p5 = out / "videos000" / "000000000006.png"
    write_mask(p5, np.zeros_like(read_mask(p5)))
    assert run_cli(capsys, "evaluate", "vip", "--root", str(vip_root), "--results", str(out))[0] == 0
    assert _miou(out) < before
    assert _propagate(capsys, vip_root, out, "--encoder", "identity", "--videos", "videos001")[0] == 0
    assert not (out / "miou.csv").exists()  # a new propagation drops the old evaluation
    code, stdout, err = run_cli(capsys, "evaluate", "vip", "--results", str(out))  # as propagated
    assert code == 0 and "(1 videos" in stdout and "--videos videos001" in err, err


def test_errors(vip_root, tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(vip_root, root)
    out = tmp_path / "o"
    assert_one_line_error(*_propagate(capsys, root, out, "--encoder", "identity", "--videos", "videos000,nope,nix")[::2],
                    "2 of 3", "nope", "nix")
    first = root / "Annotations" / "Category_ids" / "videos000" / "000000000000.png"
    Image.open(first).convert("RGB").save(first)
    assert_one_line_error(*_propagate(capsys, root, out, "--encoder", "pixel")[::2], "000000000000.png", "mode RGB")
    write_mask(first, np.full((64, 96), 30, np.uint8))
    assert_one_line_error(*_propagate(capsys, root, out, "--encoder", "pixel")[::2], "class ids 30")
    first.unlink()
    assert_one_line_error(*_propagate(capsys, root, out, "--encoder", "pixel")[::2], "no annotation")
    assert not (out / "videos001").exists()  # every first annotation is checked before any work
    (root / "lists" / "val_videos.txt").unlink()
    assert_one_line_error(*_propagate(capsys, root, out)[::2], "val_videos.txt", "--videos")


def test_void_in_the_first_annotation_is_background(vip_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(vip_root, root)
    path = root / "Annotations" / "Category_ids" / "videos000" / "000000000000.png"
    ids = read_mask(path)
    ids[:4, :4] = 255
    write_mask(path, ids)
    first = VipRoot(root).video("videos000").first_label()
    assert (first[:4, :4] == 0).all() and first.max() < N_CLASSES
    with pytest.raises(UserError, match="no such file"):
        VipRoot(root).video("videos000").read_annotation(path.with_name("x.png"))


@pytest.mark.parametrize("fill", [0, 255], ids=["background", "void"])
def test_an_empty_first_annotation_is_refused_before_any_work(vip_root, tmp_path, capsys, fill):
    # Frame 0 all background or all void: no part to propagate, and the score would only
    # measure how much background the propagation keeps.
    root = tmp_path / "root"
    shutil.copytree(vip_root, root)
    first = root / "Annotations" / "Category_ids" / "videos001" / "000000000000.png"
    write_mask(first, np.full((64, 96), fill, np.uint8))
    out = tmp_path / "o"
    assert_one_line_error(*_propagate(capsys, root, out, "--encoder", "identity", "--evaluate")[::2],
                          "first-frame mask is empty", "videos001", "000000000000.png")
    assert not out.exists()  # videos000 is not propagated first: nothing is left behind
    with pytest.raises(UserError, match="first-frame mask is empty"):
        VipRoot(root).video("videos001").first_label()


def _only_frame_0_annotated(root: Path, name: str) -> None:
    for p in sorted((root / "Annotations" / "Category_ids" / name).glob("*.png"))[1:]:
        p.unlink()


def test_nothing_after_frame_0_to_score_is_an_error(vip_root, tmp_path, capsys):
    # Frame 0's prediction is its annotation: scored alone it gives mIoU 1 whatever the method.
    root = tmp_path / "root"
    shutil.copytree(vip_root, root)
    for name in ("videos000", "videos001"):
        _only_frame_0_annotated(root, name)
    out = tmp_path / "o"
    assert_one_line_error(*_propagate(capsys, root, out, "--encoder", "identity", "--evaluate",
                                      "--videos", "videos001")[::2],
                          "nothing to score: no annotated frame after frame 0", "videos001")
    assert not out.exists()  # found before propagating
    assert _propagate(capsys, root, out, "--encoder", "identity")[0] == 0
    assert_one_line_error(*run_cli(capsys, "evaluate", "vip", "--root", str(root), "--results", str(out))[::2],
                          "nothing to score: no annotated frame after frame 0", "2 videos")
    assert not (out / "miou.csv").exists() and not (out / "miou.json").exists()


def test_a_video_with_nothing_after_frame_0_is_named_in_a_warning(vip_root, tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(vip_root, root)
    out = tmp_path / "o"
    assert _propagate(capsys, root, out, "--encoder", "identity", "--evaluate")[0] == 0
    both = json.loads((out / "miou.json").read_text())
    _only_frame_0_annotated(root, "videos000")
    code, stdout, err = run_cli(capsys, "evaluate", "vip", "--root", str(root), "--results", str(out))
    assert code == 0, err
    warned = [ln for ln in err.splitlines() if "after frame 0" in ln]
    assert len(warned) == 1 and "videos000" in warned[0] and "videos001" not in warned[0], err
    record = json.loads((out / "miou.json").read_text())
    # Scored as the reference scores it: videos000's frame 0 still counts (2 + 3 frames).
    assert record["frames_scored"] == both["frames_scored"] - 2 == 4
    assert record["no_annotated_frame_after_frame_0"] == ["videos000"]
