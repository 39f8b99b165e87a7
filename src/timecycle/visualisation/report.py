"""A self-contained HTML page for a folder of propagation results.

`write_report(results_dir)` writes `<results_dir>/report/index.html` and, beside it, one
animation per sequence. The page uses no network resource: styles and the bar chart (SVG) are
inline, and every `src` is a file in the report folder, so the folder can be copied or zipped
and opened anywhere.

Each benchmark has a small adapter that reads its results folder into `BenchmarkResults`
(scores, per-sequence score, provenance, clips to animate); the page itself knows no benchmark:
- davis: `<seq>/%05d.png` masks, `propagation.json`, `results-val.json` and the official CSVs.
- jhmdb: `<class>/<video>.npy` (T, 15, 2) joints, `propagation.json`, `pck.json`.
- vip: `<video>/<frame>.png` part masks, `propagation.json`, `miou.json`.
"""

from __future__ import annotations

import csv
import datetime as _dt
import html
import itertools
import json
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from timecycle import __version__
from timecycle.datasets.io import IMAGE_SUFFIXES, read_frame, read_mask, write_text_atomic
from timecycle.errors import UserError
from timecycle.visualisation.overlay import fit_pair, fit_width, overlay_mask, write_animation
from timecycle.propagation.results import PROVENANCE_FILE  # written last by every run

REPORT_DIR = "report"


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


# --------------------------------------------------------------------------------------------
# Reading results folders


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise UserError("cannot read this JSON file", path) from None


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


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
    record = _read_json(results / "results-val.json") or {}
    recorded = record.get("provenance", {})
    prov = _read_json(results / PROVENANCE_FILE) or recorded.get("propagation") or {}
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
    prov = _read_json(results / PROVENANCE_FILE) or {}
    record = _read_json(results / "miou.json") or {}
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
    prov = _read_json(results / PROVENANCE_FILE) or {}
    record = _read_json(results / "pck.json") or {}
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
        from timecycle.visualisation.skeleton import draw_skeleton

        joints = np.load(joints_path)  # (T, 15, 2) x, y in pos_img's 1-based pixels; nan: not predicted
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
    prov = _read_json(results / PROVENANCE_FILE) or {}
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


# --------------------------------------------------------------------------------------------
# The page


def _write_clip(path: Path, clip: Clip, fps: float) -> bool:
    """Write one clip's animation; False (and a caption saying so) when it has no frames."""
    frames = clip.render()
    first = next(frames, None)
    if first is None:
        clip.caption = (clip.caption + "; " if clip.caption else "") + "no frames"
        return False
    write_animation(path, itertools.chain([first], frames), fps)
    return True


def bar_chart_svg(values: dict[str, float], label: str, reference: float | None = None) -> str:
    """Inline SVG: one horizontal bar (`<rect class="bar">`) per sequence, on a 0..1 axis."""
    row, left, width = 18, 150, 420
    top = max(1.0, *values.values())
    height = row * len(values) + 34
    x = lambda v: left + width * max(v, 0) / top  # noqa: E731
    parts = [f'<svg class="chart" width="{left + width + 70}" height="{height}" role="img" '
             f'aria-label="{html.escape(label)} per sequence">']
    for k in range(6):
        tick = top * k / 5
        parts.append(f'<line x1="{x(tick):.1f}" y1="0" x2="{x(tick):.1f}" y2="{height - 20}" class="grid"/>'
                     f'<text x="{x(tick):.1f}" y="{height - 6}" class="tick">{tick:.1f}</text>')
    if reference is not None:  # drawn first: the bars and their labels stay on top of it
        parts.append(f'<line x1="{x(reference):.1f}" y1="0" x2="{x(reference):.1f}" y2="{height - 20}" '
                     f'class="reference"><title>global {html.escape(label)} {reference:.4f}</title></line>')
    for i, (name, v) in enumerate(values.items()):
        y = i * row + 2
        parts.append(f'<text x="{left - 6}" y="{y + 12}" class="name">{html.escape(name)}</text>'
                     f'<rect class="bar" x="{left}" y="{y}" width="{x(v) - left:.1f}" height="{row - 4}">'
                     f'<title>{html.escape(name)}: {v:.4f}</title></rect>'
                     f'<text x="{x(v) + 4:.1f}" y="{y + 12}" class="value">{v:.3f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _cell(value, numbers: bool) -> str:
    if numbers and not isinstance(value, int):
        try:  # scores: 4 decimals, as the official tools print them
            return f"{float(value):.4f}"
        except (TypeError, ValueError):
            pass
    return html.escape(str(value))


def html_table(rows: list[dict], numbers: bool = False) -> str:
    """An HTML table of `rows` (column -> value); `numbers`: floats shown with 4 decimals."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{_cell(v, numbers)}</td>" for v in r.values()) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            out[prefix + k] = f"{len(v)} entries"  # per-sequence stats: the clips show them
        else:
            out[prefix + k] = json.dumps(v) if not isinstance(v, str) else v
    return out


def provenance_summary(prov: dict) -> dict[str, str]:
    """The lines a reader checks first: protocol, encoder, weights hash, version, speed."""
    env, weights, protocol = prov.get("environment", {}), prov.get("weights"), prov.get("protocol", {})
    if weights:
        w = f"{weights.get('path')} ({weights.get('format')}), sha256 {weights.get('sha256')}"
    elif prov.get("encoder") in ("identity", "pixel"):
        w = "none (a no-learning baseline)"
    else:
        w = f"none: random initialisation (seed {prov.get('seed')})"
    if isinstance(protocol, dict):
        # The settings results differ by most (SPEC 6): context, top-k, temperature, restriction.
        keys = ("n_context", "topk", "temperature", "restrict", "radius", "frame_resize", "size")
        detail = ", ".join(f"{k} {protocol[k]:g}" if isinstance(protocol[k], float) else f"{k} {protocol[k]}"
                           for k in keys if protocol.get(k) not in (None, "", 0))
        protocol = f"{protocol.get('name', '?')} ({detail})"
    summary = {
        "protocol": str(protocol),
        "encoder": str(prov.get("encoder", "?")) + (" + TimeCycle head" if prov.get("head") else ""),
        "weights": w,
        "timecycle": f"{env.get('timecycle', '?')} (git {env.get('git') or 'unknown'})",
        "torch / device": f"{env.get('torch', '?')} / {env.get('device', '?')}",
        "run at": str(env.get("time", "?")),
    }
    if prov.get("frames_per_second") is not None:
        summary["speed"] = f"{prov.get('frames')} frames, {prov['frames_per_second']} frames/s"
    return summary


PAGE_CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}.note{background:#fff6d6;padding:6px 10px;border-left:4px solid #e0b000}
.warning{background:#fde4e1;padding:6px 10px;border-left:4px solid #c33}
.chart .bar{fill:#4a78b5}.chart .grid{stroke:#e4e4e4}.chart .reference{stroke:#c33;stroke-dasharray:4 3}
.chart text{font-size:11px}.chart .name{text-anchor:end}.chart .tick{text-anchor:middle;fill:#666}
.clips{display:flex;flex-wrap:wrap;gap:14px}figure{margin:0}figcaption{font-size:13px}
figure img,figure video{display:block;width:360px;height:auto;border:1px solid #ccc}
code{background:#f3f3f3}"""


def _page(res: BenchmarkResults, results: Path, assets: list[str]) -> str:
    e = html.escape
    out = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
           f"<title>timecycle {e(res.benchmark)} report</title><style>{PAGE_CSS}</style></head><body>",
           f"<h1>{e(res.benchmark.upper())} results: <code>{e(str(results))}</code></h1>"]
    out += [f'<p class="note">{e(n)}</p>' for n in res.notes]
    if res.scores:
        out.append("<h2>Scores</h2>" + html_table(res.scores, numbers=True))
    if res.per_sequence:
        out.append(f"<h2>{e(res.score_name)} per {e(res.per_label)}</h2>"
                   + bar_chart_svg(res.per_sequence, res.score_name, res.reference))
        if res.reference is not None:
            out.append(f"<p>Dashed line: the global {e(res.reference_label or res.score_name)}.</p>")
    summary = provenance_summary(res.provenance)
    full = [{"key": k, "value": v} for k, v in _flatten(res.provenance).items()]
    full = full or [{"key": "", "value": "none"}]
    out.append("<h2>Provenance</h2>" + html_table([{"": k, "value": v} for k, v in summary.items()])
               + "<details><summary>full record</summary>" + html_table(full) + "</details>")
    out.append('<h2>Sequences</h2><div class="clips">')
    for clip, asset in zip(res.clips, assets):
        media = ""  # a clip without frames: its caption says so
        if asset.endswith(".mp4"):
            media = f'<video src="{e(asset)}" autoplay loop muted playsinline></video>'
        elif asset:
            media = f'<img src="{e(asset)}" alt="{e(clip.name)}" loading="lazy">'
        caption = f"<figcaption><b>{e(clip.name)}</b> {e(clip.caption)}</figcaption>"
        out.append(f"<figure>{media}{caption}</figure>")
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    out.append(f"</div><p><small>written by timecycle {e(__version__)} at {e(stamp)}</small></p>"
               "</body></html>\n")
    return "\n".join(out)


def write_report(results_dir: str | Path, out: str | Path | None = None, root: str | Path | None = None,
                 fmt: str = "webp", fps: float = 10.0, max_width: int = 480, workers: int = 2) -> Path:
    """Write `<out or results_dir/report>/index.html` and one animation per sequence.

    Args:
        results_dir: a folder written by `timecycle propagate` (DAVIS, JHMDB or VIP).
        root: the dataset root holding the frames; default: the one recorded in the results.
        fmt: animation format, "webp", "gif" or "mp4".
        max_width: animations are downscaled to at most this width (keeps the folder small).
        workers: animations written at once (decoding and encoding release the GIL).
    Returns:
        the path of index.html.
    """
    results = Path(results_dir)
    if not results.is_dir():
        raise UserError("results folder not found", results)
    res = ADAPTERS[detect_benchmark(results)](results, Path(root) if root else None, max_width)
    out_dir = Path(out) if out else results / REPORT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    # Index-prefixed, sanitised names: unique, and safe in a URL without quoting.
    assets = [f"{i:03d}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', c.name)}.{fmt}" for i, c in enumerate(res.clips)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        jobs = [pool.submit(_write_clip, out_dir / a, c, fps) for c, a in zip(res.clips, assets)]
        assets = [a if job.result() else "" for a, job in zip(assets, jobs)]
    index = out_dir / "index.html"
    write_text_atomic(index, _page(res, results, assets))
    return index
