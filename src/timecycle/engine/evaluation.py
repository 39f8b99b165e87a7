"""Evaluation during training: the encoder being trained, scored on held-out DAVIS sequences.

A falling loss says nothing about correspondence (a run can close its cycles by position);
this says what the features do downstream. It is a reduced-size proxy, labelled as such
wherever it is shown: the crw protocol (SPEC 6) at short side `size` with its 12-cell radius
at 480p scaled with the frame, on the first `frames` frames of each sequence. The full-size
figure is `timecycle propagate davis ... --evaluate` on a checkpoint.

    proxy = DavisProxy(root, ["blackswan", "dog"], frames=25, size=240)
    scores = proxy.score(model.encoder, device)   # {"J&F": ..., "J": ..., "F": ...}
    proxy.close()
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from timecycle.datasets.davis import DavisRoot
from timecycle.errors import UserError

# bench/checkpoints.py and the README's "proxy": four val sequences of different kinds.
DEFAULT_SEQUENCES = ("blackswan", "car-roundabout", "dog", "cows")


@dataclass(frozen=True)
class ProxyLabel:
    """What a proxy score is, for logs and pages."""

    sequences: tuple[str, ...]
    frames: int
    size: int

    def __str__(self) -> str:
        return (f"DAVIS proxy: crw protocol at short side {self.size}, first {self.frames} "
                f"frames of {', '.join(self.sequences)}")


class DavisProxy:
    """Held-out DAVIS sequences cut to their first `frames` frames, scored with J&F.

    The cut sequences are symlinks in a temporary folder (the DAVIS root is never written);
    predictions go to a fresh temporary folder at every call.
    """

    def __init__(self, root: str | Path, sequences: list[str] | tuple[str, ...] | None = None,
                 frames: int = 25, size: int = 240):
        from timecycle.propagation.protocols import CRW

        if frames < 3 or size < 64:
            raise UserError(f"the evaluation needs >= 3 frames and a size >= 64, got {frames} "
                            f"frames at {size}")
        source = DavisRoot(root)
        names = list(sequences or DEFAULT_SEQUENCES)
        self.label = ProxyLabel(tuple(names), frames, size)
        self.protocol = CRW.replace(frame_resize="short_side", size=size, multiple=8,
                                    radius=max(1, round(12 * size / 480)))
        self._tmp = Path(tempfile.mkdtemp(prefix="timecycle-eval-"))
        try:
            for name in names:
                seq = source.sequence(name)  # a missing sequence is a UserError naming it
                seq.first_label()  # ... and so is an unusable first mask
                for sub, paths in (("JPEGImages/480p", seq.frames[:frames]),
                                   ("Annotations/480p", seq.annotated()[:frames])):
                    folder = self._tmp / "davis" / sub / name
                    folder.mkdir(parents=True)
                    for path in paths:
                        (folder / path.name).symlink_to(path.resolve())
        except BaseException:
            self.close()
            raise
        self.root = DavisRoot(self._tmp / "davis")
        self.names = names

    def score(self, encoder: nn.Module, device: torch.device) -> dict[str, float]:
        """J&F, J and F means of `encoder` (not modified: a copy is put in eval mode)."""
        from timecycle.metrics.davis_eval import evaluate_davis
        from timecycle.propagation.davis import propagate_davis
        from timecycle.propagation.video import FrameEncoder

        frozen = copy.deepcopy(encoder)
        out = Path(tempfile.mkdtemp(prefix="pred-", dir=self._tmp))
        try:
            propagate_davis(self.root, self.names, out, FrameEncoder(frozen, self.protocol, device),
                            self.protocol, {"proxy": str(self.label)}, progress=False)
            row = evaluate_davis(self.root, out, self.names, progress=False)[0]
        finally:
            shutil.rmtree(out, ignore_errors=True)
        return {"J&F": float(row["J&F-Mean"]), "J": float(row["J-Mean"]),
                "F": float(row["F-Mean"])}

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)
