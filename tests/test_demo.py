"""`timecycle demo` end to end at a tiny size: data, training, four encoders, scores, pages."""

from __future__ import annotations

import json
import re

import pytest

from timecycle.cli import main


@pytest.mark.slow
def test_demo_runs_and_links_only_local_files(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "2", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["scores"]) == {"trained", "random-init", "pixel", "identity"}
    for label, jf in summary["scores"].items():
        assert 0.0 <= jf <= 1.0
        assert f"{label:<12} {jf:.3f}" in printed  # the printed summary shows each J&F
    assert (out / "train" / "last.pt").is_file()
    index = (out / "index.html").read_text()
    links = re.findall(r'(?:href|src)="([^"]+)"', index)
    assert len(links) == 5  # four runs and the training page
    for link in links:
        assert not link.startswith(("http:", "https:", "//"))
        assert (out / link).is_file(), link
    assert "http://" not in index and "https://" not in index


def test_demo_refuses_a_video_without_a_mask(tmp_path, capsys):
    code = main(["demo", "--out", str(tmp_path), "--video", str(tmp_path)])
    assert code == 2
    assert "--video and --mask go together" in capsys.readouterr().err


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
    code = main(["demo", "--out", str(out), "--video", str(clip), "--mask", str(tmp_path / "mask.png"),
                 "--steps", "2", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    preds = sorted((out / "results" / "trained" / "clip").iterdir())
    assert len(preds) == 20
    assert np.array_equal(np.asarray(Image.open(preds[0])), masks[0])
    assert (out / "index.html").is_file()
