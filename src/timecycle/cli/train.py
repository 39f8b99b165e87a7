"""`timecycle train`: learn an encoder by cycle-consistency on a folder of unlabeled videos.

    timecycle train --data DIR --out RUN --preset small-reflect    # ~7 min on a 2-core CPU
    timecycle train --data DIR [--data DIR2] --out RUN             # the paper's recipe, 1 GPU
    timecycle train --data DIR --out RUN --batch-size 8 --accum 4  # batch 32 in less memory
    torchrun --standalone --nproc_per_node=8 -m timecycle train --data DIR --out RUN --batch-size 4
    timecycle train --out RUN --resume --steps 2000                # continue the newest checkpoint

The effective batch is --batch-size x --accum x processes (the paper: 32). Several nodes and
SLURM: see the README's Training section and timecycle/engine/train.py.

The config is the preset, then the flags given; with --resume it is the run's saved config,
then the flags given (steps, device, workers, logging, lr, accum may change; the model and the
clip stream may not).

SIGTERM or SIGUSR1 finish the current step, save RUN/last.pt and exit with status 75
(EX_TEMPFAIL); `--resume` continues. Ctrl-C stops at once (status 130); a user error exits 2.
"""

from __future__ import annotations

import argparse
import math
import sys
from contextlib import nullcontext
from pathlib import Path


def _fps(text: str) -> float:
    if text == "native":
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or 'native': {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError("must be a finite number > 0 (or 'native')")
    return value


def register(sub) -> None:
    from timecycle.engine.config import (
        ARCHS,
        BATCHNORMS,
        COMPILE_MODES,
        OBJECTIVES,
        PADDINGS,
        PRECISIONS,
        PRESETS,
    )
    from timecycle.losses import PRESETS as LOSSES
    from timecycle.losses.config import QUERIES

    p = sub.add_parser("train", help="train an encoder by cycle-consistency on unlabeled video",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", action="append", metavar="DIR",
                   help="folder of videos or frame folders; repeat for several (one index each)")
    p.add_argument("--out", required=True, metavar="RUN",
                   help="run folder: config.json, video_index.json, metrics.jsonl, tb/, "
                        "last.pt, step-*.pt (best.pt with --eval-davis)")
    p.add_argument("--preset", choices=PRESETS,
                   help="full (the paper, default), small (CPU), small-reflect (CPU: the "
                        "public code's loss, reflect padding, 250 steps; the TimeCycle recipe "
                        "that beat its random network here), small-reflect-long (the same at lr "
                        "5e-5 for 1000 steps), crw (videowalk's README), "
                        "crw-small (CPU)")
    p.add_argument("--objective", choices=OBJECTIVES,
                   help="timecycle: TimeCycle's cycles (default); crw: the contrastive random "
                        "walk (SPEC 9; preset crw unless --preset is given)")
    p.add_argument("--loss", choices=LOSSES, help="paper (default) or code (public code)")
    p.add_argument("--arch", choices=ARCHS)
    p.add_argument("--padding", choices=PADDINGS,
                   help="the encoder's convolution padding: zeros (torchvision's, presets full "
                        "and small) or reflect (CRW's, presets small-reflect, crw and crw-small)")
    p.add_argument("--short-side", type=int, metavar="PX", help="frames resized to (full: 256)")
    p.add_argument("--crop", type=int, metavar="PX", help="training crop (full: 240)")
    p.add_argument("--patch", type=int, metavar="PX", help="target patch (full: 80)")
    p.add_argument("--batch-size", type=int,
                   help="clips per process and micro-batch (full: 32 = the paper's batch)")
    p.add_argument("--accum", type=int, metavar="N",
                   help="micro-batches per step (gradient accumulation); effective batch = "
                        "batch-size x accum x processes")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimiser steps (overrides --epochs)")
    length.add_argument("--epochs", type=float,
                        help="passes of clips-per-video clips of every video (full: 30)")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="auto: bf16 autocast on CUDA and on CPUs with native bf16 "
                        "(AVX512-BF16/AMX), else fp32")
    p.add_argument("--resume", action="store_true",
                   help="continue the newest complete checkpoint of RUN")
    p.add_argument("--workers", type=int, help="DataLoader processes")
    # A bare --compile-cycles (the flag it was before the choice) means "on".
    p.add_argument("--compile-cycles", nargs="?", const="on", choices=COMPILE_MODES,
                   help="torch.compile the tracker's cycles (TimeCycle), about a minute: auto "
                        "(default) = on for CUDA, off on the CPU; graphs = on, replayed as "
                        "CUDA graphs (--accum 1 only). H200, full: 312 clips/s eager, 371 on, "
                        "417 graphs")
    p.add_argument("--threads", type=int,
                   help="CPU threads of the training process (default: torch's choice)")
    p.add_argument("--save-every", type=int, metavar="N",
                   help="steps between numbered checkpoints (full: 1000)")
    p.add_argument("--keep-last", type=int, metavar="N",
                   help="numbered checkpoints kept besides last.pt (default 3; 0: all)")
    p.add_argument("--save-minutes", type=float, metavar="M",
                   help="also refresh last.pt every M minutes (default 10; 0: off)")
    p.add_argument("--sync-bn", action="store_true", default=None,
                   help="several GPUs: BatchNorm statistics over all GPUs (SyncBatchNorm)")
    p.add_argument("--dist-timeout", type=float, metavar="M", dest="dist_timeout",
                   help="several processes: minutes a collective waits for a rank, e.g. "
                        "while rank 0 alone indexes a large corpus on a first run (default 30)")
    p.add_argument("--log-every", type=int, help="steps per metrics.jsonl line")
    p.add_argument("--probe-every", type=int, metavar="N",
                   help="steps between the unrelated-frames probes logged with the loss "
                        "(default 50; 0: never)")
    p.add_argument("--warmup-steps", type=int, help="first steps with the encoder frozen")
    p.add_argument("--query", choices=QUERIES,
                   help="tracked query: the patch encoded alone (paper, default) or the target "
                        "frame's features cropped under theta_gt")
    p.add_argument("--batchnorm", choices=BATCHNORMS,
                   help="batch: clip statistics (SPEC 2, default); frozen: BatchNorm kept in "
                        "eval mode at its initial statistics")
    p.add_argument("--walk-layer4", action=argparse.BooleanOptionalAction, default=None,
                   help="objective crw: train through a stride-1 layer4 that propagation drops, "
                        "as videowalk does (preset crw: on; crw-small: off)")
    p.add_argument("--eval-davis", metavar="ROOT",
                   help="score the encoder on held-out DAVIS sequences during training (a "
                        "reduced-size proxy: crw protocol, --eval-size, first --eval-frames "
                        "frames); logged as eval_jf, best kept as RUN/best.pt")
    p.add_argument("--eval-sequences", metavar="S",
                   help="comma-separated names or a list file (default: every sequence of "
                        "ROOT/ImageSets/2016/val.txt, else 2017)")
    p.add_argument("--eval-every", type=int, metavar="N", help="steps between evaluations (100)")
    p.add_argument("--eval-frames", type=int, metavar="N", help="first frames per sequence (25)")
    p.add_argument("--eval-size", type=int, metavar="PX", help="short side of the frames (240)")
    p.add_argument("--seed", type=int)
    p.add_argument("--lr", type=float, help="Adam learning rate (full: 2e-4)")
    p.add_argument("--fps", type=_fps, help="resample videos to this rate, or 'native' (full: 12)")
    p.add_argument("--deterministic", action="store_true", default=None,
                   help="deterministic kernels (exact on CPU)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_train)


def config_from_args(args: argparse.Namespace, resumed: tuple[Path, dict] | None = None):
    """The resolved TrainConfig: preset (or the resumed run's config), then the given flags.

    resumed: with --resume, the run's checkpoint as `latest_checkpoint` gives it, when the
        caller has read it already (else it is read here).
    """
    from timecycle.engine.checkpoint import latest_checkpoint
    from timecycle.engine.config import TrainConfig, apply_overrides, make_config
    from timecycle.errors import UserError

    overrides = dict(
        data=[str(Path(d).resolve()) for d in args.data] if args.data else None, out=args.out,
        objective=args.objective, loss=args.loss, query=args.query, batchnorm=args.batchnorm,
        walk_layer4=args.walk_layer4,
        arch=args.arch, padding=args.padding, short_side=args.short_side,
        crop=args.crop,
        patch=args.patch, batch_size=args.batch_size, accum=args.accum,
        steps=args.steps, save_minutes=args.save_minutes, sync_bn=args.sync_bn,
        dist_timeout_minutes=args.dist_timeout,
        epochs=args.epochs, device=args.device, precision=args.precision, workers=args.workers,
        threads=args.threads, compile_cycles=args.compile_cycles,
        save_every=args.save_every, keep_last=args.keep_last, log_every=args.log_every,
        probe_every=args.probe_every, warmup_steps=args.warmup_steps,
        seed=args.seed, lr=args.lr, deterministic=args.deterministic, progress=not args.quiet,
    )
    if args.eval_davis is not None:
        overrides["eval_davis"] = str(Path(args.eval_davis).resolve())
    if args.eval_sequences is not None:
        from timecycle.datasets.davis import read_sequence_list
        from timecycle.datasets.names import requested_names

        overrides["eval_sequences"] = requested_names(
            args.eval_sequences, Path(), read_sequence_list, "sequences", "--eval-sequences")
    overrides.update(eval_every=args.eval_every, eval_frames=args.eval_frames,
                     eval_size=args.eval_size)
    overrides = {k: v for k, v in overrides.items() if v is not None}  # flags not given
    if args.fps is not None:
        overrides["fps"] = args.fps or None  # 'native' (0) -> None: no resampling
    if args.resume:
        _, state = resumed or latest_checkpoint(args.out, report=False)
        saved = TrainConfig.from_dict(state["config"])
        if args.preset and args.preset != saved.preset:
            raise UserError(f"--preset {args.preset} given, but the run was made with "
                            f"--preset {saved.preset}; leave --preset out when resuming")
        return apply_overrides(saved, **overrides)
    if not args.data:
        raise UserError("--data DIR is required (a folder of videos or frame folders)")
    default = "crw" if args.objective == "crw" else "full"
    return make_config(args.preset or default, **overrides)


def run_train(args: argparse.Namespace) -> int:
    from timecycle.datasets.outputs import check_output_folder, output_folder
    from timecycle.engine.checkpoint import has_checkpoint, latest_checkpoint
    from timecycle.engine.distributed import world_from_env
    from timecycle.engine.logging import read_metrics
    from timecycle.engine.signals import EXIT_STOPPED, stop_on_signals
    from timecycle.engine.train import run_training

    check_output_folder(args.out)
    world = world_from_env()
    # Read once, here, and handed to the engine: a checkpoint of the full preset with Adam's
    # moments is ~300 MB. Rank 0 alone reports the damaged files it passes over.
    resumed = latest_checkpoint(args.out, report=world.is_main) if args.resume else None
    config = config_from_args(args, resumed)
    who = f"timecycle (rank {world.rank})" if world.distributed else "timecycle"
    # A failed run leaves nothing new in RUN unless it saved a checkpoint (kept for --resume);
    # rank 0 alone writes there, so it alone tidies.
    tidy = output_folder(config.out, keep=has_checkpoint) if world.is_main else nullcontext()
    with tidy, stop_on_signals(announce=who) as stop:
        outcome = run_training(config, resume=args.resume, stop=stop, resumed=resumed)
    last = outcome.run_dir / "last.pt"
    if outcome.stopped:
        cause = stop.signal_name or "another process's stop signal"
        print(f"{who}: stopped by {cause} after step {outcome.step} of {outcome.total_steps}; "
              f"saved {last}. Continue with: timecycle train --out {outcome.run_dir} --resume "
              f"(exit status {EXIT_STOPPED})", file=sys.stderr)
        return EXIT_STOPPED
    if not world.is_main:
        return 0
    if outcome.step >= outcome.total_steps and outcome.clips == 0:
        print(f"nothing to train: {last} is at step {outcome.step}, and this run ends at step "
              f"{outcome.total_steps}; pass a larger --steps (or --epochs) to go on")
        return 0
    records = read_metrics(outcome.run_dir)
    finite = [r for r in records if r.get("loss") is not None]
    skipped = ""
    if outcome.nonfinite:
        skipped = f" ({outcome.nonfinite} of {outcome.step} steps skipped as non-finite"
        if outcome.nonfinite_last:  # they changed nothing: last.pt is the step before's model
            skipped += (f", the last {outcome.nonfinite_last} in a row; {last.name} holds step "
                        f"{outcome.step - outcome.nonfinite_last}'s model")
        skipped += ")"
    if finite:
        first, final = finite[0], records[-1]
        overall = outcome.clips / max(outcome.seconds, 1e-9)
        # A log line's loss is the mean over its interval's finite steps: when the run ended
        # on skipped steps, the last line's is not the last step's, and none is quoted.
        end = ("non-finite" if outcome.nonfinite_last or final["loss"] is None
               else f"{final['loss']:.4f}")
        start = f"step {first['step']}" + (", its interval's finite steps"
                                           if first.get("nonfinite") else "")
        print(f"trained to step {outcome.step}{skipped}: loss {first['loss']:.4f} ({start}) "
              f"-> {end}, {final['clips_per_s']:.2f} clips/s "
              f"training ({outcome.clips} clips in {_duration(outcome.seconds)}, "
              f"{overall:.2f} clips/s with evaluations, probes and saves) -> {last}")
    else:
        print(f"done{skipped} -> {last}")
    return 0


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
