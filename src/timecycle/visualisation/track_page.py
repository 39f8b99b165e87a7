"""The page of a `timecycle track` folder: the overlay video, the flow picture, what was
tracked, the command that did it and the provenance. It needs no network: every `src` is a
file in the same folder, which is copied as a whole."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from timecycle.datasets.io import write_text_atomic
from timecycle.visualisation.flow import flow_to_rgb, wheel_legend
from timecycle.visualisation.overlay import fit_width, text_band
from timecycle.visualisation.page import PAGE_CSS, flatten_record, html_table, provenance_summary


def flow_picture(frame: np.ndarray, flow: np.ndarray, caption: str, max_width: int = 480) -> np.ndarray:
    """(H, W, 3) frame and its (2, h, w) flow -> the frame, the flow on the colour wheel at the
    frame's size and the wheel itself side by side, over a caption band."""
    frame = fit_width(frame, max_width)
    h, w = frame.shape[:2]
    colours = flow_to_rgb(flow)
    rows = (np.arange(h) * colours.shape[0] // h)[:, None]
    cols = (np.arange(w) * colours.shape[1] // w)[None, :]
    big = colours[rows, cols]  # nearest: one block per feature cell
    wheel = wheel_legend(min(96, h))
    pad = np.full((h, wheel.shape[1], 3), 255, np.uint8)
    pad[: wheel.shape[0]] = wheel
    gap = np.full((h, 6, 3), 255, np.uint8)
    body = np.concatenate([frame, gap, big, gap, pad], axis=1)
    return np.concatenate([body, text_band([caption], body.shape[1])], axis=0)


def write_track_page(out: Path, record: dict, overlay: str | None, flow_png: str | None) -> Path:
    """Write `out/index.html` from the run's record (track.json's content)."""
    e = html.escape
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>timecycle "
             f"track</title><style>{PAGE_CSS}</style></head><body>",
             f"<h1>timecycle track: <code>{e(str(record.get('video', '')))}</code></h1>"]
    what = []
    if record.get("mask"):
        what.append(f"the objects of <code>{e(record['mask'])}</code>")
    if record.get("points"):
        what.append(f"{len(record.get('point_ids', []))} points of <code>{e(record['points'])}</code>")
    parts.append(f"<p>{record.get('frames', '?')} frames ({record.get('width')}x"
                 f"{record.get('height')}); followed from frame 0: {' and '.join(what)}.</p>")
    if record.get("notes"):
        parts += [f'<p class="note">{e(n)}</p>' for n in record["notes"]]
    if overlay:
        media = (f'<video src="{e(overlay)}" controls autoplay loop muted playsinline></video>'
                 if overlay.endswith(".mp4") else f'<img src="{e(overlay)}" alt="overlay">')
        parts.append(f"<h2>Overlay</h2><figure>{media}<figcaption>masks and points with "
                     "their recent trail</figcaption></figure>")
    if flow_png:
        parts.append(f'<h2>Dense correspondence</h2><figure><img src="{e(flow_png)}" alt="flow" '
                     'style="width:auto;max-width:100%"><figcaption>motion from frame 0 '
                     "(flow.npy), hue: direction, saturation: size</figcaption></figure>")
    files = [{"file": f, "what": d} for f, d in record.get("outputs", {}).items()]
    if files:
        parts.append("<h2>Files</h2>" + html_table(files))
    parts.append(f"<h2>Command</h2><pre><code>{e(record.get('command', ''))}</code></pre>")
    summary = provenance_summary(record)
    full = [{"key": k, "value": v} for k, v in flatten_record(record).items()]
    parts.append("<h2>Provenance</h2>" + html_table([{"": k, "value": v} for k, v in summary.items()])
                 + "<details><summary>full record</summary>" + html_table(full) + "</details>")
    parts.append("</body></html>\n")
    index = out / "index.html"
    write_text_atomic(index, "\n".join(parts))
    return index


__all__ = ["flow_picture", "write_track_page"]
