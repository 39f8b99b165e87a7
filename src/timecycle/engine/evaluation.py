"""Evaluation during training: the encoder being trained, scored on held-out DAVIS sequences.

A falling loss says nothing about correspondence (a run can close its cycles by position);
this says what the features do downstream. It is a reduced-size proxy, labelled as such
wherever it is shown: the crw protocol (SPEC 6) at short side `size` with its 12-cell radius
at 480p scaled with the frame, on the first `frames` frames of each sequence. The full-size
figure is `timecycle propagate davis ... --evaluate` on a checkpoint.

    proxy = DavisProxy(root, frames=25, size=240)   # the root's val sequences
    scores = proxy.score(model.encoder, device)   # {"J&F": ..., "J": ..., "F": ...}
    proxy.close()
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from timecycle.datasets.davis import DavisRoot, read_sequence_list
from timecycle.datasets.names import requested_names
from timecycle.errors import UserError


def default_sequences(root: str | Path) -> list[str]:
    """Every sequence of the root's ImageSets/2016/val.txt (else 2017/val.txt).

    All of them, not a few: four sequences that random features already solve (blackswan,
    car-roundabout, dog, cows, the default until 2026-12) ranked every trained network under
    its random one, while at full size the networks beat it by up to +0.14 J&F. The 20
    DAVIS-2016 val sequences, at the same size and length, put the checkpoints that beat
    their random network at full size above it too, for 5x the frames (README, "Does it
    learn?").
    """
    lists = [Path(root) / "ImageSets" / year / "val.txt" for year in ("2016", "2017")]
    listing = next((p for p in lists if p.is_file()), lists[0])
    return requested_names(None, listing, read_sequence_list, "sequences", "--eval-sequences")


@dataclass(frozen=True)
class ProxyLabel:
    """What a score is, for logs and pages."""

    sequences: tuple[str, ...]
    frames: int | None  # None: every frame
    size: int | None  # None: full size (the crw protocol as is)
    annotations_2016: tuple[str, ...] = ()  # sequences scored on DAVIS-2016 masks

    def __str__(self) -> str:
        size = "full size" if self.size is None else f"short side {self.size}"
        frames = "all frames" if self.frames is None else f"first {self.frames} frames"
        kind = "DAVIS" if self.size is None and self.frames is None else "DAVIS proxy"
        text = (f"{kind}: crw protocol at {size}, {frames} of {len(self.sequences)} sequences "
                f"({', '.join(self.sequences)})")
        if self.annotations_2016:
            text += (f"; DAVIS-2016 masks (one object) for {', '.join(self.annotations_2016)}, "
                     "DAVIS-2017 ground truth for the others")
        return text


class DavisProxy:
    """Held-out DAVIS sequences, optionally cut to their first `frames` frames and scored at a
    reduced size, with J&F.

    Frames are symlinks in a temporary folder (the DAVIS root is never written). A sequence
    without DAVIS-2017 ground truth is scored on its DAVIS-2016 mask (`Annotations_2016/480p`,
    0/255 -> 0/1, one object) when `fallback_2016`. Predictions go to a fresh temporary folder
    at every call.
    """

    def __init__(self, root: str | Path, sequences: list[str] | tuple[str, ...] | None = None,
                 frames: int | None = 25, size: int | None = 240, fallback_2016: bool = True):
        from timecycle.datasets.io import read_mask, write_mask
        from timecycle.propagation.protocols import CRW

        if (frames is not None and frames < 3) or (size is not None and size < 64):
            raise UserError(f"the evaluation needs >= 3 frames and a size >= 64, got {frames} "
                            f"frames at {size}")
        source = DavisRoot(root)
        names = list(sequences or default_sequences(root))
        self.protocol = CRW if size is None else CRW.replace(
            frame_resize="short_side", size=size, multiple=8, radius=max(1, round(12 * size / 480)))
        self._tmp = Path(tempfile.mkdtemp(prefix="timecycle-eval-"))
        old_gt = []
        try:
            for name in names:
                seq = source.sequence(name)  # a missing sequence is a UserError naming it
                keep = seq.frames[:frames]
                if not seq.annotation_path(seq.frames[0]).is_file() and fallback_2016:
                    seq = DavisRoot(root, 2016, Path(root) / "Annotations_2016" / "480p"
                                    ).sequence(name)
                    old_gt.append(name)
                seq.first_label()  # an unusable first mask is a UserError naming it
                images = self._tmp / "davis" / "JPEGImages" / "480p" / name
                labels = self._tmp / "davis" / "Annotations" / "480p" / name
                images.mkdir(parents=True)
                labels.mkdir(parents=True)
                for path in keep:
                    (images / path.name).symlink_to(path.resolve())
                for path in [seq.annotation_path(f) for f in keep]:
                    if not path.is_file():
                        continue
                    if name in old_gt:
                        write_mask(labels / path.name, read_mask(path, binary_255=True))
                    else:
                        (labels / path.name).symlink_to(path.resolve())
        except BaseException:
            self.close()
            raise
        self.label = ProxyLabel(tuple(names), frames, size, tuple(old_gt))
        self.root = DavisRoot(self._tmp / "davis")
        self.names = names

    def score(self, encoder: nn.Module | None, device: torch.device,
              per_sequence: bool = False, abort: Callable[[], bool] | None = None) -> dict | None:
        """J&F, J and F means of `encoder` (None: the identity baseline). The encoder is not
        modified. `per_sequence` adds {"sequences": {name: J&F}}.

        abort: asked before each sequence; True gives up and returns None (a stop request
        arriving mid-evaluation: a scheduler's grace period is ~30 s, an evaluation longer).
        """
        from timecycle.encoder.resnet import ResNetEncoder
        from timecycle.encoder.weights import HEAD_PROTOCOLS
        from timecycle.metrics.davis_eval import evaluate_davis
        from timecycle.propagation.davis import propagate_davis
        from timecycle.propagation.video import FrameEncoder

        # FrameEncoder works on its own (BatchNorm-folded, eval-mode) copy.
        frame_encoder = None if encoder is None else FrameEncoder(encoder, self.protocol, device)
        if isinstance(encoder, ResNetEncoder) and self.protocol.name not in HEAD_PROTOCOLS:
            # crw propagates layer3 (`--head auto` drops a TimeCycle head for it): the proxy
            # scores what `timecycle propagate` would. The copy loses its head, not `encoder`.
            frame_encoder.encoder.drop_head()
        out = Path(tempfile.mkdtemp(prefix="pred-", dir=self._tmp))
        try:
            for name in self.names:
                if abort is not None and abort():
                    return None
                propagate_davis(self.root, [name], out, frame_encoder, self.protocol,
                                {"proxy": str(self.label)}, progress=False)
            row, _, seqs = evaluate_davis(self.root, out, self.names, progress=False)
        except UserError as err:
            raise self._named_in_root(err) from None
        finally:
            shutil.rmtree(out, ignore_errors=True)
        scores = {"J&F": float(row["J&F-Mean"]), "J": float(row["J-Mean"]),
                  "F": float(row["F-Mean"])}
        if per_sequence:
            scores["sequences"] = {k: float(v) for k, v in seqs.items()}
        return scores

    def _named_in_root(self, err: UserError) -> UserError:
        """`err` naming the user's file: a frame or mask read through this proxy's temporary
        symlinks (gone once the run ends) is named by the file it links to."""
        path = err.path
        if path is None or not path.is_relative_to(self._tmp) or not path.is_symlink():
            return err
        message = str(err).removeprefix(f"{path}: ")
        return UserError(message, path.resolve())

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)
