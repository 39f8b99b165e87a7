"""Overlays, animations, the texture figure and loss curves, on tiny generated data."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch
from PIL import Image

from timecycle.cli import main
from timecycle.datasets.palette import VOC_PALETTE
from timecycle.visualisation.curves import (
    coincident_series,
    collapse_warnings,
    loss_series,
    nice_ticks,
    plot,
    read_metrics,
    write_curves,
)
from timecycle.visualisation.overlay import contour, grid, overlay_mask, write_animation
from timecycle.visualisation.texture import (
    carry_texture,
    checkerboard,
    select_frames,
    strip_captions,
    warp,
    write_texture_figure,
)


def _frames(n: int, h: int = 40, w: int = 56, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def _n_frames(path) -> int:
    if path.suffix == ".mp4":
        with av.open(str(path)) as c:
            return sum(1 for _ in c.decode(video=0))
    with Image.open(path) as img:
        return img.n_frames


# --- overlay -----------------------------------------------------------------------------------


def test_overlay_blends_voc_colours_and_leaves_background():
    frame = np.full((20, 30, 3), 100, np.uint8)
    ids = np.zeros((20, 30), np.uint8)
    ids[5:15, 5:15] = 1
    ids[5:15, 18:28] = 2
    out = overlay_mask(frame, ids, alpha=0.5, contour_width=1)
    assert (out[0, 0] == 100).all() and (out[19, 16] == 100).all()  # far from any object
    for k, (y, x) in ((1, (10, 10)), (2, (10, 23))):  # object interiors: exact blend
        assert out[y, x].tolist() == np.round(0.5 * 100 + 0.5 * VOC_PALETTE[k].astype(float)).tolist()
    assert (out[5, 10] == 255).all()  # the top edge of object 1 is a white contour
    assert contour(ids).sum() > 0 and not contour(np.zeros((4, 4), np.uint8)).any()


def test_grid_size_and_placement():
    a, b = np.zeros((4, 6, 3), np.uint8), np.full((4, 6, 3), 7, np.uint8)
    g = grid([[a, b], [b, a]], gap=2)
    assert g.shape == (4 * 2 + 2, 6 * 2 + 2, 3)
    assert (g[0:4, 8:14] == 7).all() and (g[4:6] == 255).all()


@pytest.mark.parametrize("suffix", [".webp", ".gif", ".mp4"])
def test_animation_formats(tmp_path, suffix):
    frames = _frames(3, 31, 45)  # odd sides: mp4 pads them to even
    path = write_animation(tmp_path / f"a{suffix}", frames, fps=5)
    assert path.is_file() and _n_frames(path) == 3
    if suffix != ".mp4":
        assert Image.open(path).size == (45, 31)


# --- texture -----------------------------------------------------------------------------------


def test_warp_through_identical_features_returns_the_values():
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(256, 6, 8, generator=gen)  # 256 channels: distinct cells have cos ~ +-0.2
    values = torch.rand(3, 6, 8, generator=gen)
    assert torch.equal(warp(feats, feats, values, topk=1, radius=None), values)
    # top-10 at the CRW temperature: distinct random features put almost all weight on itself
    assert torch.allclose(warp(feats, feats, values), values, atol=1e-3)


def test_warp_radius_limits_the_sources():
    # Each target cell's feature is the source cell one row up; for row 0 that is the last row,
    # 3 cells away, which a radius of 1.5 refuses.
    src = torch.eye(16).reshape(16, 4, 4)  # one-hot positional features
    dst = torch.roll(src, shifts=1, dims=1)
    values = torch.arange(16.0).reshape(1, 4, 4)
    free = warp(src, dst, values, topk=1, radius=None)
    assert torch.equal(free, torch.roll(values, 1, dims=1))
    near = warp(src, dst, values, topk=1, radius=1.5)
    assert torch.equal(near[:, 1:], free[:, 1:]) and not torch.equal(near[:, 0], free[:, 0])


@pytest.mark.parametrize("texture", ["checker", "colors"])
def test_texture_through_identical_frames_comes_back(texture):
    # Invariant: identical frames with distinct features give the source texture back (entry 0
    # is the texture after the same round trip through feature resolution).
    frame = _frames(1, 48, 64)[0]
    feats = torch.eye(6 * 8).reshape(48, 6, 8)  # a distinct feature per cell
    out = carry_texture([frame] * 4, [feats] * 4, texture)
    assert len(out) == 4 and out[0].shape == (48, 64, 3)
    for img in out[1:]:
        assert np.abs(img.astype(int) - out[0].astype(int)).max() <= 1


def test_checkerboard_alternates():
    c = checkerboard(64, 96, cell=32)
    assert c.shape == (64, 96, 3)
    assert c[:32, :32].sum() > c[:32, 32:64].sum()  # bright then dark squares
    assert (c[0, 0] == c[31, 31]).all()


def test_select_frames():
    assert select_frames(10) == [0, 5]
    assert select_frames(10, step=4) == [0, 4, 8]
    assert select_frames(100, step=1, max_frames=3) == [0, 1, 2]
    assert select_frames(10, frames=[2, 7]) == [2, 7]
    from timecycle.errors import UserError

    with pytest.raises(UserError, match="outside"):
        select_frames(5, frames=[0, 9])
    with pytest.raises(UserError, match="at least two"):
        select_frames(1)


def _frame_folder(tmp_path, n=4, h=40, w=56):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(_frames(n, h, w)):
        Image.fromarray(f).save(folder / f"{i:05d}.png")
    return folder


def test_cli_texture_strip_and_animation(tmp_path, capsys):
    folder = _frame_folder(tmp_path)
    out = tmp_path / "fig"
    code = main(["visualize", "texture", "--video", str(folder), "--encoder", "pixel", "--device", "cpu",
                 "--frames", "0,2", "--out", str(out)])
    assert code == 0 and "texture_strip.png" in capsys.readouterr().out
    # 2 rows (frames, textures) of 2 columns, 4-pixel gaps, under captions; frames keep their
    # size (no upscaling)
    strip = np.asarray(Image.open(out / "texture_strip.png").convert("RGB"))
    assert strip.shape[1] == 2 * 56 + 4 and strip.shape[0] > 2 * 40 + 4
    assert (strip[: -(2 * 40 + 4)] < 100).all(-1).sum() > 100  # the captions' text is drawn
    anim = Image.open(out / "texture.webp")
    assert anim.n_frames == 2 and anim.size == (2 * 56 + 4, 40)


def test_cli_texture_from_a_video_file(tmp_path, capsys):
    video = write_animation(tmp_path / "clip.mp4", _frames(6, 48, 64), fps=10)
    out = tmp_path / "fig"
    code = main(["visualize", "texture", "--video", str(video), "--encoder", "pixel", "--device", "cpu",
                 "--step", "2", "--texture", "colors", "--format", "gif", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    width, height = Image.open(out / "texture_strip.png").size
    assert width == 3 * 64 + 2 * 4 and height > 2 * 48 + 4
    assert _n_frames(out / "texture.gif") == 3


def test_cli_texture_refuses_identity_and_bad_frames(tmp_path, capsys):
    folder = _frame_folder(tmp_path, n=3)
    base = ["visualize", "texture", "--video", str(folder), "--device", "cpu", "--out", str(tmp_path / "o")]
    assert main(base + ["--encoder", "identity"]) == 2
    assert main(base + ["--encoder", "pixel", "--frames", "0,9"]) == 2
    err = capsys.readouterr().err
    assert "identity" in err and "outside" in err and "Traceback" not in err


# --- curves ------------------------------------------------------------------------------------


def test_nice_ticks_are_round():
    assert nice_ticks(0, 1) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert nice_ticks(3, 97) == [0, 20, 40, 60, 80, 100]
    assert nice_ticks(-0.93, -0.12) == pytest.approx([-1.0, -0.8, -0.6, -0.4, -0.2, 0.0])


def test_loss_curves_png_from_metrics_jsonl(tmp_path):
    lines = [json.dumps({"step": s, "loss": 1 / (s + 1), "long": 0.5 / (s + 1), "skip": 0.3,
                         "sim_inlier": -0.1 * s / 50, "grad_norm": 2.0, "clips_per_s": 10 + s % 3,
                         "lr": 2e-4, "frozen": False})
             for s in range(0, 60, 10)]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(lines) + '\n{"step": 70, "loss"')  # a torn last line is skipped
    rows = read_metrics(path)
    assert [r["step"] for r in rows] == [0, 10, 20, 30, 40, 50]
    assert list(loss_series(rows)) == ["loss", "long", "sim_inlier", "skip"]  # total first
    png = write_curves(rows, tmp_path / "curves.png")
    img = np.asarray(Image.open(png).convert("RGB"))
    assert img.shape == (360 + 240, 760, 3)  # loss panel + throughput panel
    # the first series' colour (tab10 blue) is drawn
    assert (np.abs(img.astype(int) - [31, 119, 180]).sum(-1) < 10).sum() > 50


def _colour_pixels(img: np.ndarray, hex_colour: str) -> int:
    rgb = [int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)]
    return int((np.abs(img.astype(int) - rgb).sum(-1) < 10).sum())


def test_coincident_series_stay_visible():
    """A collapsed run logs long == skip: the line drawn second must not hide the first."""
    steps = range(0, 100, 5)
    series = {"loss": [(s, 1 / (1 + s)) for s in steps], "long": [(s, 0.3) for s in steps],
              "skip": [(s, 0.3) for s in steps]}
    assert coincident_series(series) == {"skip": "long"}
    img = np.asarray(plot(series, "t", "step", "loss"))
    plot_area = img[:, :480]  # left of the legend box (top right)
    # long (tab10 orange) shows through skip's dashes (tab10 green), and skip is drawn too
    assert _colour_pixels(plot_area, "#ff7f0e") > 100
    assert _colour_pixels(plot_area, "#2ca02c") > 100
    assert coincident_series({"long": [(0, 0.3), (5, 0.2)], "skip": [(0, 0.3), (5, 0.1)]}) == {}


def test_training_page_flags_a_collapsed_similarity(tmp_path):
    from timecycle.visualisation.curves import write_training_report

    rows = [{"step": s, "loss": -3.0 - s / 100, "long": 0.3, "skip": 0.3,
             "sim_feature": -3.5 - s / 200} for s in range(0, 100, 10)]
    rows[-1]["sim_feature"] = -3.985
    config = {"loss": {"step_reduction": "sum"}, "clip": {"n_past": 4}}
    assert len(collapse_warnings(rows, config)) == 1
    assert collapse_warnings(rows[:-1], config) == []  # -3.95 is not yet at the floor -4
    mean = {"loss": {"step_reduction": "mean"}}  # the term averaged over steps: floor -1
    assert len(collapse_warnings([{"step": 1, "sim_feature": -0.996}], mean)) == 1
    assert collapse_warnings([{"step": 1, "sim_feature": -0.9}], mean) == []
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "config.json").write_text(json.dumps(config))
    page = write_training_report(run).read_text()
    assert 'class="warning"' in page and "collapsed" in page and "-3.985" in page
    assert "skip equals long" in page


def test_texture_strip_captions_say_which_row_is_which(tmp_path):
    frames = _frames(3, 40, 200)
    feats = [torch.from_numpy(f).permute(2, 0, 1).float() for f in frames]
    for texture in ("checker", "colors"):
        top, bottom = strip_captions(texture, [0, 4, 8])
        assert top.startswith("Top row: frames 0, 4, 8") and bottom.startswith("Bottom row")
        assert "Look for" in bottom
        paths = write_texture_figure(frames, feats, tmp_path / texture, texture, radius=None,
                                     indices=[0, 4, 8])
        strip = np.asarray(Image.open(paths["strip"]).convert("RGB"))
        band = strip[: strip.shape[0] - (2 * 40 + 4)]
        assert band.shape[0] > 40  # two captions (wrapped) and the column labels
        assert (band < 100).all(-1).sum() > 300


def test_training_page_draws_the_evaluation_and_the_probe(tmp_path):
    from timecycle.visualisation.curves import loss_series, write_training_report

    rows = [{"step": s, "loss": 1.0 / s, "probe_real": 1.0 / s, "probe_unrelated": 2.0,
             **({"eval_jf": 0.5 + s / 100, "eval_j": 0.5, "eval_f": 0.5,
                 "eval_label": "DAVIS proxy: test"} if s % 2 == 0 else {})} for s in range(1, 7)]
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert set(loss_series(rows)) == {"loss"}  # evaluation and probe are not loss terms
    page = write_training_report(run).read_text()
    assert "best 0.560 at step 6" in page and "DAVIS proxy: test" in page
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    from PIL import Image
    write_training_report(plain)
    tall = Image.open(run / "report" / "curves.png").height
    assert tall > Image.open(plain / "report" / "curves.png").height + 400  # two more panels
