"""The demo: everything timecycle does, on embedded synthetic video, on a CPU, in minutes.

1. Generate unlabeled training videos and a separate labelled DAVIS-format evaluation set
   (textured objects that move, rotate, scale and occlude each other; exact masks).
2. Train the `small` preset (ResNet-18, reduced resolution) briefly on the training videos.
3. Propagate the evaluation set's first-frame masks with the trained encoder, the package's
   built-in weights (`--weights builtin`, where this install has them), the same architecture
   randomly initialised, the `pixel` colour baseline and `identity`.
4. Score each with the DAVIS J&F and write a report folder (index.html).

With `video` and `mask`, the same runs on a user's clip (a video file or a frame folder, and
a first-frame mask): it is trained on (self-supervised, unless `weights` is given),
propagated and shown; nothing is scored, as there are no later ground-truth masks.

Before the work starts the demo prints an estimate of its duration on this machine: one
training step is timed on random clips (`probe_step_seconds`) and the other stages are
counted in such steps (`STAGE_STEPS`). Each stage then shows a progress bar with the time left.
A failed demo removes what it wrote (`output_folder`).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from timecycle.datasets.davis import DavisRoot
from timecycle.datasets.io import (
    read_frame,
    read_mask,
    write_json_atomic,
    write_mask,
    write_text_atomic,
)
from timecycle.datasets.outputs import output_folder
from timecycle.errors import UserError

SEQUENCE = "clip"  # the user's clip, laid out as a one-sequence DAVIS root


@dataclass
class DemoConfig:
    out: str = "demo-out"
    steps: int = 60  # small-preset steps; the whole demo then took 1.6 min on 2 quiet cores
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


def _decode_clip(video: str) -> list:
    """The frames of a user's clip (a video file or a frame folder), as (H, W, 3) uint8."""
    from timecycle.data.video import list_frame_files, read_frames as decode

    src = Path(video)
    if src.is_dir():
        frames = [read_frame(src / n) for n in list_frame_files(src)]
    elif src.is_file():
        from timecycle.data.video import DecodeError, check_whole, probe_video

        try:
            info = probe_video(src)
            check_whole(src, info)
            n = info["n_frames"]
            frames = list(decode(src, "video", list(range(n)), short_side=None))
        except DecodeError as err:
            raise UserError(f"cannot decode the video ({err.reason})", src) from None
    else:
        raise UserError("no such video file or frame folder", src)
    if len(frames) < 2:
        raise UserError("the clip needs at least 2 frames", src)
    return frames


def _read_clip_mask(mask: str, frames: list) -> np.ndarray:
    """The first-frame ids of a user's clip, checked against its frames."""
    ids = read_mask(mask)
    if ids.shape != frames[0].shape[:2]:
        raise UserError(f"mask is {ids.shape[1]}x{ids.shape[0]}, the clip's frames "
                        f"{frames[0].shape[1]}x{frames[0].shape[0]}", mask)
    return ids


def _clip_root(out: Path, frames: list, ids: np.ndarray) -> Path:
    """Lay a user's clip and first-frame ids out as a one-sequence DAVIS root."""
    from PIL import Image

    root = out / "data" / "clip"
    shutil.rmtree(root, ignore_errors=True)
    frames_dir = root / "JPEGImages" / "480p" / SEQUENCE
    frames_dir.mkdir(parents=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(frames_dir / f"{i:05d}.jpg", quality=95)
    write_mask(root / "Annotations" / "480p" / SEQUENCE / "00000.png", ids)
    return root


def _train_config(cfg: DemoConfig, data: Path, run: Path):
    from timecycle.engine.config import make_config

    # Eager even on CUDA: a minute of compiling is more than the demo's few dozen steps can
    # win back, and `probe_step_seconds` times the eager step.
    return make_config("small", data=[str(data)], out=str(run), steps=cfg.steps,
                       batch_size=cfg.batch_size, workers=cfg.workers, device=cfg.device,
                       seed=cfg.seed, fps=None, loss=cfg.loss, compile_cycles="off")


def _train(cfg: DemoConfig, data: Path, out: Path) -> Path:
    from timecycle.engine.train import train

    run = out / "train"
    shutil.rmtree(run, ignore_errors=True)
    train(_train_config(cfg, data, run))
    return run / "last.pt"


# The stages other than training, in fp32 probe steps (`probe_step_seconds`), as measured with
# --steps 10 on a loaded 2-core CPU (probe 3.5 s; generate 4.1 s, propagate and score with the
# four encoders 101 s, report 4.7 s): the ratios, not the seconds, carry over to another machine
# or load. A training step cost 1.15 probe steps there (the DataLoader workers decode clips on
# the same cores). A user's clip is propagated once, at about 3.4 probe steps per frame
# megapixel (0.125 per 256x144 frame with the crw protocol).
TRAIN_STEP_COST = 1.15
STAGE_STEPS = {"generate": 1.2, "propagate": 29.0, "report": 1.3}
CLIP_STEPS_PER_MEGAPIXEL = 3.4


def probe_step_seconds(cfg: DemoConfig) -> tuple[float, float]:
    """Seconds that one training step of the demo's model takes on this machine now, in fp32
    (the unit of `STAGE_STEPS`: propagation runs in fp32) and at the precision training will
    use (bf16 where `amp_dtype` picks it: ~1.8x faster on CPUs with native bf16). Each is the
    second of two steps on random clips (the first pays for allocation and kernel choice)."""
    import torch

    from timecycle.engine.distributed import World, resolve_device
    from timecycle.engine.runtime import amp_dtype
    from timecycle.engine.step import train_step
    from timecycle.engine.setup import make_optimizer
    from timecycle.tracker import TimeCycle

    config = _train_config(cfg, Path("."), Path("."))
    device = resolve_device(config.device, World())
    loss_config, clip = config.loss_config(), config.clip_config()
    state = torch.random.get_rng_state()
    model = TimeCycle.build(config.arch, loss_config, config.crop, config.patch, config.seed)
    model.to(device).train()
    optimizer = make_optimizer(model, config)
    b = config.batch_size
    batch = {"frames": torch.rand(b, clip.n_past + 1, 3, config.crop, config.crop),
             "patch": torch.rand(b, 3, config.patch, config.patch),
             "theta_gt": torch.eye(2, 3).expand(b, 2, 3).contiguous()}

    def step_seconds(amp: torch.dtype | None) -> float:
        times = []
        for _ in range(2):
            start = time.perf_counter()
            train_step(model, optimizer, batch, loss_config, config.grad_clip, device, amp)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
        return times[-1]

    fp32 = step_seconds(None)
    amp = amp_dtype(config.precision, device)
    train = fp32 if amp is None else step_seconds(amp)
    torch.random.set_rng_state(state)  # the demo's own draws are unchanged by the probe
    return fp32, train


def estimate_seconds(cfg: DemoConfig, step_s: float, clip: dict | None = None,
                     train_step_s: float | None = None) -> dict[str, float]:
    """{stage: estimated seconds} for the stages this demo will run, from one fp32 probe step of
    `step_s` seconds and one at the training precision of `train_step_s` (default `step_s`).
    `clip`: the user's clip ({frames, width, height}), else the synthetic set."""
    stages: dict[str, float] = {}
    if clip is None:
        stages["generate"] = STAGE_STEPS["generate"] * step_s
    if cfg.weights is None:
        stages["train"] = cfg.steps * TRAIN_STEP_COST * (train_step_s or step_s)
    # Calibrated with four encoders on the synthetic set (two ResNets) and one on a clip; the
    # built-in weights add one ResNet run to each.
    extra = _builtin() is not None
    if clip is None:
        stages["propagate"] = STAGE_STEPS["propagate"] * step_s * (1.5 if extra else 1.0)
    else:
        megapixels = clip["frames"] * clip["width"] * clip["height"] / 1e6
        stages["propagate"] = (CLIP_STEPS_PER_MEGAPIXEL * megapixels * step_s
                               * (2 if extra else 1))
    stages["report"] = STAGE_STEPS["report"] * step_s
    return stages


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _builtin() -> dict | None:
    """The sidecar of the built-in ResNet-18 weights, or None where this install has none."""
    from timecycle.encoder.builtin import builtin_info

    try:
        return builtin_info("resnet18")
    except UserError:
        return None


def _encoder(name: str, weights: Path | str | None, seed: int, protocol: str):
    """(encoder module or None for identity, provenance entries), as `propagate davis` loads
    them: a ResNet from `seed`, with the checkpoint's TimeCycle head as `--head auto` decides
    for `protocol`."""
    from timecycle.encoder.weights import load_encoder

    return load_encoder(name, weights, "auto", seed, protocol)


def _propagate(cfg: DemoConfig, root: DavisRoot, names: list[str], out: Path, encoder: str,
               weights: Path | str | None, evaluate: bool) -> float | None:
    """Propagate (and score) the DAVIS-layout `root` into `out` with the library functions
    that `timecycle propagate davis [--evaluate]` calls, printing the same lines."""
    from timecycle.engine.runtime import environment, resolve_device
    from timecycle.metrics.davis_eval import evaluate_davis
    from timecycle.propagation.davis import propagate_davis
    from timecycle.propagation.protocols import get_protocol
    from timecycle.propagation.video import FrameEncoder

    with output_folder(out):
        protocol = get_protocol(cfg.protocol)
        device = resolve_device(cfg.device)
        module, info = _encoder(encoder, weights, cfg.seed, protocol.name)
        frame_encoder = None if module is None else FrameEncoder(module, protocol, device)
        provenance = {"benchmark": "davis", "protocol": protocol.to_dict(), **info,
                      "davis_root": str(root.root.resolve()), "year": root.year,
                      "environment": environment(device)}
        stats = propagate_davis(root, names, out, frame_encoder, protocol, provenance)
        print(f"propagated {len(names)} sequences, {stats.frames} frames in {stats.seconds:.1f} s "
              f"({stats.frames_per_second:.2f} frames/s) -> {out}")
        if not evaluate:
            return None
        global_row, _, seq_means = evaluate_davis(root, out, names)
    width = max(len(n) for n in seq_means)
    for name, jf in seq_means.items():
        print(f"  {name:<{width}}  J&F {jf:.4f}")
    print(" ".join(f"{k} {v:.4f}" for k, v in global_row.items()))
    print(f"results written to {out}/global_results-val.csv")
    return float(global_row["J&F-Mean"])


def run_demo(cfg: DemoConfig) -> dict:
    """Run the demo; returns {encoder: J&F or None} and writes cfg.out/index.html.

    If it fails, what it wrote is removed again (a folder that existed keeps its old files).
    """
    if (cfg.video is None) != (cfg.mask is None):
        raise UserError("--video and --mask go together")
    if cfg.weights and not Path(cfg.weights).is_file():
        from timecycle.encoder.builtin import is_builtin

        if is_builtin(cfg.weights):
            raise UserError("demo --weights takes a checkpoint file; the built-in weights are "
                            "always scored beside it")
        raise UserError("no such checkpoint", cfg.weights)
    from timecycle.propagation.protocols import get_protocol

    get_protocol(cfg.protocol)  # an unknown name is reported now, not after the training
    if cfg.weights:  # a wrong file is reported now, not after generating data (~1 s)
        _encoder("resnet18", cfg.weights, cfg.seed, cfg.protocol)
    with output_folder(cfg.out) as out:
        return _run_demo(cfg, out)


def _run_demo(cfg: DemoConfig, out: Path) -> dict:
    start = time.perf_counter()
    clip = None
    if cfg.video:
        frames = _decode_clip(cfg.video)
        ids = _read_clip_mask(cfg.mask, frames)  # reported before the estimate and the training
        h, w = frames[0].shape[:2]
        clip = {"video": str(Path(cfg.video).resolve()), "frames": len(frames),
                "width": w, "height": h}
    _say("timing one training step to estimate how long this takes ...")
    fp32_step, train_step = probe_step_seconds(cfg)
    stages = estimate_seconds(cfg, fp32_step, clip, train_step)
    _say(f"estimated {_minutes(sum(stages.values()))} on this machine now: "
         + ", ".join(f"{k} {_minutes(v)}" for k, v in stages.items())
         + "; each stage shows a progress bar with the time left")
    if cfg.weights is None:
        what = "your clip" if clip else "the synthetic training videos"
        _say(f"it trains the small preset (ResNet-18) on {what} for {cfg.steps} steps, about "
             f"{_minutes(stages['train'])}" + ("; pass --weights CHECKPOINT (e.g. a run's "
                                               "last.pt) to skip training" if clip else ""))
    n_stages, stage = len(stages), iter(range(1, len(stages) + 1))

    def begin(name: str, text: str) -> None:
        _say(f"stage {next(stage)}/{n_stages}: {text} (about {_minutes(stages[name])})")

    if clip:
        _say(f"laying out {cfg.video} ({clip['frames']} frames, {clip['width']}x{clip['height']}) "
             "with its first-frame mask")
        eval_root = _clip_root(out, frames, ids)
        train_data = eval_root / "JPEGImages" / "480p"
    else:
        begin("generate", "generating synthetic training videos and a labelled evaluation set")
        train_data, eval_root = _generate(out, cfg.seed)
    weights = Path(cfg.weights).resolve() if cfg.weights else None
    if weights is None:
        begin("train", f"training the small preset for {cfg.steps} steps (ResNet-18, CPU-sized)")
        weights = _train(cfg, train_data, out)
    root = DavisRoot(eval_root)
    names = [SEQUENCE] if clip else root.sequence_names()
    evaluate = clip is None
    runs = {"trained": ("resnet18", weights), "built-in": ("resnet18", "builtin"),
            "random-init": ("resnet18", None), "pixel": ("pixel", None),
            "identity": ("identity", None)}
    builtin = _builtin()
    if builtin is None:
        del runs["built-in"]
    if clip:
        runs = {k: v for k, v in runs.items() if k in ("trained", "built-in")}
    begin("propagate", f"propagating the first-frame masks with {len(runs)} encoder(s), "
                       f"{cfg.protocol} protocol" + (", then scoring them" if evaluate else ""))
    scores: dict[str, float | None] = {}
    for label, (encoder, w) in runs.items():
        _say(f"  {label} ({encoder})")
        scores[label] = _propagate(cfg, root, names, out / "results" / label, encoder, w, evaluate)
    begin("report", "writing the report pages and animations")
    report = _report(out, scores, root, cfg, clip, trained=cfg.weights is None,
                     builtin=builtin if "built-in" in runs else None)
    elapsed = time.perf_counter() - start
    write_json_atomic(out / "summary.json", {"scores": scores, "seconds": round(elapsed, 1),
                                             "estimated_seconds": round(sum(stages.values()), 1),
                                             "protocol": cfg.protocol, "weights": str(weights),
                                             "clip": clip})
    _say(f"done in {elapsed / 60:.1f} min")
    if evaluate:
        _say("J&F-Mean on the synthetic evaluation set (higher is better):")
        for label, jf in scores.items():
            _say(f"  {label:<12} {jf:.3f}")
    _say(f"report: {report}")
    return scores


def _report(out: Path, scores: dict[str, float | None], root: DavisRoot, cfg: DemoConfig,
            clip: dict | None, trained: bool, builtin: dict | None = None) -> Path:
    """An index page: what was run (the synthetic set or the user's clip, the protocol), the
    scores of each encoder as a table and a bar chart, linking each run's own report (animated
    overlays, per-sequence scores) and the training curves."""
    import html

    from timecycle.visualisation.curves import write_training_report
    from timecycle.visualisation.report import PAGE_CSS, bar_chart_svg, write_report

    e = html.escape
    rows = ["<tr><th>encoder</th><th>J&amp;F-Mean</th><th>report</th></tr>"]
    for label, jf in scores.items():
        page = write_report(out / "results" / label, root=root.root)
        href = e(page.relative_to(out).as_posix())
        score = "-" if jf is None else f"{jf:.3f}"
        rows.append(f'<tr><td>{e(label)}</td><td>{score}</td>'
                    f'<td><a href="{href}">overlays and per-sequence scores</a></td></tr>')
    table = "<table>" + "".join(rows) + "</table>"
    encoder = (f"a ResNet-18 trained for {cfg.steps} steps (small preset, {e(cfg.loss)} loss) on "
               + ("this clip" if clip else "separate synthetic training videos") if trained
               else f"the checkpoint <code>{e(str(Path(cfg.weights).resolve()))}</code>")
    protocol = f"the <code>{e(cfg.protocol)}</code> propagation protocol"
    shipped = "" if builtin is None else (
        f"; <b>built-in</b>: the weights shipped with timecycle (<code>--weights builtin</code>), "
        f"a ResNet-18 trained on real unlabeled video by <code>{e(str(builtin.get('command')))}"
        f"</code> ({e(str(builtin.get('steps')))} steps)")
    if clip:
        what = (f"<p>Your clip <code>{e(clip['video'])}</code> ({clip['frames']} frames, "
                f"{clip['width']}x{clip['height']}): its first-frame mask propagated to every later "
                f"frame with {protocol}, by {encoder}{shipped}. Not scored: the clip has no ground-truth "
                "masks after the first frame; judge the overlays.</p>")
    else:
        what = (f"<p>Label propagation of first-frame masks with {protocol} on synthetic "
                f"sequences the encoder never saw, scored with the DAVIS J&amp;F; the encoders: "
                f"<b>trained</b>: {encoder}{shipped}; <b>random-init</b>: the same network "
                "randomly initialised; <b>pixel</b>: the colour baseline; <b>identity</b>: every "
                "frame gets frame 0's mask.</p>")
    parts = [f"<!doctype html><meta charset='utf-8'><title>timecycle demo</title><style>{PAGE_CSS}</style>",
             "<h1>timecycle demo</h1>", what, table]
    if all(v is not None for v in scores.values()):
        parts.append(bar_chart_svg({k: float(v) for k, v in scores.items()}, "J&F-Mean"))
    run = out / "train"
    if trained and (run / "metrics.jsonl").is_file():
        page = write_training_report(run)
        parts.append(f'<p><a href="{e(page.relative_to(out).as_posix())}">training curves and configuration</a></p>')
    index = out / "index.html"
    write_text_atomic(index, "\n".join(parts))
    return index


__all__ = ["DemoConfig", "run_demo"]
