"""The HTML reports: DAVIS results (and the JHMDB/VIP adapters), training runs, the CLI."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from timecycle.cli import main
from timecycle.errors import UserError
from timecycle.visualisation.curves import write_training_report
from timecycle.visualisation.report import write_report


class _Links(HTMLParser):
    """Every src/href attribute value of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links += [v for k, v in attrs if k in ("src", "href") and v is not None]


def check_self_contained(index: Path) -> list[str]:
    """Assert the page loads nothing from a network and every file it names exists."""
    text = index.read_text()
    assert not re.search(r"https?://", text), "the page names a network resource"
    parser = _Links()
    parser.feed(text)
    for link in parser.links:
        assert not link.startswith(("/", "file:")) and "//" not in link, link
        assert (index.parent / link).is_file(), f"{link} missing"
    return parser.links


@pytest.fixture(scope="module")
def davis_results(synthetic_davis, tmp_path_factory) -> Path:
    """Evaluated `pixel` baseline results on the generated DAVIS root (read-only for tests)."""
    out = tmp_path_factory.mktemp("davis_results") / "res"
    assert main(["propagate", "davis", "--root", str(synthetic_davis), "--out", str(out), "--encoder", "pixel",
                 "--device", "cpu", "--quiet", "--evaluate"]) == 0
    return out


def _copy(src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(src, tmp_path / "res"))


def test_davis_report_is_self_contained(davis_results, synthetic_davis, tmp_path):
    index = write_report(davis_results, out=tmp_path / "rep")
    assert index == tmp_path / "rep" / "index.html"
    links = check_self_contained(index)
    names = (synthetic_davis / "ImageSets/2017/val.txt").read_text().split()
    assert len(links) == len(names)  # one animation per sequence, nothing else loaded
    for name, link in zip(names, links):
        anim = Image.open(index.parent / link)
        masks = sorted((davis_results / name).glob("*.png"))
        assert anim.n_frames == len(masks) and anim.size == (96, 64)
    text = index.read_text()
    assert text.count('<rect class="bar"') == len(names)  # one bar per sequence
    for needle in ("J&amp;F-Mean", "crw", "pixel", "0.1.0", "frames/s"):
        assert needle in text
    assert "frames not found" not in text


def test_davis_report_default_folder_and_cli(davis_results, tmp_path, capsys):
    res = _copy(davis_results, tmp_path)
    assert main(["report", str(res), "--format", "gif"]) == 0
    index = Path(capsys.readouterr().out.strip())
    assert index == res / "report" / "index.html"
    assert len(check_self_contained(index)) == 3 and all(p.suffix == ".gif" for p in index.parent.glob("0*"))
    # a second report over the first: the report folder is not taken for a sequence
    assert main(["report", str(res)]) == 0
    assert "report" not in re.findall(r"<b>([^<]+)</b>", index.read_text())


def test_davis_report_mp4_uses_video_tags(davis_results, tmp_path):
    index = write_report(davis_results, out=tmp_path / "rep", fmt="mp4")
    check_self_contained(index)
    assert index.read_text().count("<video ") == 3


def test_davis_report_without_frames_or_scores(davis_results, tmp_path):
    res = _copy(davis_results, tmp_path)
    for name in ("global_results-val.csv", "per-sequence_results-val.csv", "results-val.json"):
        (res / name).unlink()
    prov = json.loads((res / "propagation.json").read_text())
    prov["davis_root"] = str(tmp_path / "moved-away")
    (res / "propagation.json").write_text(json.dumps(prov))
    index = write_report(res)
    text = index.read_text()
    assert "not evaluated yet" in text and "frames not found" in text
    assert '<rect class="bar"' not in text
    check_self_contained(index)
    with pytest.raises(UserError, match="root not found"):
        write_report(res, root=tmp_path / "nowhere")


def test_report_refuses_other_folders(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a propagation results folder" in capsys.readouterr().err


def test_vip_report_end_to_end(tmp_path, capsys):
    from timecycle.datasets.vip import write_vip_root

    root, res = tmp_path / "vip", tmp_path / "res"
    write_vip_root(root, {"videos000": {"n_frames": 6}}, seed=0, every=5)
    assert main(["propagate", "vip", "--root", str(root), "--out", str(res), "--encoder", "pixel",
                 "--device", "cpu", "--quiet", "--evaluate"]) == 0
    index = write_report(res)
    text = index.read_text()
    assert "VIP results" in text and "mIoU" in text and "frames not found" not in text
    present = [c for c, v in json.loads((res / "miou.json").read_text())["class_iou"].items() if v is not None]
    assert text.count('<rect class="bar"') == len(present)  # one bar per class present
    (link,) = check_self_contained(index)
    assert Image.open(index.parent / link).n_frames == 6


def test_jhmdb_report_draws_skeletons_over_frames(tmp_path):
    from timecycle.metrics.jhmdb import score_videos, write_pck_results

    root, res = tmp_path / "jhmdb", tmp_path / "res"
    gt = np.stack([np.stack([np.linspace(20, 200, 15), np.linspace(40, 200, 15) + t], 1) for t in range(4)])
    pred = gt + 3.0
    pred[1, 3] = np.nan  # a joint that was not predicted
    (res / "walk").mkdir(parents=True)
    np.save(res / "walk" / "clip1.npy", pred)
    for t in range(4):
        frame = np.full((240, 320, 3), 90, np.uint8)
        path = root / "Rename_Images" / "walk" / "clip1" / f"{t + 1:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(frame).save(path)
    prov = {"benchmark": "jhmdb", "jhmdb_root": str(root), "encoder": "pixel", "weights": None}
    (res / "propagation.json").write_text(json.dumps(prov))
    write_pck_results(res, score_videos({"walk/clip1": (pred, gt)}), prov)
    index = write_report(res)
    text = index.read_text()
    assert "JHMDB results" in text and "PCK@0.1" in text and "walk/clip1" in text
    assert text.count('<rect class="bar"') == 1 and "frames not found" not in text
    (link,) = check_self_contained(index)
    anim = Image.open(index.parent / link)
    assert anim.n_frames == 4 and anim.size == (320, 240)
    # the skeleton is drawn: colours other than the frame's grey
    assert (np.abs(np.asarray(anim.convert("RGB")).astype(int) - 90).sum(-1) > 60).sum() > 100


def test_training_report(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": s, "loss": 1 / (1 + s), "long": 0.2, "skip": 0.1, "sim_inlier": -0.5, "clips_per_s": 12.0,
             "nonfinite": 0} for s in range(0, 50, 10)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "config.json").write_text(json.dumps({"preset": "small", "lr": 2e-4}))
    assert main(["report", str(run)]) == 0
    index = Path(capsys.readouterr().out.strip())
    assert index == run / "report" / "index.html"
    assert check_self_contained(index) == ["curves.png"]
    assert Image.open(index.parent / "curves.png").size == (760, 600)
    text = index.read_text()
    assert "&quot;preset&quot;: &quot;small&quot;" in text and "last step" in text
    assert write_training_report(run, out=tmp_path / "elsewhere").parent == tmp_path / "elsewhere"
    assert main(["report", str(run), "--root", str(tmp_path)]) == 2


def test_page_in_headless_chromium(davis_results, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed: the page was not checked in a real browser")
    index = write_report(davis_results, out=tmp_path / "rep")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}",
         f"--screenshot={shot}", "--window-size=1200,1600", index.resolve().as_uri()],
        capture_output=True, timeout=120, check=False,
    )
    assert shot.is_file(), "chromium wrote no screenshot"
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape == (1600, 1200, 3)
    # The bar fill colour (#4a78b5) is on screen: the inline SVG chart rendered.
    assert (np.abs(img.astype(int) - [0x4A, 0x78, 0xB5]).sum(-1) < 6).sum() > 500
    # Not a blank page: the animations' pixels are rendered too (many distinct colours).
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 1000
