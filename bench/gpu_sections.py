"""The four sections of bench/gpu.py, each run by it in a process of its own (not a test).

    python bench/gpu_sections.py SECTION --params JSON --result FILE

A section gets its parameters (data folders, device, sizes, its time budget in seconds) and
writes its figures to FILE as it goes: after each measurement the whole record so far, so that
a section stopped at its budget still leaves what it measured. bench/gpu.py reads FILE,
whatever the exit status. Every skipped measurement is recorded with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# J&F of one sequence propagated on the GPU and on the CPU (fp32) may differ by at most this
# (issue 11): TF32 convolutions and another summation order, not another algorithm.
CPU_GPU_TOLERANCE = 0.002


class Record:
    """The section's result, rewritten to its file after every change (atomic rename)."""

    def __init__(self, path: Path):
        self.path, self.data = path, {}

    def set(self, **items) -> None:
        self.data.update(items)
        self.save()

    def append(self, key: str, item: dict) -> dict:
        self.data.setdefault(key, []).append(item)
        self.save()
        return item

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.path)


def cpu_count() -> int:
    """CPU cores this process may use (the affinity mask, not the machine's total)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


# ---------------------------------------------------------------------------------------------
# environment


def environment(p: dict, rec: Record) -> None:
    import platform

    import torch
    import torchvision

    from timecycle.engine.runtime import environment as provenance

    def version(module: str) -> str | None:
        try:
            return getattr(__import__(module), "__version__", "present")
        except ImportError:
            return None

    cuda = torch.cuda.is_available()
    gpu = {}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        gpu = {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
               "gpu_count": torch.cuda.device_count(), "sm_count": props.multi_processor_count,
               "compute_capability": f"{props.major}.{props.minor}"}
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version",
                                  "--format=csv,noheader"], capture_output=True, text=True,
                                 timeout=20)
            gpu["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 else None
        except (OSError, subprocess.SubprocessError, IndexError):
            gpu["driver"] = None
    mem = None
    if Path("/proc/meminfo").is_file():
        first = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()
        mem = round(int(first[1]) / 2**20, 1)  # MemTotal, kB -> GiB
    model = None
    if Path("/proc/cpuinfo").is_file():
        model = next((line.split(":", 1)[1].strip() for line in
                      Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), None)
    rec.set(**gpu, cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if cuda else None,
            torch=torch.__version__, torchvision=torchvision.__version__,
            python=platform.python_version(), cpu_count=cpu_count(),
            cpu_count_machine=os.cpu_count(), cpu_model=model, memory_gib=mem,
            torch_threads=torch.get_num_threads(),
            tf32={"cudnn": torch.backends.cudnn.allow_tf32,
                  "matmul": torch.backends.cuda.matmul.allow_tf32},
            numpy=version("numpy"), opencv=version("cv2"), scipy=version("scipy"),
            skimage=version("skimage"), pillow=version("PIL"), pyav=p["pyav"],
            tensorboard=p.get("tensorboard"),
            timecycle_git=provenance()["git"], device=p["device"])


# ---------------------------------------------------------------------------------------------
# propagation


def _protocols(smoke: bool) -> dict:
    """The three protocols; at --smoke the resized ones work at 64 px instead of 320 / 480."""
    from timecycle.propagation.protocols import CRW, DINO, TIMECYCLE

    if not smoke:
        return {"crw": CRW, "dino": DINO, "timecycle": TIMECYCLE}
    return {"crw": CRW, "dino": DINO.replace(size=64),
            "timecycle": TIMECYCLE.replace(size=64, label_canvas=64)}


def _sequence_names(davis: Path) -> list[str]:
    """The engine's default list (ImageSets/2016/val.txt, else 2017) in its order, those with
    frames on disk (the pack carries a subset); without a list, the folders on disk."""
    from timecycle.engine.evaluation import default_sequences
    from timecycle.errors import UserError

    on_disk = {d.name for d in (davis / "JPEGImages" / "480p").iterdir() if d.is_dir()}
    try:
        listed = default_sequences(davis)
    except UserError:  # no list file
        listed = []
    return [n for n in listed if n in on_disk] or sorted(on_disk)


def encoder_fps(encoder, device, hw: tuple[int, int], bf16: bool, batch: int,
                seconds: float) -> float:
    """Frames/s of the encoder alone on a batch already on the device, preprocessed, at the
    size and precision that propagation encodes: the bound of the end-to-end rate."""
    import torch
    from propagate_profile import sync as _sync

    x = torch.randn(batch, 3, *hw, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for _ in range(3):
            encoder(x)
        _sync(device)
        n, t0 = 0, time.perf_counter()
        while n < 2 or time.perf_counter() - t0 < seconds:
            encoder(x)
            n += 1
            if n % 10 == 0 or device.type != "cuda":
                _sync(device)
        _sync(device)
    return n * batch / (time.perf_counter() - t0)


# Runs of another encoder than the plain random ResNet-18: name -> (protocol, encoder, head).
# "crw-head": the crw protocol with a (random) TimeCycle head on the encoder, 512 channels:
# does it propagate at least as fast per channel as the plain encoder? "dino-vit-s16": DINO's
# ViT-S/16 (random) under its own protocol, ~2.6x the ResNet-18's arithmetic per 480p frame.
VARIANTS = {"crw-head": ("crw", "resnet18", True), "dino-vit-s16": ("dino", "vit-s16", False)}


def propagation(p: dict, rec: Record) -> None:
    import torch
    from propagate_profile import sync as _sync

    from timecycle.encoder import build_encoder
    from timecycle.engine.evaluation import DavisProxy
    from timecycle.engine.runtime import resolve_device
    from timecycle.metrics.davis_eval import evaluate_davis
    from timecycle.propagation.davis import propagate_davis
    from timecycle.propagation.resize import frame_size
    from timecycle.propagation.video import FrameEncoder

    start = time.monotonic()
    deadline = start + p["budget_s"]
    device = resolve_device(p["device"])
    protocols = _protocols(p["smoke"])
    names = _sequence_names(Path(p["davis"]))
    full = DavisProxy(p["davis"], names, frames=None, size=None)  # 2016 masks where 2017 lack
    warm = DavisProxy(p["davis"], names[:1], frames=3, size=None)
    tmp = Path(tempfile.mkdtemp(prefix="gpu-prop-"))
    frames_of = {n: len(full.root.sequence(n).frames) for n in names}
    h, w = full.root.sequence(names[0]).first_label()[0].shape
    rec.set(device=str(device), encoder="resnet18 (vit-s16 where a run says so), random "
            "(seed 0): no weights travel",
            dataset=str(full.label), sequences_available=names,
            frames_available=sum(frames_of.values()), frame_size=[h, w], runs=[])
    # Seconds of evaluation per frame (CPU), first guessed, then measured.
    eval_rate = {"s_per_frame": 0.03}

    def run(name: str, precision: str, device, share_end: float, names_in: list[str],
            bound: bool = True) -> dict:
        """Propagate `names_in` in order while the next sequence is predicted to end (with its
        evaluation) before `share_end`; then score what was done. `bound`: warm up first and
        time the encoder alone."""
        protocol_name, arch, head = VARIANTS.get(name, (name, "resnet18", False))
        protocol = protocols[protocol_name]
        bf16 = precision == "bf16"
        features = "bf16 autocast encoder, fp32 affinities" if bf16 else "fp32"
        if device.type == "cuda" and not bf16 and torch.backends.cudnn.allow_tf32:
            features += " (cuDNN's default TF32 convolutions)"
        row = {"protocol": name, "precision": precision, "device": str(device),
               "features": features,
               "frame_size": list(frame_size(protocol, h, w)), "batch": 4}
        enc = build_encoder(arch, head=head, seed=0)
        row["encoder"], row["channels"] = arch, enc.out_channels
        fe = FrameEncoder(enc, protocol, device, amp=bf16)
        if bound:
            propagate_davis(warm.root, warm.names, tmp / "warm", fe, protocol, {}, progress=False)
            row["encoder_fps"] = encoder_fps(fe.encoder, device, tuple(row["frame_size"]), bf16,
                                             4, 1.0 if device.type == "cuda" else 0.0)
        out = tmp / f"{name}-{precision}-{device.type}"
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        done, seconds, per_frame = [], 0.0, None
        for seq in names_in:
            guess = frames_of[seq] * ((per_frame or 0.05) + eval_rate["s_per_frame"])
            if done and time.monotonic() + guess > share_end:
                break
            t0 = time.perf_counter()
            propagate_davis(full.root, [seq], out, fe, protocol, {}, progress=False)
            _sync(device)
            seconds += time.perf_counter() - t0
            done.append(seq)
            per_frame = seconds / sum(frames_of[s] for s in done)
        n = sum(frames_of[s] for s in done)
        row.update(sequences=done, frames=n, seconds=round(seconds, 3), fps_e2e=n / seconds,
                   peak_gpu_mib=(torch.cuda.max_memory_allocated(device) / 2**20
                                 if device.type == "cuda" else None),
                   cuda_graph=graph_use(device, protocol))
        if bound:
            row["e2e_over_encoder"] = row["fps_e2e"] / row["encoder_fps"]
        t0 = time.perf_counter()
        glob, _, per_seq = evaluate_davis(full.root, out, done, progress=False)
        eval_rate["s_per_frame"] = (time.perf_counter() - t0) / n
        row.update(jf=float(glob["J&F-Mean"]), j=float(glob["J-Mean"]), f=float(glob["F-Mean"]),
                   per_sequence=per_seq, eval_seconds=round(time.perf_counter() - t0, 3))
        return row

    plan = [("crw", "fp32"), ("stages", None), ("cpu-check", None), ("crw", "bf16"),
            ("dino", "fp32"), ("dino", "bf16"), ("timecycle", "fp32"), ("timecycle", "bf16"),
            ("crw-head", "fp32"), ("dino-vit-s16", "fp32"), ("dino-vit-s16", "bf16")]
    first: dict | None = None
    cpu = torch.device("cpu")
    try:
        for i, (name, precision) in enumerate(plan):
            left = deadline - time.monotonic()
            if name == "cpu-check":
                rec.set(cpu_check=cpu_check(run, first, frames_of, deadline, cpu))
                continue
            if name == "stages":
                rec.set(stages=stages(first, full.root, frames_of, device, protocols["crw"],
                                      deadline))
                continue
            # The first run fixes the sequences (35% of the budget); the others share the rest.
            share = 0.35 * left if first is None else left / sum(
                1 for n, _ in plan[i:] if n not in ("cpu-check", "stages"))
            names_in = first["sequences"] if first else names
            need = frames_of[names_in[0]] * (first["seconds"] / first["frames"] if first else 0.05)
            if left < 5 or need > share * 1.5:
                rec.append("runs", {"protocol": name, "precision": precision,
                                    "skipped": f"time budget: {left:.0f} s left"})
                continue
            row = rec.append("runs", run(name, precision, device, time.monotonic() + share,
                                         names_in))
            first = first or row
            if name == "crw" and "cpu_check" in rec.data and "cpu_jf" in rec.data["cpu_check"]:
                check = rec.data["cpu_check"]
                key = f"{row['device'].split(':')[0]}_{precision}_jf"
                check[key] = row["per_sequence"].get(check["sequence"])
                if check[key] is not None:
                    check[f"diff_{precision}"] = abs(check[key] - check["cpu_jf"])
                rec.set(cpu_check=check)
    finally:
        full.close()
        warm.close()
        shutil.rmtree(tmp, ignore_errors=True)


def graph_use(device, protocol) -> str:
    """Whether the windowed steps just run were CUDA graphs: a capture that failed says so
    only in a warning, which the stage timing's silenced stderr would hide, and its steps
    would then be timed eager against eager."""
    from timecycle.propagation.propagator import cuda_graph_error

    if device.type != "cuda" or protocol.restrict == "none":
        return "no (eager: " + ("not CUDA)" if device.type != "cuda" else "no windows)")
    error = cuda_graph_error()
    return "yes" if error is None else f"no: the capture failed ({error})"


def _checked_sequence(first: dict, frames_of: dict) -> str:
    """The sequence the CPU check and the stage timing rerun: car-shadow (the CPU figures'
    sequence) if the first run did it, else its shortest."""
    return "car-shadow" if "car-shadow" in first["sequences"] else min(
        first["sequences"], key=lambda s: frames_of[s])


def stages(first: dict | None, root, frames_of: dict, device, protocol,
           deadline: float) -> dict:
    """Where one sequence's end-to-end time goes (crw, fp32): decoding the JPEGs, the encoder,
    the propagation steps, the output (resize, argmax, copy to the host, PNG), each timed
    alone with the device synchronised (bench/propagate_profile.py's stages); against the
    first run's end-to-end rate. The steps run twice: as a CUDA graph (the default) and
    eagerly, with the largest difference of their soft labels."""
    import numpy as np
    import torch
    from propagate_profile import encode, propagate, write_outputs

    from timecycle.encoder import build_encoder
    from timecycle.propagation.resize import downsample_label
    from timecycle.propagation.video import read_frames
    from timecycle.propagation.windows import DEFAULT_TILE

    if first is None or not first["sequences"]:
        return {"skipped": "the crw fp32 run did not complete"}
    name = _checked_sequence(first, frames_of)
    guess = 2 * frames_of[name] * first["seconds"] / first["frames"]
    if guess > 0.25 * (deadline - time.monotonic()):
        return {"sequence": name, "skipped": "time budget"}
    seq = root.sequence(name)
    seconds = {}
    t0 = time.perf_counter()
    frames = np.stack(list(read_frames(seq.frames)))
    seconds["read JPEGs"] = time.perf_counter() - t0
    feats, size, seconds["encoder"] = encode(build_encoder("resnet18", seed=0), protocol,
                                             frames, device)
    ids0, n_obj = seq.first_label()
    label0 = downsample_label(torch.from_numpy(ids0.astype(np.int64)).to(device), n_obj + 1,
                              tuple(feats.shape[-2:]), protocol)
    outs, seconds["propagation"], _ = propagate(protocol, feats, label0, DEFAULT_TILE)
    seconds["output"] = write_outputs(outs, protocol, size, ids0.shape)
    n = len(frames)
    per_frame = {k: round(1000 * v / n, 3) for k, v in seconds.items()}
    # The same steps without the CUDA graph (LabelPropagator's default on CUDA): what the
    # graph saves, and that it gives the same labels (the same kernels, so 0 is expected).
    graph = graph_use(device, protocol)  # before the eager run: a failure there says nothing
    eager, eager_s, _ = propagate(protocol, feats, label0, DEFAULT_TILE, cuda_graph=False)
    diff = max(float((a - b).abs().max()) for a, b in zip(outs, eager))
    return {"sequence": name, "frames": n, "cuda_graph": graph, "ms_per_frame": per_frame,
            "sum_ms_per_frame": round(sum(per_frame.values()), 3),
            "e2e_ms_per_frame": round(1000 * first["seconds"] / first["frames"], 3),
            "propagation_eager_ms_per_frame": round(1000 * eager_s / n, 3),
            "graph_vs_eager_max_abs_diff": diff}


def cpu_check(run, first: dict | None, frames_of: dict, deadline: float, cpu) -> dict:
    """The shortest sequence of the first (crw fp32) run, propagated again on the CPU: its
    J&F must equal the device's within CPU_GPU_TOLERANCE."""
    if first is None or not first["sequences"]:
        return {"skipped": "the crw fp32 run did not complete"}
    seq = _checked_sequence(first, frames_of)
    left = deadline - time.monotonic()
    # A CPU is ~20-50x slower than the GPU at this; 3 s/frame is a 2-core machine's rate.
    guess = frames_of[seq] * (0.5 if first["device"].startswith("cuda") else 3 * first[
        "seconds"] / first["frames"])
    if guess > 0.5 * left:
        return {"sequence": seq, "skipped": f"time budget: {left:.0f} s left, ~{guess:.0f} s "
                                            "needed"}
    row = run("crw", "fp32", cpu, float("inf"), [seq], bound=False)
    device_jf = first["per_sequence"][seq]
    diff = abs(device_jf - row["jf"])
    return {"sequence": seq, "frames": row["frames"], "cpu_jf": row["jf"],
            "cpu_fps_e2e": row["fps_e2e"], "cpu_threads": __import__("torch").get_num_threads(),
            f"{first['device'].split(':')[0]}_fp32_jf": device_jf, "diff_fp32": diff,
            "tolerance": CPU_GPU_TOLERANCE, "ok": diff <= CPU_GPU_TOLERANCE}


# ---------------------------------------------------------------------------------------------
# training (bench/train.py's worker, one process per configuration)


# What the training section runs, in order of what is still open (2026-12-04, H200: the bench
# measured `full` at 0.59 of the bound eager, 0.71 compiled, 0.83 as CUDA graphs): `full` eager
# for the bound, then `timecycle train --preset full` itself at its default (engine:auto, the
# cycles compiled on CUDA) and with CUDA graphs, then the bench's variants as the budget allows.
# bench/gpu.py --train-runs.
TRAIN_RUNS = ("full:none", "engine:auto", "engine:graphs", "small:none", "full:cycles",
              "full:cycles-graphs", "small:cycles")
# Seconds a run needs at least on a GPU: start-up, loader, cuDNN autotuning, and for
# compiling, the cycles' forward and backward graphs (2026-12-04, H200: 52 s for `full` eager,
# 80 s with the cycles compiled, 67 s as CUDA graphs with inductor's cache warm).
NEED_S = {"none": 20, "cycles": 50, "cycles-graphs": 60, "auto": 60, "graphs": 60}


def training(p: dict, rec: Record) -> None:
    deadline = time.monotonic() + p["budget_s"]
    smoke, workers = p["smoke"], p["workers"]
    # Eager, then the tracker's cycles compiled (`timecycle train --compile-cycles`): the
    # eager `full` step is launch-bound (README). Compiling the whole model did not finish in
    # 107 s for `full` on an H200 (2026-12-04); `bench/train.py --compile model` still can.
    configs = [tuple(item.split(":")) for item in p.get("train_runs") or TRAIN_RUNS]
    rec.set(data=p["videos"], workers=workers, runs=[],
            note="bench/train.py's worker (bf16 autocast and channels_last on CUDA), then "
                 "`timecycle train --preset full` itself (engine rows)")
    for i, (preset, mode) in enumerate(configs):
        row = {"preset": preset, "compile": mode}
        left = deadline - time.monotonic()
        # Each may run on as long as the ones after it keep their minimum.
        limit = max(NEED_S[mode], left - sum(NEED_S[c] for _, c in configs[i + 1:]))
        if smoke and mode not in ("none", "auto"):
            rec.append("runs", {**row, "skipped": "not at --smoke: compiling takes a minute on "
                                                   "a CPU (tests/test_cycle.py compiles)"})
            continue
        if not smoke and left < NEED_S[mode]:
            rec.append("runs", {**row, "skipped": f"time budget: {left:.0f} s left, "
                                                   f"~{NEED_S[mode]} s needed"})
            continue
        if preset == "engine":
            rec.append("runs", {**row, **engine_run(p, mode, min(left, limit), rec)})
            continue
        cmd = [sys.executable, str(HERE / "train.py"), "--worker", "--preset", preset,
               "--data", p["videos"], "--device", p["device"], "--workers", str(workers),
               "--precision", "auto", "--compile", mode,
               "--steps", str(p["train_steps"]), "--warmup", str(p["train_warmup"])]
        # Every run is profiled too (3 steps): the GPU's busy share says whether the step
        # waits on launches; the operator tables are gathered into DIR/profiles.txt.
        cmd += ["--profile", p["profiles"]]
        cmd += ["--batch-size", str(p["batch_size"])] if p.get("batch_size") else []
        cmd += ["--override", json.dumps(p["train_override"])] if p.get("train_override") else []
        t0 = time.monotonic()
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=min(left, limit))
        except subprocess.TimeoutExpired:
            rec.append("runs", {**row, "error": f"timed out after {min(left, limit):.0f} s"})
            continue
        sys.stderr.write(out.stderr)
        if out.returncode != 0:
            tail = out.stderr.strip().splitlines()[-1:] or [f"exit {out.returncode}"]
            rec.append("runs", {**row, "error": tail[0]})
            continue
        result = json.loads(out.stdout.strip().splitlines()[-1])
        rec.append("runs", {**row, **result, "seconds": round(time.monotonic() - t0, 1)})
    # One file for all tables: the GPU machine returns at most 8 files.
    tables = sorted(Path(p["profiles"]).glob("*.txt")) if Path(p["profiles"]).is_dir() else []
    if tables:
        text = "".join(f"== {t.stem}\n{t.read_text()}\n\n" for t in tables)
        Path(p["profiles"]).with_suffix(".txt").write_text(text)
        shutil.rmtree(p["profiles"])


ENGINE_STEPS = 60  # 10 to compile and warm up, 50 timed (5 metrics lines)


def engine_run(p: dict, mode: str, seconds: float, rec: Record) -> dict:
    """`timecycle train --preset full` as a user runs it (its loader, logging, checkpoint
    writer; --compile-cycles `mode`), in a process of its own, stopped after ENGINE_STEPS
    steps or `seconds`: the step time is the median of its metrics lines after the first (which
    holds the compiling), against the encoder bound of this section's `full` eager run."""
    import statistics

    from timecycle.engine.logging import read_metrics

    run_dir = Path(tempfile.mkdtemp(prefix="gpu-engine-"))  # checkpoints stay off DIR
    steps = 4 if p["smoke"] else ENGINE_STEPS
    every = 1 if p["smoke"] else 10
    cmd = [sys.executable, "-m", "timecycle", "train", "--preset", "full", "--data", p["videos"],
           "--out", str(run_dir / "run"), "--device", p["device"], "--workers", str(p["workers"]),
           "--steps", str(steps), "--log-every", str(every), "--save-minutes", "0",
           "--compile-cycles", mode, "--quiet"]
    for key, value in (p.get("train_override") or {}).items():
        if value is not None:
            cmd += [f"--{key.replace('_', '-')}", str(value)]
    cmd += ["--batch-size", str(p["batch_size"])] if p.get("batch_size") else []
    t0 = time.monotonic()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds)
        if out.returncode != 0:
            sys.stderr.write(out.stderr)
            tail = out.stderr.strip().splitlines()[-1:] or [f"exit {out.returncode}"]
            return {"error": tail[0]}
        records = read_metrics(run_dir / "run")
        config = json.loads((run_dir / "run" / "config.json").read_text())["train"]
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {seconds:.0f} s"}
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    steady = [r for r in records[1:] if r.get("step_s")] or records
    step_s = statistics.median(r["step_s"] for r in steady)
    result = {"arch": config["arch"], "crop": config["crop"], "batch": config["batch_size"],
              "steps": steps, "step_s": step_s, "clips_per_s": config["batch_size"] / step_s,
              "data_wait": statistics.median(r.get("data_wait_s", 0.0) for r in steady) / step_s,
              "first_interval_s": records[0]["step_s"] * every if records else None,
              "seconds": round(time.monotonic() - t0, 1)}
    bound = [r for r in rec.data.get("runs", []) if r.get("preset") == "full"
             and r.get("compile") == "none" and r.get("bound_s")]
    if bound:
        result["bound_ratio"] = bound[0]["bound_s"] / step_s
    return result


# ---------------------------------------------------------------------------------------------
# learning


def learning(p: dict, rec: Record) -> None:
    from timecycle.engine.checkpoint import latest_checkpoint
    from timecycle.engine.config import make_config
    from timecycle.engine.evaluation import DavisProxy
    from timecycle.engine.logging import read_metrics
    from timecycle.engine.runtime import resolve_device
    from timecycle.engine.setup import build_model
    from timecycle.engine.train import run_training

    deadline = time.monotonic() + p["budget_s"]
    device = resolve_device(p["device"])
    names = _sequence_names(Path(p["davis"]))
    chosen = names  # the engine's default (every val sequence), those that travelled
    proxy = DavisProxy(p["davis"], chosen, p["eval_frames"], p["eval_size"])
    runs = Path(tempfile.mkdtemp(prefix="gpu-learning-"))  # checkpoints stay off DIR
    rec.set(device=str(device), data=p["videos"], proxy=str(proxy.label), runs=[],
            note="J&F before: the run's initial weights (same seed); after: its last.pt")
    # The TimeCycle recipe that learns on the CPU (README, "Training that learns": +0.09 to
    # +0.14 J&F over the random network at its 1000 steps, three seeds), and CRW's small one.
    objectives = [("timecycle", "small-reflect-long", p["small_override"]),
                  ("crw", "crw-small", p["crw_override"])]
    try:
        for i, (objective, preset, override) in enumerate(objectives):
            left = deadline - time.monotonic()
            share = left / (len(objectives) - i)
            row = {"objective": objective, "preset": preset}
            if share < p["min_run_s"]:
                rec.append("runs", {**row, "skipped": f"time budget: {left:.0f} s left"})
                continue
            run_dir = runs / preset
            # Steps/s measured by the training section (small preset), else a guess.
            steps_per_s = p["steps_per_s"].get(objective) or 5.0
            # Scoring the proxy costs a few seconds: ~4 evaluations while training.
            train_s = max(1.0, share - 3 * p["eval_s"])
            every = p["eval_every"] or max(5, int(steps_per_s * (train_s - 2 * p["eval_s"]) / 4))
            # The preset's own steps (1000 for both) unless --smoke: a run that gets there
            # within its share is the whole recipe; the timer stops one that does not.
            steps = {"steps": p["steps"]} if p["steps"] else {}
            config = make_config(preset, **steps, **{
                "data": [p["videos"]], "out": str(run_dir), "device": p["device"],
                "workers": p["workers"], "threads": p["threads"],
                "progress": False, "tensorboard": False, "eval_davis": p["davis"],
                "eval_sequences": chosen, "eval_every": every, "eval_frames": p["eval_frames"],
                "eval_size": p["eval_size"], "save_every": 10**6, "save_minutes": 0,
                "log_every": max(1, min(10, every)),
                # Eager: compiling (the default on CUDA) would take half of a run's share.
                "compile_cycles": "off", **override})
            t0 = time.monotonic()
            before = proxy.score(build_model(config).encoder, device)
            eval_s = time.monotonic() - t0
            stop = threading.Event()
            timer = threading.Timer(max(1.0, train_s - eval_s), stop.set)
            timer.start()
            try:
                outcome = run_training(config, stop=stop)
            finally:
                timer.cancel()
            _, state = latest_checkpoint(run_dir, report=False)
            model = build_model(config)
            model.load_state_dict(state["model"])
            after = proxy.score(model.encoder, device)
            records = read_metrics(run_dir)
            last = records[-1] if records else {}
            rec.append("runs", {
                **row, "arch": config.arch, "crop": config.crop, "batch": config.batch_size,
                "steps": outcome.step, "clips": outcome.step * config.clips_per_step(),
                "stopped_by_time": outcome.stopped, "eval_every": every,
                "seconds": round(time.monotonic() - t0, 1), "jf_before": before["J&F"],
                "jf_after": after["J&F"], "j_after": after["J"], "f_after": after["F"],
                "clips_per_s": last.get("clips_per_s"), "loss_last": last.get("loss"),
                "curve": [{"step": r["step"], "clips": r["samples"], "jf": r["eval_jf"]}
                          for r in records if r.get("eval_jf") is not None]})
    finally:
        proxy.close()
        shutil.rmtree(runs, ignore_errors=True)


SECTIONS = {"environment": environment, "propagation": propagation, "training": training,
            "learning": learning}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("section", choices=sorted(SECTIONS))
    ap.add_argument("--params", required=True, help="JSON")
    ap.add_argument("--result", required=True)
    args = ap.parse_args()
    params = json.loads(args.params)
    if params.get("threads"):
        import torch

        torch.set_num_threads(params["threads"])
    SECTIONS[args.section](params, Record(Path(args.result)))


if __name__ == "__main__":
    main()
