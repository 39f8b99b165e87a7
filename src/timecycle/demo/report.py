"""The demo's index page: what ran, each encoder's score, links to the runs' own reports."""

from __future__ import annotations

from pathlib import Path

from timecycle.datasets.davis import DavisRoot
from timecycle.datasets.io import write_text_atomic
from timecycle.demo.config import DemoConfig


def write_index(out: Path, scores: dict[str, float | None], root: DavisRoot, cfg: DemoConfig,
            clip: dict | None, trained: bool, builtin: dict | None = None) -> Path:
    """An index page: what was run (the synthetic set or the user's clip, the protocol), the
    scores of each encoder as a table and a bar chart, linking each run's own report (animated
    overlays, per-sequence scores) and the training curves."""
    import html

    from timecycle.visualisation.curves import write_training_report
    from timecycle.visualisation.report import PAGE_CSS, bar_chart_svg, write_report

    e = html.escape
    rows = ["<tr><th>encoder</th><th>J&amp;F-Mean</th><th>report</th></tr>"]
    for label, jf in scores.items():
        page = write_report(out / "results" / label, root=root.root)
        href = e(page.relative_to(out).as_posix())
        score = "-" if jf is None else f"{jf:.3f}"
        rows.append(f'<tr><td>{e(label)}</td><td>{score}</td>'
                    f'<td><a href="{href}">overlays and per-sequence scores</a></td></tr>')
    table = "<table>" + "".join(rows) + "</table>"
    encoder = (f"a ResNet-18 trained for {cfg.steps} steps (small preset, {e(cfg.loss)} loss) on "
               + ("this clip" if clip else "separate synthetic training videos") if trained
               else f"the checkpoint <code>{e(str(Path(cfg.weights).resolve()))}</code>")
    protocol = f"the <code>{e(cfg.protocol)}</code> propagation protocol"
    shipped = "" if builtin is None else (
        f"; <b>built-in</b>: the weights shipped with timecycle (<code>--weights builtin</code>), "
        f"a ResNet-18 trained on real unlabeled video by <code>{e(str(builtin.get('command')))}"
        f"</code> ({e(str(builtin.get('steps')))} steps)")
    if clip:
        what = (f"<p>Your clip <code>{e(clip['video'])}</code> ({clip['frames']} frames, "
                f"{clip['width']}x{clip['height']}): its first-frame mask propagated to every later "
                f"frame with {protocol}, by {encoder}{shipped}. Not scored: the clip has no ground-truth "
                "masks after the first frame; judge the overlays.</p>")
    else:
        what = (f"<p>Label propagation of first-frame masks with {protocol} on synthetic "
                f"sequences the encoder never saw, scored with the DAVIS J&amp;F; the encoders: "
                f"<b>trained</b>: {encoder}{shipped}; <b>random-init</b>: the same network "
                "randomly initialised; <b>pixel</b>: the colour baseline; <b>identity</b>: every "
                "frame gets frame 0's mask.</p>")
    parts = [f"<!doctype html><meta charset='utf-8'><title>timecycle demo</title><style>{PAGE_CSS}</style>",
             "<h1>timecycle demo</h1>", what, table]
    if all(v is not None for v in scores.values()):
        parts.append(bar_chart_svg({k: float(v) for k, v in scores.items()}, "J&F-Mean"))
    run = out / "train"
    if trained and (run / "metrics.jsonl").is_file():
        page = write_training_report(run)
        parts.append(f'<p><a href="{e(page.relative_to(out).as_posix())}">training curves and configuration</a></p>')
    index = out / "index.html"
    write_text_atomic(index, "\n".join(parts))
    return index
