"""Training curves from RUN/metrics.jsonl, drawn with PIL, and a training-run HTML page.

`metrics.jsonl` holds one JSON object per log interval (see `timecycle.engine.logging`): the
step, the weighted total (`loss`; `total` is accepted too), the loss terms (`long`, `skip`,
`sim_*`) and throughput (`clips_per_s`). Every numeric field that is not bookkeeping is drawn
as a loss term, so a new term shows up without a change here.

Nothing is hidden: a series that lies on an earlier one (in a collapsed run `long` and `skip`
are equal) is drawn dashed with markers and named "(= other)" in the legend and on the page,
and a feature-similarity term at its floor (all features alike: the paper loss's trivial
minimum) is flagged on the page, so that a falling total does not read as learning.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from timecycle.datasets.io import write_text_atomic
from timecycle.errors import UserError
from timecycle.visualisation.overlay import write_image

METRICS_FILE = "metrics.jsonl"
# Fields that are not loss terms: counters, timing, optimiser state.
NOT_LOSSES = {"step", "epoch", "samples", "time", "grad_norm", "clips_per_s", "data_wait_s",
              "step_s", "lr", "nonfinite", "frozen", "walk_acc"}
# Drawn in their own panels: the held-out evaluation (engine/evaluation.py) and the
# unrelated-frames probe (engine/step.py probe_losses).
EVAL_TERMS = ("eval_jf", "eval_j", "eval_f")
PROBE_TERMS = ("probe_real", "probe_unrelated")
NOT_LOSSES |= {*EVAL_TERMS, "eval_best_jf", *PROBE_TERMS}
# tab10, the palette readers know from matplotlib plots.
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
          "#bcbd22", "#17becf"]

Series = dict[str, list[tuple[float, float]]]
COINCIDENT = 0.005  # series closer than this share of the plot's value range draw as one line
FLOOR_MARGIN = 0.01  # a similarity term within this share of its floor has collapsed


def read_metrics(path: str | Path) -> list[dict]:
    """The metric lines in step order; a torn last line (a run killed mid-write) is skipped."""
    path = Path(path)
    if not path.is_file():
        raise UserError("no metrics file", path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read the metrics file ({err})", path) from None
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
            rows.append(row)
    return sorted(rows, key=lambda r: r["step"])


def _numeric(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def loss_series(rows: list[dict]) -> Series:
    """{term: [(step, value), ...]} for the total and every loss term (total first)."""
    series: Series = {}
    for row in rows:
        for k, v in row.items():
            if k not in NOT_LOSSES and _numeric(v):
                series.setdefault(k, []).append((row["step"], float(v)))
    return dict(sorted(series.items(), key=lambda kv: (kv[0] not in ("loss", "total"), kv[0])))


def named_series(rows: list[dict], names: tuple[str, ...]) -> Series:
    """{name: [(step, value), ...]} for those of `names` that were logged, in that order."""
    series: Series = {}
    for name in names:
        points = [(r["step"], float(r[name])) for r in rows if _numeric(r.get(name))]
        if points:
            series[name] = points
    return series


def coincident_series(series: Series, tol: float = COINCIDENT) -> dict[str, str]:
    """{name: earlier name} for each series whose points all equal an earlier series' (same
    steps, values within `tol` of the value range of all series): drawn, it would hide it."""
    ys = [y for pts in series.values() for _, y in pts]
    if not ys:
        return {}
    limit = tol * ((max(ys) - min(ys)) or abs(ys[0]) or 1.0)
    same: dict[str, str] = {}
    names = list(series)
    for i, name in enumerate(names):
        for other in names[:i]:
            a, b = series[name], series[other]
            if len(a) == len(b) and all(xa == xb and abs(ya - yb) <= limit
                                        for (xa, ya), (xb, yb) in zip(a, b)):
                same[name] = same.get(other, other)
                break
    return same


def similarity_floor(config: dict | None) -> float:
    """The lowest value of the logged `sim_feature` term: -1 per step (identical unit features),
    summed over the K = n_past steps (paper, `step_reduction` sum) or averaged (-1)."""
    config = config or {}
    loss, clip = config.get("loss") or {}, config.get("clip") or {}
    steps = int(clip.get("n_past", 4))  # ClipConfig.n_past default (SPEC 4)
    return -float(steps) if loss.get("step_reduction", "sum") == "sum" else -1.0


def collapse_warnings(rows: list[dict], config: dict | None = None,
                      margin: float = FLOOR_MARGIN) -> list[str]:
    """One sentence per similarity term whose last logged value is at its floor."""
    values = [(r["step"], float(r["sim_feature"])) for r in rows if _numeric(r.get("sim_feature"))]
    if not values:
        return []
    floor = similarity_floor(config)
    step, last = values[-1]
    if last > floor + margin * abs(floor):
        return []
    return [f"sim_feature is {last:.3f} at step {step:g}, at its floor {floor:g}: every feature "
            "matches every other (the similarity term has collapsed), so a falling total loss "
            "here is not learning. The README's Training section says what to try (e.g. --loss "
            "code --query crop --warmup-steps N)."]


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About `n` round tick values (1, 2 or 5 times a power of ten apart) covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    return [start + i * step for i in range(int(math.ceil((hi - start) / step - 1e-9)) + 1)]


def _label(v: float, step: float) -> str:
    return f"{v:.{max(0, -math.floor(math.log10(step)))}f}" if step < 1 else f"{v:.0f}"


def plot(
    series: Series, title: str, xlabel: str, ylabel: str, size: tuple[int, int] = (760, 360)
) -> Image.Image:
    """One panel: a line per series, axes with round ticks, grid, title and a legend."""
    font, small = ImageFont.load_default(size=15), ImageFont.load_default(size=12)
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 72, size[0] - 28, 34, size[1] - 46
    points = [p for pts in series.values() for p in pts]
    draw.text((size[0] // 2, 8), title, fill="black", font=font, anchor="ma")
    if not points:
        draw.text((size[0] // 2, size[1] // 2), "no data", fill="gray", font=font, anchor="mm")
        return img
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    pad = 0.05 * (max(ys) - min(ys) or abs(ys[0]) or 1)
    # x spans the steps logged exactly (runs end anywhere); y is padded out to round ticks.
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    xt = [t for t in nice_ticks(x0, x1) if x0 <= t <= x1]
    yt = nice_ticks(min(ys) - pad, max(ys) + pad)
    y0, y1 = yt[0], yt[-1]

    def at(x: float, y: float) -> tuple[float, float]:
        return left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - top)

    x_step = xt[1] - xt[0] if len(xt) > 1 else 1
    for x in xt:
        px = at(x, y0)[0]
        draw.line([(px, top), (px, bottom)], fill="#e6e6e6")
        draw.line([(px, bottom), (px, bottom + 5)], fill="black")
        draw.text((px, bottom + 7), _label(x, x_step), fill="black", font=small, anchor="ma")
    for y in yt:
        py = at(x0, y)[1]
        draw.line([(left, py), (right, py)], fill="#e6e6e6")
        draw.line([(left - 5, py), (left, py)], fill="black")
        draw.text((left - 8, py), _label(y, yt[1] - yt[0]), fill="black", font=small, anchor="rm")
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text(((left + right) // 2, size[1] - 6), xlabel, fill="black", font=font, anchor="md")
    ylab = Image.new("RGB", (bottom - top, 20), "white")  # drawn level, then turned upright
    ImageDraw.Draw(ylab).text(((bottom - top) // 2, 10), ylabel, fill="black", font=font, anchor="mm")
    img.paste(ylab.rotate(90, expand=True), (4, top))
    same = coincident_series(series)
    for i, (name, pts) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        xy = [at(x, y) for x, y in pts]
        if name in same:  # dashed, so the line under it shows through the gaps
            _dashed(draw, xy, color)
            _markers(draw, xy, color)
        elif len(xy) > 1:
            draw.line(xy, fill=color, width=2, joint="curve")
        else:
            draw.ellipse([xy[0][0] - 3, xy[0][1] - 3, xy[0][0] + 3, xy[0][1] + 3], fill=color)
    # Legend in the top-right corner of the plot area, on white so lines do not cross it.
    labels = {n: f"{n} (= {same[n]})" if n in same else n for n in series}
    width = max(draw.textlength(t, font=small) for t in labels.values()) + 34
    lx, ly = right - width - 6, top + 6
    draw.rectangle([lx, ly, right - 6, ly + 16 * len(series) + 6], fill="white", outline="#999")
    for i, name in enumerate(series):
        y = ly + 11 + 16 * i
        color = COLORS[i % len(COLORS)]
        if name in same:
            _dashed(draw, [(lx + 6, y), (lx + 24, y)], color, width=3, dash=5, gap=3)
        else:
            draw.line([(lx + 6, y), (lx + 24, y)], fill=color, width=3)
        draw.text((lx + 28, y), labels[name], fill="black", font=small, anchor="lm")
    return img


def _dashed(draw: ImageDraw.ImageDraw, xy: list[tuple[float, float]], color: str, width: int = 2,
            dash: float = 9, gap: float = 7) -> None:
    """A polyline drawn as dashes `dash` px long, `gap` px apart, continued across vertices."""
    pos, period = 0.0, dash + gap  # pos: distance along the line, modulo the period
    for (xa, ya), (xb, yb) in zip(xy[:-1], xy[1:]):
        length = math.hypot(xb - xa, yb - ya)
        t = 0.0
        while t < length:
            phase = pos % period
            run = (dash - phase) if phase < dash else (period - phase)
            end = min(length, t + run)
            if phase < dash:
                f0, f1 = t / length, end / length
                draw.line([(xa + f0 * (xb - xa), ya + f0 * (yb - ya)),
                           (xa + f1 * (xb - xa), ya + f1 * (yb - ya))], fill=color, width=width)
            pos += end - t
            t = end


def _markers(draw: ImageDraw.ImageDraw, xy: list[tuple[float, float]], color: str,
             most: int = 40) -> None:
    """Hollow squares on the points (at most `most`, evenly picked)."""
    every = max(1, math.ceil(len(xy) / most))
    for x, y in xy[::every]:
        draw.rectangle([x - 3, y - 3, x + 3, y + 3], outline=color, width=1)


def write_curves(rows: list[dict], path: str | Path) -> Path:
    """A PNG of the loss terms over steps, with a throughput panel below when logged."""
    panels = [plot(loss_series(rows), "training losses", "step", "loss")]
    evals = named_series(rows, EVAL_TERMS)
    if evals:
        # The proxy's full description is on the page; the title only says what it is.
        panels.append(plot(evals, "held-out J&F (a reduced-size DAVIS proxy)", "step",
                           "J&F, J, F", size=(760, 300)))
    probes = named_series(rows, PROBE_TERMS)
    if probes:
        panels.append(plot(probes, "loss on real clips vs clips of unrelated frames "
                           "(no gap: cycles close by position)", "step", "loss", size=(760, 300)))
    speed = [(r["step"], float(r["clips_per_s"])) for r in rows if _numeric(r.get("clips_per_s"))]
    if speed:
        panels.append(plot({"clips/s": speed}, "throughput", "step", "clips per second", size=(760, 240)))
    figure = Image.new("RGB", (760, sum(p.height for p in panels)), "white")
    y = 0
    for p in panels:
        figure.paste(p, (0, y))
        y += p.height
    return write_image(path, np.asarray(figure))


def _read_config(path: Path) -> dict | None:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):  # ValueError: bad JSON, or bytes that are not UTF-8
        return None
    return config if isinstance(config, dict) else None


def write_training_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write `<out or run_dir/report>/index.html` with the curves and the run's config.

    Returns the path of index.html.
    """
    from timecycle.visualisation.page import PAGE_CSS, html_table

    run = Path(run_dir)
    rows = read_metrics(run / METRICS_FILE)
    config = _read_config(run / "config.json")
    out_dir = Path(out) if out else run / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    write_curves(rows, out_dir / "curves.png")
    e = html.escape
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>timecycle training "
             f"report</title><style>{PAGE_CSS}</style></head><body>",
             f"<h1>Training run: <code>{e(str(run))}</code></h1>"]
    parts += [f'<p class="warning"><strong>Collapsed:</strong> {e(w)}</p>'
              for w in collapse_warnings(rows, config)]
    if rows:
        last = rows[-1]
        summary = {"lines logged": len(rows), "last step": last["step"]}
        summary.update({f"last {k}": v for k, v in last.items() if k not in ("step", "time") and _numeric(v)})
        summary["skipped (non-finite) steps"] = sum(int(r.get("nonfinite") or 0) for r in rows)
        table = [{"": k, "value": v if isinstance(v, int) else f"{v:.4g}"} for k, v in summary.items()]
        parts.append("<h2>Summary</h2>" + html_table(table))
    else:
        parts.append('<p class="note">metrics.jsonl holds no metric lines yet.</p>')
    parts.append('<h2>Curves</h2><img src="curves.png" alt="loss curves">')
    evals = [r for r in rows if _numeric(r.get("eval_jf"))]
    if evals:
        best = max(evals, key=lambda r: r["eval_jf"])
        parts.append(f'<p class="note">Held-out evaluation ({e(str(best.get("eval_label", "")))}'
                     f'; a reduced-size proxy, not a benchmark figure): first '
                     f'{evals[0]["eval_jf"]:.3f} at step {evals[0]["step"]}, last '
                     f'{evals[-1]["eval_jf"]:.3f} at step {evals[-1]["step"]}, best '
                     f'{best["eval_jf"]:.3f} at step {best["step"]} (RUN/best.pt).</p>')
    same = coincident_series(loss_series(rows))
    if same:
        pairs = "; ".join(f"{e(a)} equals {e(b)}" for a, b in same.items())
        parts.append(f'<p class="note">Drawn dashed with markers, over the line it equals: '
                     f'{pairs}.</p>')
    config_file = run / "config.json"
    if config_file.is_file():
        # Shown as it is when it is not a JSON object; undecodable bytes as U+FFFD.
        text = (json.dumps(config, indent=2) if config is not None
                else config_file.read_text(errors="replace"))
        parts.append(f"<h2>Config</h2><pre>{e(text)}</pre>")
    parts.append("</body></html>\n")
    index = out_dir / "index.html"
    write_text_atomic(index, "\n".join(parts))
    return index
