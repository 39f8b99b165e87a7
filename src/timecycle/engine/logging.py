"""Training metrics: RUN/metrics.jsonl (one JSON object per log interval) and TensorBoard.

Each line: {"step", "epoch", "samples", "loss" (the weighted total), "long", "skip",
"sim_feature", "sim_inlier" (each term reduced over its K steps as the loss preset reduces it,
unweighted), "grad_norm", "clips_per_s", "data_wait_s" (mean seconds per step spent waiting for
the DataLoader), "step_s" (mean seconds per step), "lr", "nonfinite" (skipped steps in the
interval), "frozen" (encoder frozen by the warm-up), "time"}; with the unrelated-frames probe
also "probe_real", "probe_unrelated", "probe_s", with a DAVIS evaluation "eval_jf" ... and
"eval_s". clips_per_s and step_s count training time only: evaluations and probes are timed
apart (walk objectives log "walk_xent", "walk_acc" in place of the TimeCycle terms). Means are
over the interval's finite steps; a value with none is null. Lines are appended and flushed as they are written,
so a crash loses at most the current interval; on resume, lines after the checkpoint's step
are dropped (they would be written again).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

from timecycle.datasets.io import write_text_atomic

METRICS = "metrics.jsonl"
TERMS = ("long", "skip", "sim_feature", "sim_inlier")
WALK_TERMS = ("walk_xent", "walk_acc")  # the contrastive random walk's (objective "crw")


class Meter:
    """Sums of per-step tensors, read (one device sync) only at log time.

    terms: the objective's loss terms; every summary has them (None when no step of the window
    was finite), and no other objective's.
    """

    def __init__(self, terms: tuple[str, ...] = TERMS) -> None:
        self.terms = terms
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.finite = 0
        self.steps = 0
        self.nonfinite = 0
        self.clips = 0
        self.data_wait = 0.0
        self.excluded = 0.0
        self.start = time.perf_counter()

    def exclude(self, seconds: float) -> None:
        """Leave `seconds` spent on other work than training (a DAVIS evaluation) out of the
        window's clips/s and step time; the run's whole-session rate is in `Outcome`."""
        self.excluded += seconds

    def add(self, values: dict[str, torch.Tensor] | None, clips: int, data_wait: float) -> None:
        """One step: its detached scalar `values`, or None for a skipped (non-finite) step."""
        self.steps += 1
        self.clips += clips
        self.data_wait += data_wait
        if values is None:
            self.nonfinite += 1
            return
        self.finite += 1
        for k, v in values.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v

    def summary(self) -> dict[str, float | int | None]:
        elapsed = max(time.perf_counter() - self.start - self.excluded, 1e-9)
        out: dict[str, float | int | None] = {
            k: _plain(v.item() / self.finite) for k, v in self.sums.items()
        }
        for k in ("loss", *self.terms, "grad_norm"):
            out.setdefault(k, None)
        out.update(
            clips_per_s=self.clips / elapsed,
            data_wait_s=self.data_wait / max(self.steps, 1),
            step_s=elapsed / max(self.steps, 1),
            nonfinite=self.nonfinite,
        )
        return out


def _plain(x: float) -> float | None:
    """JSON has no NaN or infinity."""
    return x if math.isfinite(x) else None


class MetricsLog:
    """Appends metric lines to RUN/metrics.jsonl and scalars to RUN/tb (TensorBoard).

    Args:
        run_dir: the run folder.
        start_step: the step the run starts (or resumes) at; later lines of an earlier
            attempt are dropped.
        tensorboard: also write TensorBoard events.
        enabled: False on all but one process of a distributed run (nothing is written).
    """

    def __init__(self, run_dir: str | Path, start_step: int = 0, tensorboard: bool = True,
                 enabled: bool = True):
        self.path = Path(run_dir) / METRICS
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        self._drop_after(start_step)
        self.file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # a machine with PyTorch but not TensorBoard: log on without
                print("timecycle: note: TensorBoard is not installed, so RUN/tb is not written; "
                      "metrics.jsonl has every value (pip install tensorboard)", file=sys.stderr,
                      flush=True)
                return
            # purge_step hides events an interrupted attempt wrote after the checkpoint.
            self.writer = SummaryWriter(str(Path(run_dir) / "tb"),
                                        purge_step=start_step or None)

    def _drop_after(self, step: int) -> None:
        if not self.path.exists():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if _step_of(line) is not None and _step_of(line) <= step]
        if len(kept) != len(lines):
            write_text_atomic(self.path, "".join(kept))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        record = {"step": record["step"], **record, "time": round(time.time(), 3)}
        # JSON has no NaN or infinity (json.dumps writes them, strict readers refuse the line):
        # a non-finite value, e.g. a probe on the batch that diverged, is null.
        record = {k: None if isinstance(v, float) and not math.isfinite(v) else v
                  for k, v in record.items()}
        self.file.write(json.dumps(record, allow_nan=False) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in record.items():
                if key not in ("step", "time") and isinstance(value, (int, float)) \
                        and not isinstance(value, bool):
                    self.writer.add_scalar(f"train/{key}", value, record["step"])
            self.writer.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self.file.close()
        if self.writer is not None:
            self.writer.close()


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of RUN/metrics.jsonl, in order."""
    path = Path(run_dir) / METRICS
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
