"""Arguments and set-up shared by several commands: encoder, device, DAVIS root, and the
options, set-up and report that `timecycle propagate davis|jhmdb|vip` share."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

from timecycle.datasets.davis import DavisRoot
from timecycle.encoder import ENCODERS
from timecycle.errors import UserError
from timecycle.propagation.windows import DEFAULT_TILE, MAX_TILE


def add_encoder_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoder", default="resnet18", choices=ENCODERS,
                   help="identity and pixel are the no-learning baselines; vit-* are DINO's "
                        "ViTs (small or base, patch 16 or 8) (default: resnet18)")
    p.add_argument("--weights", help="checkpoint: torchvision ResNet, CRW, TimeCycle, a "
                                     ".safetensors file, a timecycle run's last.pt, 'builtin' "
                                     "(the package's own, resnet18), or DINO's (its ViTs for "
                                     "vit-*, its ResNet-50 for resnet50)")
    p.add_argument("--head", choices=("auto", "yes", "no"), default="auto",
                   help="TimeCycle 1x1 head on the encoder; auto (default): the checkpoint's "
                        "head under the timecycle protocol, layer3 under crw and dino, as "
                        "their reference code evaluates a TimeCycle checkpoint")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed without --weights (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")


# The default of an `evaluate` option that `take_recorded` fills.
RECORDED_DEFAULT = "what the results' propagation.json records"


def add_root_args(p: argparse.ArgumentParser, root: str, names: str, default: str,
                  recorded: bool = False) -> None:
    """--root and --videos of JHMDB and VIP: `root` and `names` describe them, `default` is
    the videos taken without --videos. `recorded`: `take_recorded` fills what is not given."""
    p.add_argument("--root", required=not recorded,
                   help=root + (f"; default: {RECORDED_DEFAULT}" if recorded else ""))
    first = f"{RECORDED_DEFAULT}, else " if recorded else ""
    p.add_argument("--videos", help=f"{names} (default: {first}{default})")


def add_davis_args(p: argparse.ArgumentParser, recorded: bool = False) -> None:
    """The DAVIS options. `recorded`: a results folder's propagation.json supplies the ones not
    given (`timecycle evaluate davis`)."""
    record = RECORDED_DEFAULT
    then = f"; default: {record}, else " if recorded else "; default "
    p.add_argument("--root", required=not recorded,
                   help="DAVIS root (JPEGImages/, Annotations/, ImageSets/)"
                        + (f"; default: {record}" if recorded else ""))
    p.add_argument("--sequences", help="a list file or comma-separated names"
                                       + then + "ImageSets/<year>/val.txt")
    p.add_argument("--year", type=int, choices=(2016, 2017), default=None if recorded else 2017,
                   help="2017: palettised ids; 2016: binary 0/255 masks" + then + "2017")
    p.add_argument("--annotations", help="annotation folder overriding Annotations/480p"
                                         + (f"; default: {record}" if recorded else ""))


# What propagation.json records of each benchmark's inputs: (root key, names key); DAVIS
# also records its year and annotation folder.
RECORDED_INPUTS = {"davis": ("davis_root", "sequences"), "jhmdb": ("jhmdb_root", "videos"),
                   "vip": ("vip_root", "videos")}


def take_recorded(args: argparse.Namespace, benchmark: str) -> None:
    """Fill the options not given (None) from the results' propagation.json: --root, the
    names (--sequences / --videos), and DAVIS's --year and --annotations, so that
    `evaluate BENCHMARK --results R` scores R as it was propagated. Given options win; a note
    says which were taken."""
    from timecycle.datasets.outputs import recover_interrupted
    from timecycle.propagation.results import PROVENANCE_FILE, read_provenance

    results = Path(args.results)
    if not results.is_dir():  # before "pass --root", which would send the user the wrong way
        raise UserError("results folder not found", results)
    recover_interrupted(results, reading=True)  # a killed rerun set the propagation's files aside
    record = read_provenance(results)
    if record is None or record.get("benchmark") != benchmark:
        record = {}
    where = results / PROVENANCE_FILE
    root_key, names_key = RECORDED_INPUTS[benchmark]
    fields = [("root", root_key, str), (names_key, names_key, list)]
    if benchmark == "davis":
        fields += [("year", "year", int), ("annotations", "annotations", str)]
    used = []
    for attr, key, kind in fields:
        if getattr(args, attr) is not None or key not in record:
            continue
        value = record[key]
        if not isinstance(value, kind):
            raise UserError(f"'{key}' is not a {kind.__name__}; pass --{attr}", where)
        shown = value
        if kind is list:  # [{"name": ..., "frames": ...}, ...]
            names = [item.get("name") if isinstance(item, dict) else None for item in value]
            if not names or not all(isinstance(n, str) for n in names):
                raise UserError(f"'{key}' does not list names; pass --{attr}", where)
            value = ",".join(names)
            shown = value if len(value) <= 60 else f"({len(names)} {key})"
        elif attr == "annotations":
            value = str(Path(args.root) / value)  # relative to the root when inside it
        setattr(args, attr, value)
        used.append(f"--{attr} {shown}")
    if args.root is None:
        raise UserError("pass --root: no propagation.json here records the dataset's root",
                        results)
    if used:
        print(f"timecycle: note: scoring as {where} records: {', '.join(used)}",
              file=sys.stderr)


def davis_root(args: argparse.Namespace) -> DavisRoot:
    return DavisRoot(args.root, year=args.year, annotations=args.annotations)


def check_out_apart(out: str | Path, inputs: Iterable[Path]) -> None:
    """A UserError if `out` (results to write) is one of the `inputs` folders (a dataset
    root's `inputs`) or lies inside one: the predictions would replace
    the frames or the ground truth they are read from, and then be scored against themselves
    (J&F 1.0 over destroyed data)."""
    where = Path(out).resolve()
    for folder in inputs:
        folder = folder.resolve()
        if where == folder or where.is_relative_to(folder):
            raise UserError(f"lies inside the dataset's input folder {folder}: results written "
                            "there would replace its frames or ground truth; choose a folder "
                            "outside it", out)


def check_out_not_frames(out: str | Path, video: str | Path) -> None:
    """A UserError if `out` is the frame folder `video` itself: the outputs (PNG and WebP
    images) would be read as frames by the next run on it, or by a benchmark's."""
    if Path(out).resolve() == Path(video).resolve():
        raise UserError("is the video's frame folder: the results would be written among its "
                        "frames; choose another --out", out)


def recorded_annotations(root: DavisRoot) -> str:
    """The annotation folder as propagation.json records it: relative to the root when inside
    it, so that a moved DAVIS root (`evaluate davis --root NEW`) still finds it."""
    folder = root.annotations.resolve()
    base = root.root.resolve()
    return folder.relative_to(base).as_posix() if folder.is_relative_to(base) else str(folder)


def load_encoder(args: argparse.Namespace, protocol: str):
    """(encoder module or None for identity, provenance dict) from the encoder arguments, for
    propagation under `protocol` (a protocol family name: it decides `--head auto`)."""
    from timecycle.encoder.weights import load_encoder as load

    return load(args.encoder, args.weights, args.head, args.seed, protocol)


def add_precision_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="the encoder's arithmetic: fp32 (default: the protocols' reference "
                        "results) or bf16 autocast (about 2x the encoder's speed on GPUs and on "
                        "CPUs with native bf16; affinities stay fp32)")


def precision_notes(args: argparse.Namespace, device) -> list[str]:
    """The notes a run records (and prints unless --quiet) about its --precision: bf16 on a CPU
    that emulates it."""
    import torch

    from timecycle.engine.runtime import emulated_bf16_note

    dtype = torch.bfloat16 if args.precision == "bf16" else None
    notes = [n for n in [emulated_bf16_note(dtype, device)] if n]
    if not getattr(args, "quiet", False):
        for note in notes:
            print(f"timecycle: note: {note}", file=sys.stderr)
    return notes


def add_propagate_args(p: argparse.ArgumentParser, protocols, out_help: str) -> None:
    """The encoder and the options every `timecycle propagate BENCHMARK` takes."""
    add_encoder_args(p)
    p.add_argument("--protocol", default="crw", help=f"one of {', '.join(protocols)} (default crw)")
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--batch-size", type=int, default=4, help="frames encoded at once (default 4)")
    p.add_argument("--tile", type=int, default=DEFAULT_TILE,
                   help=f"query tile of restricted windows (default {DEFAULT_TILE}, at most "
                        f"{MAX_TILE})")
    add_precision_arg(p)
    p.add_argument("--evaluate", action="store_true", help="score the predictions at the end")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def check_tile(args: argparse.Namespace) -> None:
    """--tile within 1..MAX_TILE: 0 fails deep inside, and a tile as large as the frame asks
    for a window product of hundreds of GB."""
    check_at_least(args, 1, "--tile")
    if args.tile > MAX_TILE:
        raise UserError(f"--tile must be <= {MAX_TILE}, got {args.tile} (a tile's window "
                        "product grows as its side to the fourth power)")


def check_at_least(args: argparse.Namespace, minimum: float, *flags: str,
                   strict: bool = False) -> None:
    """A UserError for the first of `flags` (e.g. "--tile") given below `minimum` (with
    `strict`, not above it): checked before any work, since 0 or a negative size fails deep
    inside (a division by zero) or is silently replaced."""
    for flag in flags:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        # `not (...)`: NaN is refused too.
        if value is not None and not (value > minimum if strict else value >= minimum):
            raise UserError(f"{flag} must be {'>' if strict else '>='} {minimum:g}, got {value:g}")


def check_positive(args: argparse.Namespace, *flags: str) -> None:
    """A UserError for the first of `flags` that is given and is not > 0."""
    check_at_least(args, 0, *flags, strict=True)


def uses_bf16(args: argparse.Namespace) -> bool:
    """--precision bf16 runs a network under autocast: pixel's colour conversion stays fp32
    (autocast changed it by up to 8e-4), identity has no features."""
    return args.precision == "bf16" and args.encoder not in ("identity", "pixel")


def start_propagation(args: argparse.Namespace, benchmark: str, protocol, dataset: dict):
    """(FrameEncoder or None for identity, provenance) for a propagation run.

    `dataset`: the benchmark's own provenance entries (its root, the DAVIS year ...).
    """
    from timecycle.engine.runtime import environment, resolve_device
    from timecycle.propagation.video import FrameEncoder

    device = resolve_device(args.device)
    encoder, enc_info = load_encoder(args, protocol.name)
    amp = uses_bf16(args)
    frame_encoder = None if encoder is None else FrameEncoder(encoder, protocol, device, amp=amp)
    provenance = {"benchmark": benchmark, "protocol": protocol.to_dict(), **enc_info, **dataset,
                  "precision": "bf16" if amp else "fp32", "environment": environment(device)}
    notes = precision_notes(args, device) if amp else []
    if notes:
        provenance["notes"] = notes
    return frame_encoder, provenance


def counted(n: int, noun: str) -> str:
    """"1 video", "3 videos": a count with its noun in the right number (regular plurals)."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def print_propagated(stats, count: int, unit: str, out: str) -> None:
    """One summary line; `unit` is the singular noun of what was propagated ("video")."""
    print(f"propagated {counted(count, unit)}, {counted(stats.frames, 'frame')} in "
          f"{stats.seconds:.1f} s "
          f"({stats.frames_per_second:.2f} frames/s) -> {out}")
