"""Reading a results folder of each benchmark into what a report page shows.

Each benchmark has a small adapter that reads its results folder into `BenchmarkResults`
(scores, per-sequence score, provenance, clips to animate); the page itself knows no benchmark:
- davis: `<seq>/%05d.png` masks, `propagation.json`, `results-val.json` and the official CSVs.
- jhmdb: `<class>/<video>.npy` (T, 15, 2) joints, `propagation.json`, `pck.json`.
- vip: `<video>/<frame>.png` part masks, `propagation.json`, `miou.json`.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from timecycle.datasets.io import IMAGE_SUFFIXES, read_frame, read_json_object, read_mask
from timecycle.errors import UserError
from timecycle.propagation.results import read_provenance  # written last by every run
from timecycle.visualisation.overlay import fit_pair, fit_width, overlay_mask

REPORT_DIR = "report"  # a results folder's own report, never read as a sequence


@dataclass
class Clip:
    """One animation: `render()` yields its (H, W, 3) uint8 frames, made only when written."""

    name: str
    render: Callable[[], Iterator[np.ndarray]]
    caption: str = ""


@dataclass
class BenchmarkResults:
    benchmark: str
    score_name: str  # what the bar chart shows, e.g. "J&F"
    scores: list[dict[str, str]]  # the headline table: rows of column -> value
    per_sequence: dict[str, float]  # the bar chart; empty when the format has none
    provenance: dict
    clips: list[Clip]
    notes: list[str] = field(default_factory=list)
    reference: float | None = None  # a dashed line on the bar chart (the global score)
    per_label: str = "sequence"  # what one bar is
    reference_label: str = ""



def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"cannot read this CSV file ({err})", path) from None


def _frame_index(folder: Path | None) -> dict[str, Path]:
    """Frame files of a folder by stem; empty when the folder is missing."""
    if folder is None or not folder.is_dir():
        return {}
    return {p.stem: p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}


def mask_clip(name: str, mask_dir: Path, frame_dir: Path | None, max_width: int, caption: str = "") -> Clip:
    """Predicted id masks over their frames (masks over black where the frames are missing)."""
    masks = sorted(p for p in mask_dir.iterdir() if p.suffix.lower() == ".png") if mask_dir.is_dir() else []

    def render() -> Iterator[np.ndarray]:
        frames = _frame_index(frame_dir)
        for path in masks:
            ids = read_mask(path)
            frame_path = frames.get(path.stem)
            frame = read_frame(frame_path) if frame_path else np.zeros((*ids.shape, 3), np.uint8)
            frame, ids = fit_pair(frame, ids, max_width)
            # Contours about 1/240 of the width: visible at 480 px, not hiding small parts at 96.
            width = max(1, min(3, frame.shape[1] // 240))
            yield overlay_mask(frame, ids, alpha=0.5 if frame_path else 1.0, contour_width=width)

    return Clip(name, render, caption)


def _root(given: Path | None, recorded: str | None, what: str, notes: list[str]) -> Path | None:
    """The dataset root for frames: the one given (must exist), else the recorded one if present."""
    if given is not None:
        if not given.is_dir():
            raise UserError(f"{what} root not found", given)
        return given
    if recorded and Path(recorded).is_dir():
        return Path(recorded)
    notes.append(f"frames not found ({what} root {recorded or 'not recorded'}); predictions are "
                 "shown over black. Pass --root to show them over the frames.")
    return None


def _sequence_dirs(results: Path) -> list[str]:
    """Prediction folders, for results whose provenance does not list them."""
    return sorted(p.name for p in results.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and p.name != REPORT_DIR)


def load_davis(results: Path, root: Path | None, max_width: int) -> BenchmarkResults:
    """DAVIS: scores from the evaluation files (if evaluated), clips from the mask folders."""
    record = read_json_object(results / "results-val.json") or {}
    recorded = record.get("provenance", {})
    prov = read_provenance(results) or recorded.get("propagation") or {}
    notes: list[str] = []
    names = (recorded.get("sequences") or [s["name"] for s in prov.get("sequences", [])]
             or _sequence_dirs(results))
    scores = _read_csv(results / "global_results-val.csv")
    per_object = record.get("per_object") or _read_csv(results / "per-sequence_results-val.csv")
    jf: dict[str, list[tuple[float, float]]] = {}
    for row in per_object:  # "Sequence" is "<seq>_<id>"; a sequence name may hold "_" itself
        j, f = row.get("J-Mean"), row.get("F-Mean")
        if j not in (None, "") and f not in (None, ""):
            jf.setdefault(str(row["Sequence"]).rsplit("_", 1)[0], []).append((float(j), float(f)))
    # Per sequence: J and F averaged over its objects, J&F their mean (as `timecycle evaluate`).
    means = {n: np.mean(jf[n], axis=0) for n in names if n in jf}
    per_sequence = {n: float(m.mean()) for n, m in means.items()}
    if not scores:
        notes.append(_not_evaluated("davis", results))
    davis_root = _root(root, prov.get("davis_root") or recorded.get("davis_root"), "DAVIS", notes)
    n_objects = {s["name"]: s.get("n_objects") for s in prov.get("sequences", [])}
    clips = []
    for n in names:
        caption = "not scored"
        if n in means:
            caption = f"J&F {per_sequence[n]:.3f} (J {means[n][0]:.3f}, F {means[n][1]:.3f})"
        if n_objects.get(n):
            caption += f", {n_objects[n]} object{'s' if n_objects[n] > 1 else ''}"
        frame_dir = davis_root / "JPEGImages" / "480p" / n if davis_root else None
        clips.append(mask_clip(n, results / n, frame_dir, max_width, caption))
    reference = float(scores[0]["J&F-Mean"]) if scores and "J&F-Mean" in scores[0] else None
    return BenchmarkResults("davis", "J&F", scores, per_sequence, prov, clips, notes, reference,
                            "sequence", "J&F-Mean (a mean over objects)")


def _not_evaluated(benchmark: str, results: Path) -> str:
    return f"not evaluated yet: run `timecycle evaluate {benchmark} --root ROOT --results {results}`."


def _headline(record: dict) -> list[dict]:
    """The scalar fields of a benchmark's JSON record as one table row (none: not evaluated)."""
    row = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return [row] if row else []


def load_vip(results: Path, root: Path | None, max_width: int) -> BenchmarkResults:
    """VIP: mIoU and per-class IoU bars from miou.json; part masks over `<root>/Images/<video>`."""
    prov = read_provenance(results) or {}
    record = read_json_object(results / "miou.json") or {}
    notes = [] if record else [_not_evaluated("vip", results)]
    vip_root = _root(root, prov.get("vip_root"), "VIP", notes)
    per_video = {n: v["mIoU"] for n, v in record.get("per_video", {}).items() if v.get("mIoU") is not None}
    clips = [mask_clip(n, results / n, vip_root / "Images" / n if vip_root else None, max_width,
                       f"mIoU {per_video[n]:.3f}" if n in per_video else "")
             for n in [v["name"] for v in prov.get("videos", [])] or _sequence_dirs(results)]
    ious = {c: v for c, v in record.get("class_iou", {}).items() if v is not None}  # None: class absent
    return BenchmarkResults("vip", "IoU", _headline(record), ious, prov, clips, notes, record.get("mIoU"),
                            "class", "mIoU (nan-mean over classes)")


def load_jhmdb(results: Path, root: Path | None, max_width: int) -> BenchmarkResults:
    """JHMDB: PCK from pck.json, per-video PCK@0.1 bars; joints over `Rename_Images/<class>/<video>`."""
    prov = read_provenance(results) or {}
    record = read_json_object(results / "pck.json") or {}
    notes = [] if record else [_not_evaluated("jhmdb", results)]
    jhmdb_root = _root(root, prov.get("jhmdb_root"), "JHMDB", notes)
    scores = [{f"PCK@{a}": v for a, v in record["pck"].items()}] if record.get("pck") else []
    # PCK@0.1, the stricter of the two thresholds every paper reports (SPEC 7).
    per_video = {n: v["0.1"] for n, v in record.get("per_video", {}).items() if v.get("0.1") is not None}
    clips = []
    for path in sorted(results.glob("*/*.npy")):
        name = f"{path.parent.name}/{path.stem}"
        frame_dir = jhmdb_root / "Rename_Images" / name if jhmdb_root else None
        caption = f"PCK@0.1 {per_video[name]:.3f}" if name in per_video else ""
        clips.append(Clip(name, _skeleton_frames(path, frame_dir, max_width), caption))
    reference = (record.get("pck") or {}).get("0.1")
    return BenchmarkResults("jhmdb", "PCK@0.1", scores, per_video, prov, clips, notes, reference,
                            "video", "PCK@0.1 (mean over joints, all videos pooled)")


def _skeleton_frames(joints_path: Path, frame_dir: Path | None, max_width: int):
    def render() -> Iterator[np.ndarray]:
        from timecycle.metrics.jhmdb import read_prediction
        from timecycle.visualisation.skeleton import draw_skeleton

        # (T, 15, 2) x, y in pos_img's 1-based pixels; nan: not predicted. Read as `evaluate
        # jhmdb` reads it: a damaged or foreign .npy is a UserError naming it.
        joints = read_prediction(joints_path, 0)
        frames = sorted(_frame_index(frame_dir).items())
        for t in range(len(joints)):
            # Without frames: a black JHMDB-sized (320x240) canvas.
            frame = read_frame(frames[t][1]) if t < len(frames) else np.zeros((240, 320, 3), np.uint8)
            scale = min(1.0, max_width / frame.shape[1])
            yield draw_skeleton(fit_width(frame, max_width), (joints[t] - 1) * scale + 1)

    return render


ADAPTERS: dict[str, Callable[[Path, Path | None, int], BenchmarkResults]] = {
    "davis": load_davis, "jhmdb": load_jhmdb, "vip": load_vip,
}


def detect_benchmark(results: Path) -> str:
    """The benchmark of a results folder: recorded in its provenance, else told by its files."""
    prov = read_provenance(results) or {}
    if prov.get("benchmark") in ADAPTERS:
        return prov["benchmark"]
    if (results / "results-val.json").is_file() or (results / "global_results-val.csv").is_file():
        return "davis"
    if (results / "pck.json").is_file() or any(results.glob("*/*.npy")):
        return "jhmdb"
    if (results / "miou.json").is_file():
        return "vip"
    raise UserError("not a propagation results folder (no propagation.json, results-val.json, "
                    "pck.json or miou.json)", results)


__all__ = ["ADAPTERS", "BenchmarkResults", "Clip", "REPORT_DIR", "detect_benchmark", "load_davis",
           "load_jhmdb", "load_vip", "mask_clip"]
