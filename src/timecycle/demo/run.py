"""The demo's stages: generate or lay out the data, train, propagate and score, report."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from timecycle.cli.common import print_propagated
from timecycle.cli.evaluate import evaluate_and_print
from timecycle.datasets.davis import DavisRoot
from timecycle.datasets.io import write_json_atomic
from timecycle.datasets.outputs import output_folder
from timecycle.demo.clip import SEQUENCE, clip_root, decode_clip, read_clip_mask
from timecycle.demo.config import DemoConfig, train_config
from timecycle.demo.estimate import estimate_seconds, minutes, probe_step_seconds
from timecycle.demo.report import write_index
from timecycle.errors import UserError


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


def _train(cfg: DemoConfig, data: Path, out: Path) -> Path:
    from timecycle.engine.train import train

    run = out / "train"
    shutil.rmtree(run, ignore_errors=True)
    train(train_config(cfg, data, run))
    return run / "last.pt"


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
        print_propagated(stats, len(names), "sequence", str(out))  # as `propagate davis` says it
        if not evaluate:
            return None
        global_row = evaluate_and_print(root, str(out), names)  # as `propagate --evaluate` does
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
        frames = decode_clip(cfg.video)
        ids = read_clip_mask(cfg.mask, frames)  # reported before the estimate and the training
        h, w = frames[0].shape[:2]
        clip = {"video": str(Path(cfg.video).resolve()), "frames": len(frames),
                "width": w, "height": h}
    _say("timing one training step to estimate how long this takes ...")
    fp32_step, train_step = probe_step_seconds(cfg)
    builtin = _builtin()
    stages = estimate_seconds(cfg, fp32_step, builtin=builtin is not None, clip=clip,
                              train_step_s=train_step)
    _say(f"estimated {minutes(sum(stages.values()))} on this machine now: "
         + ", ".join(f"{k} {minutes(v)}" for k, v in stages.items())
         + "; each stage shows a progress bar with the time left")
    if cfg.weights is None:
        what = "your clip" if clip else "the synthetic training videos"
        _say(f"it trains the small preset (ResNet-18) on {what} for {cfg.steps} steps, about "
             f"{minutes(stages['train'])}" + ("; pass --weights CHECKPOINT (e.g. a run's "
                                               "last.pt) to skip training" if clip else ""))
    n_stages, stage = len(stages), iter(range(1, len(stages) + 1))

    def begin(name: str, text: str) -> None:
        _say(f"stage {next(stage)}/{n_stages}: {text} (about {minutes(stages[name])})")

    if clip:
        _say(f"laying out {cfg.video} ({clip['frames']} frames, {clip['width']}x{clip['height']}) "
             "with its first-frame mask")
        eval_root = clip_root(out, frames, ids)
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
    report = write_index(out, scores, root, cfg, clip, trained=cfg.weights is None,
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
