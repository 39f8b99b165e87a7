"""An HTML report for a folder of propagation results: a folder (index.html and its animations)
that needs no network and is copied as a whole.

`write_report(results_dir)` writes `<results_dir>/report/index.html` and, beside it, one
animation per sequence. The page uses no network resource: styles and the bar chart (SVG) are
inline, and every `src` is a file in the report folder, so the folder can be copied or zipped
and opened anywhere.

The benchmark adapters that read a results folder live in `benchmarks.py`, the page's pieces
(style, tables, bar chart, provenance) in `page.py`; this module lays out the page.
"""

from __future__ import annotations

import datetime as _dt
import html
import itertools
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from timecycle import __version__
from timecycle.datasets.io import write_text_atomic
from timecycle.errors import UserError
from timecycle.visualisation.benchmarks import (
    ADAPTERS,
    REPORT_DIR,
    BenchmarkResults,
    Clip,
    detect_benchmark,
)
from timecycle.visualisation.page import (
    PAGE_CSS,
    bar_chart_svg,
    flatten_record,
    html_table,
    provenance_summary,
)
from timecycle.visualisation.overlay import write_animation


def _write_clip(path: Path, clip: Clip, fps: float) -> bool:
    """Write one clip's animation; False (and a caption saying so) when it has no frames."""
    frames = clip.render()
    first = next(frames, None)
    if first is None:
        clip.caption = (clip.caption + "; " if clip.caption else "") + "no frames"
        return False
    write_animation(path, itertools.chain([first], frames), fps)
    return True


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
    full = [{"key": k, "value": v} for k, v in flatten_record(res.provenance).items()]
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
    benchmark = detect_benchmark(results)
    try:
        res = ADAPTERS[benchmark](results, Path(root) if root else None, max_width)
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        # The adapters only parse the folder's JSON and CSV files: a field of another type or
        # a score that is not a number is a damaged or hand-edited file, not a bug here.
        raise UserError(f"the {benchmark} result files here are not in the layout timecycle "
                        f"writes ({type(err).__name__}: {err})", results) from None
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


__all__ = ["PAGE_CSS", "REPORT_DIR", "bar_chart_svg", "html_table", "provenance_summary",
           "write_report"]
