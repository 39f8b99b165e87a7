"""The GPU figures in one unattended call: environment, propagation, training, learning (issue 11).

    python bench/gpu.py --out DIR                  # on a GPU machine: at most ~7.7 minutes
    python bench/gpu.py --out DIR --smoke          # on the CPU at tiny sizes, about a minute
    python bench/gpu.py --pack .gpudata            # here: the data that travels to the GPU

Writes DIR/gpu.json (every figure, every skip with its reason, every error) and DIR/gpu.md
(the same as tables), and DIR/logs/<section>.log.
- environment: GPU, memory, driver, CUDA, cuDNN, torch, torchvision, CPU cores, libraries.
- propagation: a random ResNet-18 (seed 0; no weights travel) on DAVIS at full size, as many
  sequences as the budget allows: crw in fp32, then crw, dino and timecycle in fp32 and bf16
  (bf16 autocast encoder, fp32 affinities). Per run: end-to-end frames/s (reading JPEGs to
  writing PNGs), peak GPU memory, the encoder alone at the same frame size, precision and batch
  (the bound), J&F. One sequence is timed stage by stage (stages: decoding, encoder,
  propagation steps, output, each alone and synchronised), and run on the CPU: its J&F must
  equal the GPU's within 0.002 (cpu_check.ok). Then crw with a random TimeCycle head (512
  channels) on the encoder: its frames/s per channel against the plain encoder's 256; last,
  DINO's ViT-S/16 (random) under the dino protocol in fp32 and bf16.
- training: bench/train.py's worker for the `small` and `full` presets at their batch sizes,
  bf16 autocast, channels_last, eager and with the tracker's cycles compiled: clips/s,
  data-wait share with every CPU core a loader worker, MFU, and the step against the
  encoder's forward+backward alone; every run is profiled (GPU busy share, operator tables
  in DIR/profiles.txt). And `timecycle train --preset full` itself, at its default and with
  CUDA graphs (gpu_sections.TRAIN_RUNS gives the order, --train-runs another).
- learning: short runs of the `small-reflect-long` (TimeCycle) and `crw-small` (CRW) presets
  on the frame folders, up to their 1000 steps, scored on a DAVIS proxy during training, J&F
  before and after.

Budgets: the sections get `--seconds` (default 440) in the proportions of BUDGET; time a
section leaves unused goes to the next. A section stops its measurements at its budget and
says what it skipped; a section that fails or overruns (killed 20 s past its budget, with all
its processes) records the error, and the next one runs.

The GPU machine has no PyAV and no network. Training reads frame folders only; if `av` cannot
be imported, the sections get a stand-in module that fails when a video file is opened, as
the missing module would (the project imports `av` only then: timecycle/data/video.py).
--smoke always uses the stand-in, hiding an installed PyAV, so the test proves the path the
GPU machine takes. ../shared does not travel with
the working tree (64 MiB at most): `--pack .gpudata` copies a DAVIS subset (whole sequences,
smallest first, within --pack-mib) and the training frame folders scaled to short side 256
(the largest size any preset reads) into the repository, ignored by git, to carry.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = Path(os.environ.get("TIMECYCLE_DATA", REPO.parent / "shared" / "data"))
SECTIONS = ("environment", "propagation", "training", "learning")
# Shares of --seconds. Training's compiled runs are the longest single items and answer the
# one open target (2026-12-04 on an H200: propagation used 75 s, learning 95 s).
BUDGET = {"environment": 0.05, "propagation": 0.28, "training": 0.51, "learning": 0.16}
GRACE_S = 20  # past its budget a section is killed: it should have stopped itself by then
NOAV = '''"""Stand-in for PyAV where it is missing (bench/gpu.py): frame folders need none of it."""
time_base = 1000000
codecs_available = frozenset()


class FFmpegError(Exception):
    pass


def open(*args, **kwargs):
    raise FFmpegError("PyAV is not installed here: only frame folders can be read")
'''
# --smoke hides TensorBoard too (the GPU machine has none): `timecycle train` must run without.
NOTB = 'raise ImportError("TensorBoard hidden by bench/gpu.py --smoke, as on the GPU machine")\n'


def run_section(name: str, params: dict, budget: float, out: Path, env: dict) -> dict:
    """Run one section in its own process group; its record, status and seconds."""
    result, log = out / f".{name}.json", out / "logs" / f"{name}.log"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, str(HERE / "gpu_sections.py"), name, "--params",
           json.dumps({**params, "budget_s": budget}), "--result", str(result)]
    t0 = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            status = "ok" if proc.wait(timeout=budget + GRACE_S) == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the section, its loaders and workers
            proc.wait()
            status = "timed out"
    record = json.loads(result.read_text()) if result.is_file() else {}
    result.unlink(missing_ok=True)
    record = {"status": status, "budget_s": round(budget, 1),
              "seconds": round(time.monotonic() - t0, 1), **record}
    if status != "ok":
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        record["error"] = (f"killed {GRACE_S} s past its budget" if status == "timed out"
                           else (lines[-1] if lines else f"exit {proc.returncode}"))
        record["log_tail"] = lines[-15:]
    return record


def section_params(args, out: Path, videos: str, davis: str, workers: int) -> dict:
    """What every section reads: data, device, and the sizes of a full or a --smoke run."""
    common = {"smoke": args.smoke, "device": "cpu" if args.smoke else "auto", "davis": davis,
              "videos": videos, "workers": workers, "profiles": str(out / "profiles"),
              "threads": 1 if args.smoke else None}
    if args.smoke:
        tiny = {"short_side": 64, "crop": 64, "fps": None}
        return {**common, "train_steps": 1, "train_warmup": 1, "batch_size": 2,
                "train_override": {**tiny, "patch": 56},
                "steps": 2, "eval_every": 1, "eval_frames": 4, "eval_size": 64, "eval_s": 1.0,
                "min_run_s": 1, "small_override": {**tiny, "patch": 56, "batch_size": 2},
                "crw_override": {**tiny, "patch": 16, "walk_stride": 8, "batch_size": 2}}
    return {**common, "train_steps": 20, "train_warmup": 3, "steps": None, "eval_every": None,
            "eval_frames": 25, "eval_size": 240, "eval_s": 4.0, "min_run_s": 25,
            "small_override": {}, "crw_override": {}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="folder for gpu.json, gpu.md and logs/")
    ap.add_argument("--smoke", action="store_true", help="CPU, generated data, tiny sizes")
    ap.add_argument("--data", default=str(DATA),
                    help="holds DAVIS/ and videos/frames/ (default $TIMECYCLE_DATA or "
                         "../shared/data; on the GPU machine the carried .gpudata)")
    ap.add_argument("--seconds", type=float, help="total budget (default 440; --smoke 180)")
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--train-runs", metavar="LIST",
                    help="the training section's runs, comma-separated PRESET:COMPILE (default "
                         "gpu_sections.TRAIN_RUNS; engine:MODE is `timecycle train --preset "
                         "full --compile-cycles MODE`)")
    ap.add_argument("--pack", metavar="DIR", help="write the data to carry into DIR and exit")
    ap.add_argument("--pack-mib", type=float, default=58.0,
                    help="size limit of the pack (the working tree travels too: 64 MiB in all)")
    args = ap.parse_args()
    if args.pack:
        pack(Path(args.data), Path(args.pack), args.pack_mib)
        return
    if not args.out:
        ap.error("--out is required")
    started, t_start = dt.datetime.now(dt.timezone.utc), time.monotonic()
    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    total = args.seconds or (180.0 if args.smoke else 440.0)
    tmp = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    try:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        paths = [str(REPO / "src")]
        pyav = "installed"
        if args.smoke or importlib.util.find_spec("av") is None:
            (tmp / "noav").mkdir()
            (tmp / "noav" / "av.py").write_text(NOAV)
            paths.insert(0, str(tmp / "noav"))
            pyav = "hidden (--smoke: as on the GPU machine)" if args.smoke else "missing"
        tensorboard = "installed" if importlib.util.find_spec("tensorboard") else "missing"
        if args.smoke:
            (tmp / "notb" / "tensorboard").mkdir(parents=True)
            (tmp / "notb" / "tensorboard" / "__init__.py").write_text(NOTB)
            paths.insert(0, str(tmp / "notb"))
            tensorboard = "hidden (--smoke: as on the GPU machine)"
        env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [env.get("PYTHONPATH")] if p])
        if args.smoke:
            env.setdefault("OMP_NUM_THREADS", "1")
            videos, davis = _smoke_data(tmp)
            workers = 1
        else:
            videos, davis = str(Path(args.data) / "videos" / "frames"), str(Path(args.data) / "DAVIS")
            workers = len(os.sched_getaffinity(0))
        params = {**section_params(args, out, videos, davis, workers), "pyav": pyav,
                  "tensorboard": tensorboard,
                  "train_runs": args.train_runs.split(",") if args.train_runs else None}
        report = {"script": "bench/gpu.py", "smoke": args.smoke, "started": started.isoformat(
            timespec="seconds"), "budget_s": total, "data": args.data if not args.smoke
            else "generated (timecycle.datasets.synthetic)"}
        chosen = args.sections.split(",")
        for i, name in enumerate(SECTIONS):
            if name not in chosen:
                report[name] = {"status": "skipped", "skipped": "not in --sections"}
                continue
            later = sum(BUDGET[s] * total for s in SECTIONS[i + 1:] if s in chosen)
            budget = max(1.0, total - (time.monotonic() - t_start) - later)
            if name == "learning":  # the training section's rates set its evaluation interval
                params["steps_per_s"] = _steps_per_s(report.get("training", {}))
            report[name] = run_section(name, params, budget, out, env)
            print(f"{name}: {report[name]['status']} in {report[name]['seconds']} s "
                  f"(budget {budget:.0f} s)", flush=True)
            report["seconds"] = round(time.monotonic() - t_start, 1)
            _write(out, report)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"-> {out / 'gpu.json'}, {out / 'gpu.md'} ({report['seconds']} s)")


# ---------------------------------------------------------------------------------------------
# gpu.md


def _f(x, fmt: str = ".2f") -> str:
    """A table cell: floats with `fmt`, None empty, the rest as str."""
    return "" if x is None else format(x, fmt) if isinstance(x, float) else str(x)


def _table(head: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + [
        "| " + " | ".join(_f(c) for c in r) + " |" for r in rows]


def write_markdown(path: Path, r: dict) -> None:
    """gpu.md: one table per section, skips and errors in words."""
    lines = [f"# bench/gpu.py{' --smoke' if r['smoke'] else ''}, {r['started']}",
             f"Data: {r['data']}. Total {_f(r.get('seconds'), '.0f')} s of a "
             f"{r['budget_s']:.0f} s budget."]
    for name in SECTIONS:
        s = r.get(name)
        if s is None:
            continue
        lines += ["", f"## {name}", f"Status {s['status']}"
                  + (f", {s['seconds']:.0f} s of {s['budget_s']:.0f} s" if "seconds" in s else "")
                  + (f"; {s['skipped']}" if "skipped" in s else "")
                  + (f"; error: {s['error']}" if "error" in s else "") + "."]
        if name == "environment":
            keys = [k for k in s if k not in ("status", "budget_s", "seconds", "log_tail")]
            lines += [""] + _table(["", "value"], [[k, s[k]] for k in keys])
        elif name == "propagation":
            lines += [f"{s.get('dataset', '')}. Encoder: {s.get('encoder', '')}, on "
                      f"{s.get('device', '')}; e2e = reading JPEGs to writing PNGs; encoder = "
                      "the encoder alone, same size, precision and batch.", ""]
            lines += _table(
                ["protocol", "features", "size", "seqs", "frames", "e2e f/s", "encoder f/s",
                 "e2e/enc", "peak MiB", "J&F", "J", "F", "CUDA graph"],
                [[x["protocol"], x.get("features") or x.get("precision"),
                  "x".join(map(str, x.get("frame_size", []))), len(x.get("sequences", [])),
                  x.get("frames"), x.get("fps_e2e"), x.get("encoder_fps"),
                  x.get("e2e_over_encoder"), _f(x.get("peak_gpu_mib"), ".0f"),
                  _f(x.get("jf"), ".4f"), _f(x.get("j"), ".4f"), _f(x.get("f"), ".4f"),
                  x.get("cuda_graph")]
                 if "skipped" not in x else [x["protocol"], x["precision"], "skipped: "
                                             + x["skipped"]] + [""] * 10
                 for x in s.get("runs", [])])
            runs = {(r.get("protocol"), r.get("precision")): r for r in s.get("runs", [])}
            plain, head = runs.get(("crw", "fp32"), {}), runs.get(("crw-head", "fp32"), {})
            if "fps_e2e" in plain and "fps_e2e" in head:
                ratio = (head["fps_e2e"] * head["channels"]) / (plain["fps_e2e"] * plain["channels"])
                lines += ["", f"TimeCycle head (crw-head, {head['channels']} channels, random): "
                              f"{head['fps_e2e']:.1f} frames/s against {plain['fps_e2e']:.1f} for "
                              f"the plain encoder's {plain['channels']}: {ratio:.2f}x per channel."]
            st = s.get("stages")
            if st and "ms_per_frame" in st:
                lines += ["", f"Stages ({st['sequence']}, {st['frames']} frames, each alone, "
                              "ms per frame): " + ", ".join(
                                  f"{k} {v:.2f}" for k, v in st["ms_per_frame"].items())
                          + f"; sum {st['sum_ms_per_frame']:.2f} against "
                            f"{st['e2e_ms_per_frame']:.2f} end to end."]
                if "propagation_eager_ms_per_frame" in st:
                    lines[-1] += (f" Steps as a CUDA graph: {st.get('cuda_graph')}."
                                  f" Propagation launched eagerly instead of as a CUDA graph: "
                                  f"{st['propagation_eager_ms_per_frame']:.2f} ms per frame, "
                                  f"labels differing by at most "
                                  f"{st['graph_vs_eager_max_abs_diff']:.2g}.")
            c = s.get("cpu_check")
            if c:
                lines += ["", "CPU check: " + ", ".join(
                    f"{k} {_f(v, '.4f') if isinstance(v, float) else v}" for k, v in c.items())]
        elif name == "training":
            lines += [s.get("note", "") + f"; {s.get('workers', '')} loader workers.", ""]
            lines += _table(
                ["preset", "compile", "arch", "crop", "batch", "clips/s", "step s", "data wait",
                 "TFLOP/s", "MFU", "bound/step", "GPU busy", "peak MiB"],
                [[x["preset"], x["compile"], x.get("arch"), x.get("crop"), x.get("batch"),
                  x.get("clips_per_s"), _f(x.get("step_s"), ".3f"),
                  _f(100 * x["data_wait"], ".1f") + " %" if "data_wait" in x else "",
                  _f(x.get("tflops"), ".1f"),
                  _f(100 * x["mfu"], ".1f") + " %" if x.get("mfu") is not None
                  else ("n/a" if "mfu" in x else ""),
                  x.get("bound_ratio"),
                  _f(100 * x["device_busy"], ".0f") + " %" if x.get("device_busy") else "",
                  _f(x.get("peak_mb"), ".0f")]
                 if "clips_per_s" in x else [x["preset"], x["compile"],
                                             x.get("skipped") or "error: " + x.get("error", "")]
                 + [""] * 10 for x in s.get("runs", [])])
            lines += ["", "GPU busy: kernel time / step time over 3 profiled steps "
                          "(operator tables in profiles.txt)."]
        elif name == "learning":
            lines += [f"Proxy: {s.get('proxy', '')}. {s.get('note', '')}.", ""]
            lines += _table(
                ["objective", "preset", "steps", "clips", "s", "clips/s", "J&F before",
                 "J&F after", "during training (clips: J&F)"],
                [[x["objective"], x["preset"], x.get("steps"), x.get("clips"),
                  _f(x.get("seconds"), ".0f"), x.get("clips_per_s"), _f(x.get("jf_before"), ".4f"),
                  _f(x.get("jf_after"), ".4f"),
                  ", ".join(f"{c['clips']}: {c['jf']:.3f}" for c in x.get("curve", []))]
                 if "skipped" not in x else [x["objective"], x["preset"], "skipped: "
                                             + x["skipped"]] + [""] * 6
                 for x in s.get("runs", [])])
    path.write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------
# --pack


def pack(data: Path, dest: Path, limit_mib: float) -> None:
    """Copy what a GPU run reads into `dest`, at most `limit_mib`: the training frame folders
    scaled to short side 256 (JPEG quality 90), then whole DAVIS sequences, smallest first,
    with their DAVIS-2017 ground truth or, where there is none, their DAVIS-2016 masks."""
    import cv2
    import numpy as np
    from PIL import Image

    def size(path: Path) -> int:
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())

    if dest.exists():
        shutil.rmtree(dest)
    for folder in sorted(p for p in (data / "videos" / "frames").iterdir() if p.is_dir()):
        (dest / "videos" / "frames" / folder.name).mkdir(parents=True)
        for img in sorted(folder.iterdir()):
            if img.suffix.lower() not in (".jpg", ".jpeg", ".png"):
                continue
            rgb = np.asarray(Image.open(img).convert("RGB"))
            scale = 256 / min(rgb.shape[:2])
            if scale < 1:
                rgb = cv2.resize(rgb, (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)),
                                 interpolation=cv2.INTER_AREA)
            Image.fromarray(rgb).save(dest / "videos" / "frames" / folder.name
                                      / f"{img.stem}.jpg", quality=90)
    davis, out = data / "DAVIS", dest / "DAVIS"
    shutil.copytree(davis / "ImageSets", out / "ImageSets")

    def parts(name: str) -> list[str]:
        gt = "Annotations" if (davis / "Annotations" / "480p" / name).is_dir() else "Annotations_2016"
        return [f"JPEGImages/480p/{name}", f"{gt}/480p/{name}"]

    names = [d.name for d in (davis / "JPEGImages" / "480p").iterdir() if d.is_dir()]
    cost = {n: sum(size(davis / p) for p in parts(n)) for n in names}
    used, packed = size(dest), []
    for name in sorted(names, key=lambda n: (cost[n], n)):
        if used + cost[name] > limit_mib * 2**20:
            break
        for part in parts(name):
            shutil.copytree(davis / part, out / part)
        used += cost[name]
        packed.append(name)
    (dest / "PACK.json").write_text(json.dumps({
        "from": str(data), "mib": round(used / 2**20, 1), "davis_sequences": packed,
        "davis_left_out": sorted(set(names) - set(packed)),
        "videos": "videos/frames/* scaled to short side 256, JPEG quality 90"}, indent=1))
    print(f"{dest}: {used / 2**20:.1f} MiB, {len(packed)} DAVIS sequences "
          f"({len(names) - len(packed)} left out), training frames at short side 256")
    inside = dest.resolve().is_relative_to(REPO)
    if inside and subprocess.run(["git", "check-ignore", "-q", str(dest)], cwd=REPO).returncode:
        print(f"not ignored by git: echo /{dest.resolve().relative_to(REPO)}/ >> "
              ".git/info/exclude")


def _write(out: Path, report: dict) -> None:
    tmp = out / "gpu.json.tmp"
    tmp.write_text(json.dumps(report, indent=1, default=str))
    tmp.replace(out / "gpu.json")
    write_markdown(out / "gpu.md", report)


def _steps_per_s(training: dict) -> dict:
    """Steps/s of the eager small run (bf16, channels_last, as the learning run trains); the
    walk encodes 49 patches of 32 px per frame, ~3x the pixels of a small clip's frame."""
    rows = [r for r in training.get("runs", []) if r.get("preset") == "small"
            and r.get("compile") == "none" and r.get("clips_per_s")]
    if not rows:
        return {}
    rate = rows[0]["clips_per_s"] / rows[0]["batch"]
    return {"timecycle": rate, "crw": rate / 3}


def _smoke_data(tmp: Path) -> tuple[str, str]:
    sys.path.insert(0, str(REPO / "src"))
    from timecycle.datasets.synthetic import write_davis_root, write_training_videos

    write_training_videos(tmp / "videos", n_videos=3, seed=0, n_frames=20, height=72, width=88,
                          kind="translating")
    write_davis_root(tmp / "davis", 2, seed=0, n_frames=6, height=64, width=96)
    return str(tmp / "videos"), str(tmp / "davis")


if __name__ == "__main__":
    main()
