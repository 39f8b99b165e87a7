"""`timecycle demo` end to end at a tiny size: data, training, five encoders, scores, pages."""

from __future__ import annotations

import json
import re

import pytest

from timecycle.cli import main
from helpers import assert_one_line_error


@pytest.mark.slow
def test_demo_runs_and_links_only_local_files(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "2", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    first = lambda text: next(i for i, ln in enumerate(lines) if text in ln)  # noqa: E731
    # the estimate comes first, then each stage with its own estimate
    assert first("estimated") < first("stage 1/4: generating") < first("stage 2/4: training")
    assert first("stage 2/4") < first("stage 3/4: propagating") < first("stage 4/4: writing")
    assert "crw protocol" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["estimated_seconds"] > 0
    # The package ships built-in weights (encoder/builtin): they are scored next to the run.
    assert set(summary["scores"]) == {"trained", "built-in", "random-init", "pixel", "identity"}
    for label, jf in summary["scores"].items():
        assert 0.0 <= jf <= 1.0
        assert f"{label:<12} {jf:.3f}" in printed  # the printed summary shows each J&F
    assert (out / "train" / "last.pt").is_file()
    index = (out / "index.html").read_text()
    links = re.findall(r'(?:href|src)="([^"]+)"', index)
    assert len(links) == 6  # five runs and the training page
    assert "<b>built-in</b>" in index and "--preset crw-small" in index  # its provenance
    for link in links:
        assert not link.startswith(("http:", "https:", "//"))
        assert (out / link).is_file(), link
    assert "http://" not in index and "https://" not in index


def test_demo_refuses_a_video_without_a_mask(tmp_path, capsys):
    code = main(["demo", "--out", str(tmp_path), "--video", str(tmp_path)])
    assert code == 2
    assert "--video and --mask go together" in capsys.readouterr().err


def test_demo_weights_builtin_is_one_line_saying_they_are_scored_anyway(tmp_path, capsys):
    # The other commands take `--weights builtin`; the demo's --weights replaces its training
    # run, and the built-in weights are scored beside that run in any case.
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--weights", "builtin"])
    assert_one_line_error(code, capsys.readouterr().err, "demo --weights takes a checkpoint file",
                          "built-in weights are always scored beside it")
    assert not out.exists()


def test_demo_refuses_a_wrong_checkpoint_or_mask_before_any_work(tmp_path, capsys):
    # Before: after generating the data, or after timing a training step and its estimate.
    import numpy as np
    from PIL import Image

    from timecycle.datasets.io import write_mask

    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--weights", str(bad)])
    printed, err = capsys.readouterr()
    assert_one_line_error(code, err, "bad.pt", "not a PyTorch checkpoint")
    assert printed == "" and not out.exists()
    clip = tmp_path / "clip"
    clip.mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(clip / f"{i:04d}.png")
    write_mask(tmp_path / "mask.png", np.ones((32, 40), np.uint8))
    code = main(["demo", "--out", str(out), "--video", str(clip), "--mask",
                 str(tmp_path / "mask.png")])
    printed, err = capsys.readouterr()
    assert_one_line_error(code, err, "mask.png", "mask is 40x32, the clip's frames 48x32")
    assert "timing" not in printed and not out.exists()


@pytest.mark.slow
def test_demo_on_a_users_clip(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from timecycle.datasets.io import write_mask
    from timecycle.datasets.synthetic import render_sequence

    frames, masks = render_sequence(seed=3, n_frames=20, height=112, width=144, n_objects=2)
    clip = tmp_path / "clip"
    clip.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(clip / f"{i:04d}.png")
    write_mask(tmp_path / "mask.png", masks[0])
    out = tmp_path / "demo"
    argv = ["demo", "--video", str(clip), "--mask", str(tmp_path / "mask.png"), "--device", "cpu",
            "--protocol", "timecycle"]
    code = main([*argv, "--out", str(out), "--steps", "2"])
    printed, err = capsys.readouterr()
    assert code == 0, err
    for run in ("trained", "built-in"):
        preds = sorted((out / "results" / run / "clip").iterdir())
        assert len(preds) == 20
        assert np.array_equal(np.asarray(Image.open(preds[0])), masks[0])
    # Said before the training starts: that it trains on the clip, how long, and --weights.
    lines = printed.splitlines()
    told = next(i for i, ln in enumerate(lines) if "on your clip for 2 steps" in ln)
    assert "--weights" in lines[told] and "about" in lines[told]
    assert told < next(i for i, ln in enumerate(lines) if "training the small preset" in ln)
    assert "propagated 1 sequence, 20 frames in " in printed  # once per encoder, not "1 sequences"
    page = (out / "index.html").read_text()
    assert str(clip.resolve()) in page and "20 frames, 144x112" in page
    assert "<code>timecycle</code> propagation protocol" in page and "<code>crw</code>" not in page
    assert "synthetic" not in page and "trained for 2 steps" in page and "this clip" in page
    assert "Not scored" in page

    # With --weights nothing is trained, and the page names the checkpoint.
    weights = out / "train" / "last.pt"
    again = tmp_path / "again"
    assert main([*argv, "--out", str(again), "--weights", str(weights)]) == 0
    printed = capsys.readouterr().out
    assert "trains" not in printed and not (again / "train").exists()
    page = (again / "index.html").read_text()
    assert str(weights.resolve()) in page and "trained for" not in page


def test_estimate_counts_the_built_in_weights_when_they_run():
    from timecycle.demo.config import DemoConfig
    from timecycle.demo.estimate import estimate_seconds

    with_builtin = estimate_seconds(DemoConfig(steps=10), step_s=1.0, builtin=True)
    without = estimate_seconds(DemoConfig(steps=10), step_s=1.0, builtin=False)
    assert with_builtin["propagate"] == 1.5 * without["propagate"]
    assert with_builtin["train"] == without["train"]
    clip = {"frames": 50, "width": 854, "height": 480}
    on_clip = estimate_seconds(DemoConfig(weights="w.pt"), step_s=1.0, builtin=True, clip=clip)
    assert on_clip["propagate"] == 2 * estimate_seconds(
        DemoConfig(weights="w.pt"), step_s=1.0, builtin=False, clip=clip)["propagate"]


@pytest.mark.parametrize("installed", [True, False])
def test_the_demo_estimates_with_the_built_in_weights_it_will_run(tmp_path, monkeypatch,
                                                                   installed):
    # The wiring between run.py and estimate_seconds: the built-in stage is counted exactly
    # when this install has built-in weights (the case above checks what it then adds).
    from timecycle.demo import run
    from timecycle.demo.config import DemoConfig

    class Estimated(Exception):
        pass

    def estimate(cfg, step_s, *, builtin, clip=None, train_step_s=None):
        raise Estimated(builtin)

    monkeypatch.setattr(run, "probe_step_seconds", lambda cfg: (1.0, 1.0))
    monkeypatch.setattr(run, "_builtin", lambda: {"arch": "resnet18"} if installed else None)
    monkeypatch.setattr(run, "estimate_seconds", estimate)
    with pytest.raises(Estimated) as got:
        run._run_demo(DemoConfig(out=str(tmp_path)), tmp_path)
    assert got.value.args == (installed,)


def test_estimate_counts_only_the_stages_that_run():
    from timecycle.demo.config import DemoConfig
    from timecycle.demo.estimate import estimate_seconds

    synthetic = estimate_seconds(DemoConfig(steps=100), step_s=2.0, builtin=True)
    assert list(synthetic) == ["generate", "train", "propagate", "report"]
    assert synthetic["train"] > 100 * 2.0 * 0.99  # at least the steps themselves
    frames = {"frames": 50, "width": 854, "height": 480}
    clip = estimate_seconds(DemoConfig(steps=100, weights="w.pt"), step_s=2.0, builtin=True, clip=frames)
    assert list(clip) == ["propagate", "report"]
    longer = estimate_seconds(DemoConfig(weights="w.pt"), step_s=2.0, builtin=True, clip={**frames, "frames": 500})
    assert longer["propagate"] > clip["propagate"]
    # A faster training precision (bf16) shortens training only: propagation runs in fp32.
    bf16 = estimate_seconds(DemoConfig(steps=100), step_s=2.0, builtin=True, train_step_s=1.0)
    assert bf16["train"] == synthetic["train"] / 2
    assert {k: v for k, v in bf16.items() if k != "train"} == \
        {k: v for k, v in synthetic.items() if k != "train"}
