"""Pieces of timecycle's HTML pages: the shared style sheet, tables, an inline SVG bar chart,
and a run's provenance as a short summary and a flat full record. Every page (benchmark
results, the demo, `timecycle track`) builds from these; each needs no network and links only
files under its own folder (copy the folder, not index.html alone)."""

from __future__ import annotations

import html
import json

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


def flatten_record(d: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten_record(v, f"{prefix}{k}."))
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


__all__ = ["PAGE_CSS", "bar_chart_svg", "flatten_record", "html_table", "provenance_summary"]
