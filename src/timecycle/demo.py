"""The demo: everything timecycle does, on embedded synthetic video, on a CPU, in minutes.

1. Generate unlabeled training videos and a separate labelled DAVIS-format evaluation set
   (textured objects that move, rotate, scale and occlude each other; exact masks).
2. Train the `small` preset (ResNet-18, reduced resolution) briefly on the training videos.
3. Propagate the evaluation set's first-frame masks with the trained encoder, the same
   architecture randomly initialised, the `pixel` colour baseline and `identity`.
4. Score each with the DAVIS J&F and write a report folder (index.html).

With `video` and `mask`, the same runs on a user's clip (a video file or a frame folder, and
a first-frame mask): it is trained on (self-supervised, unless `weights` is given),
propagated and shown; nothing is scored, as there are no later ground-truth masks.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path


from timecycle.datasets.davis import DavisRoot
from timecycle.datasets.io import read_frame, read_mask, write_json_atomic, write_mask, write_text_atomic
from timecycle.errors import UserError

SEQUENCE = "clip"  # the user's clip, laid out as a one-sequence DAVIS root


@dataclass
class DemoConfig:
    out: str = "demo-out"
    steps: int = 100  # training steps of the small preset: about 2-3 minutes on 2 CPU cores
    batch_size: int = 8
    workers: int = 2
    device: str = "auto"
    seed: int = 0
    protocol: str = "crw"
    loss: str = "paper"  # SPEC 4 paper preset; see the README on what both objectives did here
    video: str | None = None  # a user's clip instead of the synthetic set
    mask: str | None = None
    weights: str | None = None  # a trained checkpoint: skip training


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _generate(out: Path, seed: int) -> tuple[Path, Path]:
    from timecycle.datasets.synthetic import write_davis_root, write_training_videos

    train_dir, eval_dir = out / "data" / "train", out / "data" / "eval"
    for d in (train_dir, eval_dir):
        shutil.rmtree(d, ignore_errors=True)
    # Different seeds: the evaluation scenes are never trained on.
    write_training_videos(train_dir, n_videos=12, seed=seed + 1, n_frames=48, height=144, width=192)
    write_davis_root(eval_dir, 4, seed=seed + 1000, n_frames=24, height=144, width=256)
    return train_dir, eval_dir


def _clip_root(out: Path, video: str, mask: str) -> Path:
    """Lay a user's clip and first-frame mask out as a one-sequence DAVIS root."""
    from timecycle.data.video import list_frame_files, read_frames as decode

    root = out / "data" / "clip"
    shutil.rmtree(root, ignore_errors=True)
    frames_dir = root / "JPEGImages" / "480p" / SEQUENCE
    frames_dir.mkdir(parents=True)
    src = Path(video)
    if src.is_dir():
        frames = [read_frame(src / n) for n in list_frame_files(src)]
    elif src.is_file():
        from timecycle.data.video import DecodeError, probe_video

        try:
            n = probe_video(src)["n_frames"]
            frames = list(decode(src, "video", list(range(n)), short_side=None))
        except DecodeError as err:
            raise UserError(f"cannot decode the video ({err.reason})", src) from None
    else:
        raise UserError("no such video file or frame folder", src)
    if len(frames) < 2:
        raise UserError("the clip needs at least 2 frames", src)
    from PIL import Image

    for i, f in enumerate(frames):
        Image.fromarray(f).save(frames_dir / f"{i:05d}.jpg", quality=95)
    ids = read_mask(mask)
    if ids.shape != frames[0].shape[:2]:
        raise UserError(f"mask is {ids.shape[1]}x{ids.shape[0]}, the clip's frames "
                        f"{frames[0].shape[1]}x{frames[0].shape[0]}", mask)
    write_mask(root / "Annotations" / "480p" / SEQUENCE / "00000.png", ids)
    return root


def _train(cfg: DemoConfig, data: Path, out: Path) -> Path:
    from timecycle.engine.config import make_config
    from timecycle.engine.train import train

    run = out / "train"
    shutil.rmtree(run, ignore_errors=True)
    config = make_config("small", data=[str(data)], out=str(run), steps=cfg.steps,
                         batch_size=cfg.batch_size, workers=cfg.workers, device=cfg.device,
                         seed=cfg.seed, fps=None, loss=cfg.loss)
    train(config)
    return run / "last.pt"


def _propagate(cfg: DemoConfig, root: DavisRoot, names: list[str], out: Path, encoder: str,
               weights: Path | None, evaluate: bool) -> float | None:
    from timecycle.cli import main

    argv = ["propagate", "davis", "--root", str(root.root), "--sequences", ",".join(names),
            "--encoder", encoder, "--protocol", cfg.protocol, "--device", cfg.device,
            "--seed", str(cfg.seed), "--out", str(out), "--quiet"]
    if weights is not None:
        argv += ["--weights", str(weights)]
    if evaluate:
        argv.append("--evaluate")
    if main(argv) != 0:
        raise UserError(f"propagation with {encoder} failed (see above)")
    if not evaluate:
        return None
    return json.loads((out / "results-val.json").read_text())["global"]["J&F-Mean"]


def run_demo(cfg: DemoConfig) -> dict:
    """Run the demo; returns {encoder: J&F or None} and writes cfg.out/index.html."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if (cfg.video is None) != (cfg.mask is None):
        raise UserError("--video and --mask go together")
    if cfg.video:
        _say(f"laying out {cfg.video} with its first-frame mask")
        eval_root = _clip_root(out, cfg.video, cfg.mask)
        train_data = eval_root / "JPEGImages" / "480p"
    else:
        _say("generating synthetic training videos and a labelled evaluation set")
        train_data, eval_root = _generate(out, cfg.seed)
    weights = Path(cfg.weights) if cfg.weights else None
    if weights is None:
        _say(f"training the small preset for {cfg.steps} steps (ResNet-18, CPU-sized)")
        weights = _train(cfg, train_data, out)
    root = DavisRoot(eval_root)
    names = [SEQUENCE] if cfg.video else root.sequence_names()
    evaluate = cfg.video is None
    runs = {"trained": ("resnet18", weights), "random-init": ("resnet18", None),
            "pixel": ("pixel", None), "identity": ("identity", None)}
    if cfg.video:
        runs = {"trained": runs["trained"]}
    scores: dict[str, float | None] = {}
    for label, (encoder, w) in runs.items():
        _say(f"propagating with {label} ({encoder}, {cfg.protocol} protocol)")
        scores[label] = _propagate(cfg, root, names, out / "results" / label, encoder, w, evaluate)
    report = _report(out, scores, root)
    elapsed = time.perf_counter() - start
    write_json_atomic(out / "summary.json", {"scores": scores, "seconds": round(elapsed, 1),
                                             "protocol": cfg.protocol, "weights": str(weights)})
    _say(f"done in {elapsed / 60:.1f} min")
    if evaluate:
        _say("J&F-Mean on the synthetic evaluation set (higher is better):")
        for label, jf in scores.items():
            _say(f"  {label:<12} {jf:.3f}")
    _say(f"report: {report}")
    return scores


def _report(out: Path, scores: dict[str, float | None], root: DavisRoot) -> Path:
    """An index page: the scores of each encoder as a table and a bar chart, linking each
    run's own report (animated overlays, per-sequence scores) and the training curves."""
    import html

    from timecycle.visualisation.curves import write_training_report
    from timecycle.visualisation.report import PAGE_CSS, bar_chart_svg, write_report

    rows = ["<tr><th>encoder</th><th>J&amp;F-Mean</th><th>report</th></tr>"]
    for label, jf in scores.items():
        page = write_report(out / "results" / label, root=root.root)
        href = html.escape(page.relative_to(out).as_posix())
        score = "-" if jf is None else f"{jf:.3f}"
        rows.append(f'<tr><td>{html.escape(label)}</td><td>{score}</td>'
                    f'<td><a href="{href}">overlays and per-sequence scores</a></td></tr>')
    table = "<table>" + "".join(rows) + "</table>"
    parts = [f"<!doctype html><meta charset='utf-8'><title>timecycle demo</title><style>{PAGE_CSS}</style>",
             "<h1>timecycle demo</h1>",
             "<p>Label propagation of first-frame masks (crw protocol) on synthetic sequences the "
             "encoder never saw, scored with the DAVIS J&amp;F.</p>", table]
    if all(v is not None for v in scores.values()):
        parts.append(bar_chart_svg({k: float(v) for k, v in scores.items()}, "J&F-Mean"))
    run = out / "train"
    if (run / "metrics.jsonl").is_file():
        page = write_training_report(run)
        parts.append(f'<p><a href="{html.escape(page.relative_to(out).as_posix())}">training curves and configuration</a></p>')
    index = out / "index.html"
    write_text_atomic(index, "\n".join(parts))
    return index


__all__ = ["DemoConfig", "run_demo"]
