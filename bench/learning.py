"""The learning benchmark: does training beat doing nothing? Recipes trained from scratch for an
equal budget on unlabeled video, scored on held-out DAVIS val sequences next to the baselines
that need no learning.

    python bench/learning.py --recipes tc-code-crop-frozenbn,crw-small --clips 4800 \\
        --minutes 60 --out bench-out/learning                    # a CPU-hour per recipe
    python bench/learning.py --runs tc=/path/RUN --out DIR        # score finished runs instead
    python bench/learning.py --runs tc300=/path/RUN/step-000300.pt --out DIR   # or a checkpoint
    python bench/learning.py --tiny --out /tmp/l                  # generated data, 8 clips: ~20 s

Budget: each recipe trains until it has seen `--clips` clips or `--minutes` minutes have
passed, whichever comes first (both are reported). During training the engine scores the
encoder on a reduced-size proxy every `--eval-every` steps (the learning curve); the final
figure scores the *last* checkpoint (not the proxy's best: that would select on the test
sequences) with `--final`: "full" = all frames at full size, crw protocol, on every sequence
of ../shared/data/DAVIS (DAVIS-2017 ground truth where it exists, DAVIS-2016 masks for the
rest, both named in the output), or "proxy".

Baselines (same evaluation): identity, pixel, the architecture randomly initialised as built
(BatchNorm running statistics at their defaults: eval-mode BatchNorm is then an affine map),
and the same random weights with BatchNorm statistics estimated on training clips (the fair
starting point of any network trained with batch statistics).

Writes OUT/results.csv, OUT/results.md (the README's table) and OUT/learning.png (J&F of the
proxy against clips seen, one line per recipe, baselines as flat lines).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("TIMECYCLE_DATA", HERE.parent.parent / "shared" / "data"))

# name -> (train preset, overrides). Budgets come from the command line.
RECIPES: dict[str, tuple[str, dict]] = {
    "tc-paper": ("small", {}),
    "tc-code-crop": ("small", {"loss": "code", "query": "crop", "warmup_steps": 150}),
    "tc-code-crop-frozenbn": ("small", {"loss": "code", "query": "crop", "warmup_steps": 150,
                                        "batchnorm": "frozen"}),
    # The public code's objective with CRW's reflect padding (README, Training that learns).
    "tc-code-reflect": ("small-reflect", {}),
    "crw-small": ("crw-small", {}),
    "crw-small-frozenbn": ("crw-small", {"batchnorm": "frozen"}),
}

# Rows that need no learning: identity, pixel, each objective's random network as built, and
# the same with BatchNorm statistics estimated on training clips.
BASELINES = ("identity", "pixel", "random", "random-bnstats")


def estimate_batchnorm(model, loader, batches: int) -> None:
    """Replace `model`'s BatchNorm running statistics by their mean over `batches` training
    batches (momentum None: a cumulative average), weights untouched."""
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for _, batch in zip(range(batches), loader):
            x = batch["patches"] if "patches" in batch else batch["frames"]
            model.encoder(x.flatten(0, x.dim() - 4))
    for m in norms:
        m.momentum = 0.1
    model.eval()


def baselines(args, proxy, final, configs) -> list[dict]:
    """Rows for identity, pixel, and each objective's random network with and without
    training-clip BatchNorm statistics."""
    import torch

    from timecycle.data import make_loader
    from timecycle.encoder import build_encoder
    from timecycle.engine.setup import build_dataset, build_model, index_videos

    device = torch.device("cpu")
    wanted = set(args.baselines.split(","))
    rows = [{"name": "identity", "kind": "baseline", "encoder": None},
            {"name": "pixel", "kind": "baseline", "encoder": build_encoder("pixel")}]
    rows = [r for r in rows if r["name"] in wanted]
    seen = set()
    for config in configs if wanted & {"random", "random-bnstats"} else []:
        key = (config.objective, config.arch, config.padding)
        if key in seen:
            continue
        seen.add(key)
        if "random" in wanted:
            rows.append({"name": f"random {config.arch} ({config.objective}), as built",
                         "kind": "baseline", "encoder": build_model(config).encoder})
        if "random-bnstats" not in wanted:
            continue
        videos = index_videos(config.data, Path(args.out), workers=1)
        loader = make_loader(build_dataset(config, videos), config.batch_size, args.workers,
                             start_index=0, seed=config.seed,
                             total=args.bn_batches * config.batch_size, block=config.batch_size)
        stats = build_model(config)
        estimate_batchnorm(stats, loader, args.bn_batches)
        rows.append({"name": f"random {config.arch} ({config.objective}), training-clip "
                             f"BatchNorm statistics", "kind": "baseline", "encoder": stats.encoder})
    for row in rows:
        t = time.time()
        row["proxy_jf"] = proxy.score(row["encoder"], device)["J&F"]
        row["final"] = final.score(row["encoder"], device, per_sequence=True) if final else None
        print(f"{row['name']:60s} proxy {row['proxy_jf']:.4f}"
              + (f"  final {row['final']['J&F']:.4f}" if final else "")
              + f"  ({time.time() - t:.0f} s)", flush=True)
    return rows


def run_recipe(args, name: str, config, upto: int | None = None) -> dict:
    """Train `config` within the budget (or read a finished run, its records up to step
    `upto` when given)."""
    from timecycle.engine.checkpoint import has_checkpoint
    from timecycle.engine.logging import read_metrics
    from timecycle.engine.train import run_training

    run = Path(config.out)
    started = time.time()
    if not args.runs:  # --runs scores what exists: never trains
        stop = threading.Event()
        timer = threading.Timer(args.minutes * 60, stop.set)
        timer.start()
        try:
            outcome = run_training(config, resume=has_checkpoint(run), stop=stop)
        finally:
            timer.cancel()
        print(f"{name}: step {outcome.step} of {outcome.total_steps} "
              f"({'time budget' if outcome.stopped else 'clip budget'})", flush=True)
    records = [r for r in (read_metrics(run) if (run / "metrics.jsonl").is_file() else [])
               if upto is None or r["step"] <= upto]
    curve = [(r["samples"], r["eval_jf"]) for r in records if r.get("eval_jf") is not None]
    last = records[-1] if records else {}
    return {"name": name, "kind": "recipe", "run": str(run), "curve": curve,
            "clips": last.get("samples"), "steps": last.get("step"),
            "minutes": round((time.time() - started) / 60, 1) if not args.runs else None,
            "config": config}


def score_run(row: dict, proxy, final) -> None:
    import torch

    from timecycle.encoder.resnet import ResNetEncoder
    from timecycle.encoder.weights import checkpoint_has_head, load_weights

    last = Path(row.get("checkpoint") or Path(row["run"]) / "last.pt")
    encoder = ResNetEncoder(row["config"].arch, head=checkpoint_has_head(last))
    load_weights(encoder, last)
    device = torch.device("cpu")
    row["proxy_jf"] = proxy.score(encoder, device)["J&F"]
    row["final"] = final.score(encoder, device, per_sequence=True) if final else None
    print(f"{row['name']:60s} proxy {row['proxy_jf']:.4f}"
          + (f"  final {row['final']['J&F']:.4f}" if final else ""), flush=True)


def write_outputs(out: Path, rows: list[dict], proxy_label: str, final_label: str | None) -> None:
    import numpy as np

    from timecycle.datasets.io import write_text_atomic
    from timecycle.visualisation.curves import plot
    from timecycle.visualisation.overlay import write_image

    fields = ["name", "kind", "clips", "steps", "minutes", "proxy_jf", "final_jf", "final_j",
              "final_f", "run"]
    table = []
    for r in rows:
        final = r.get("final") or {}
        table.append({"name": r["name"], "kind": r["kind"], "clips": r.get("clips"),
                      "steps": r.get("steps"), "minutes": r.get("minutes"),
                      "proxy_jf": _fmt(r.get("proxy_jf")), "final_jf": _fmt(final.get("J&F")),
                      "final_j": _fmt(final.get("J")), "final_f": _fmt(final.get("F")),
                      "run": r.get("run")})
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        w.writerows(table)
    head = "| name | clips seen | steps | minutes | proxy J&F | final J&F | J | F |"
    lines = [f"Proxy: {proxy_label}.", f"Final: {final_label or 'not run'}.", "", head,
             "|---|---|---|---|---|---|---|---|"]
    for t in table:
        lines.append(f"| {t['name']} | {t['clips'] or ''} | {t['steps'] or ''} | "
                     f"{t['minutes'] or ''} | {t['proxy_jf']} | {t['final_jf']} | "
                     f"{t['final_j']} | {t['final_f']} |")
    write_text_atomic(out / "results.md", "\n".join(lines) + "\n")
    per_seq = {r["name"]: r["final"]["sequences"] for r in rows if r.get("final")}
    if per_seq:
        write_text_atomic(out / "per_sequence.json", json.dumps(per_seq, indent=1))
    series = {r["name"]: [(float(c), float(j)) for c, j in r["curve"]]
              for r in rows if r.get("curve")}
    xmax = max([c for pts in series.values() for c, _ in pts] or [1.0])
    for r in rows:
        if r["kind"] == "baseline":
            series[r["name"]] = [(0.0, r["proxy_jf"]), (xmax, r["proxy_jf"])]
    image = plot(series, "held-out J&F while training (the proxy of results.md)", "clips seen",
                 "J&F (proxy)", size=(900, 480))
    write_image(out / "learning.png", np.asarray(image))


def _fmt(x) -> str:
    return "" if x is None else f"{x:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", default="tc-code-crop-frozenbn,crw-small",
                    help=f"comma-separated, from {', '.join(RECIPES)}")
    ap.add_argument("--runs", nargs="*", metavar="NAME=RUN",
                    help="score finished runs (and their eval curves) instead of training; RUN "
                         "is a run folder (its last.pt) or one of its checkpoint files")
    ap.add_argument("--data", default=str(DATA / "videos"))
    ap.add_argument("--davis", default=str(DATA / "DAVIS"))
    ap.add_argument("--clips", type=int,
                    help="clip budget per recipe (default 4800; with --tiny and no --minutes, 8)")
    ap.add_argument("--minutes", type=float, help="time budget per recipe (default 60)")
    ap.add_argument("--eval-every", type=int, default=100, help="steps between proxy scores")
    ap.add_argument("--eval-sequences", default=None,
                    help="default: the engine's, every sequence of ImageSets/2016/val.txt")
    ap.add_argument("--eval-frames", type=int, default=25)
    ap.add_argument("--eval-size", type=int, default=240)
    ap.add_argument("--final", choices=("full", "proxy", "none"), default="full")
    ap.add_argument("--final-sequences", default=None,
                    help="default: every sequence of DAVIS/ImageSets/2016/val.txt")
    ap.add_argument("--bn-batches", type=int, default=25, help="batches for BatchNorm statistics")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--baselines", default=",".join(BASELINES),
                    help=f"comma-separated, from {', '.join(BASELINES)}")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--baselines-only", action="store_true",
                    help="with --runs: score the baselines of the runs' architectures, not the runs")
    ap.add_argument("--tiny", action="store_true",
                    help="generated videos and DAVIS, tiny sizes and (unless --clips or --minutes "
                         "is given) 8 clips a recipe: the whole path in under a minute")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.clips is None:  # --tiny alone: 2 steps a recipe; given --minutes, the time decides
        args.clips = 8 if args.tiny and args.minutes is None else 4800
    if args.minutes is None:
        args.minutes = 60.0
    unknown = set(args.baselines.split(",")) - set(BASELINES)
    if unknown:
        ap.error(f"unknown --baselines {', '.join(sorted(unknown))}")
    if args.baselines_only and (not args.runs or args.no_baselines):
        ap.error("--baselines-only needs --runs and the baselines")

    import torch

    from timecycle.engine.config import PRESETS, make_config
    from timecycle.engine.evaluation import DavisProxy

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes: dict = {}
    if args.tiny:
        from timecycle.datasets.synthetic import write_davis_root, write_training_videos

        args.data, args.davis = str(out / "videos"), str(out / "davis")
        if not Path(args.data).is_dir():
            write_training_videos(args.data, n_videos=4, seed=0, n_frames=20, height=72,
                                  width=88, kind="translating")
            write_davis_root(args.davis, 2, seed=0, n_frames=6, height=64, width=96)
        names = sorted(p.name for p in (Path(args.davis) / "JPEGImages" / "480p").iterdir())
        args.eval_sequences = args.final_sequences = ",".join(names)
        args.eval_frames, args.eval_size, args.bn_batches = 4, 64, 1
        sizes = {"short_side": 64, "crop": 64, "fps": None, "batch_size": 4, "workers": 0}
    proxy = DavisProxy(args.davis, args.eval_sequences and args.eval_sequences.split(","),
                       args.eval_frames, args.eval_size)
    final = None
    if args.final != "none":
        # None: the engine's default, every sequence of ImageSets/2016/val.txt (else 2017).
        names = args.final_sequences and args.final_sequences.split(",")
        final = (DavisProxy(args.davis, names, None, None) if args.final == "full" else
                 DavisProxy(args.davis, names, args.eval_frames, args.eval_size))
    try:
        rows, configs, steps = [], [], {}  # (step, clips) of the checkpoint files given as RUN
        pairs = [tuple(r.split("=", 1)) for r in args.runs] if args.runs else \
            [(n, str(out / "runs" / n)) for n in args.recipes.split(",")]
        for name, run in pairs:
            if args.runs:
                from timecycle.engine.checkpoint import latest_checkpoint, load_checkpoint
                from timecycle.engine.config import TrainConfig

                # A run folder (its last.pt) or one of its checkpoints (step-000300.pt).
                checkpoint = (load_checkpoint(run) if Path(run).is_file() else
                              latest_checkpoint(run, report=False)[1])
                config = TrainConfig.from_dict(checkpoint["config"])
                if Path(run).is_file():  # its curve: the metrics of the run that wrote it
                    steps[run] = (checkpoint["step"], checkpoint["samples"])
                else:
                    config.out = run
            else:
                preset, overrides = RECIPES[name]
                tiny = ({"patch": 56} if PRESETS[preset].objective == "timecycle"
                        else {"patch": 16, "walk_stride": 8})
                config = make_config(preset, **{
                    **overrides, "data": [args.data], "out": run, "threads": args.threads,
                    "workers": args.workers, "progress": False, "tensorboard": False,
                    "eval_davis": args.davis, "eval_sequences": proxy.names,
                    "eval_every": args.eval_every, "eval_frames": args.eval_frames,
                    "eval_size": args.eval_size, "save_every": args.eval_every,
                    **(({**sizes, **tiny, "warmup_steps": min(overrides.get("warmup_steps", 0),
                                                              1)}) if args.tiny else {})})
                config.steps = max(1, args.clips // config.clips_per_step())
            configs.append(config)
        if not args.no_baselines:
            rows += baselines(args, proxy, final, configs)
        for (name, run), config in zip([] if args.baselines_only else pairs, configs):
            row = run_recipe(args, name, config, steps.get(run, (None,))[0])
            if run in steps:
                row["checkpoint"] = run
                row["steps"], row["clips"] = steps[run]
            score_run(row, proxy, final)
            rows.append(row)
        write_outputs(out, rows, str(proxy.label), str(final.label) if final else None)
        print(f"-> {out / 'results.md'}, {out / 'results.csv'}, {out / 'learning.png'}")
    finally:
        proxy.close()
        if final is not None:
            final.close()


if __name__ == "__main__":
    sys.exit(main())
