"""The DAVIS folder layout: `JPEGImages/480p/<seq>/%05d.jpg`, `Annotations/480p/<seq>/%05d.png`,
`ImageSets/<year>/val.txt` (SPEC 7).

DAVIS-2017 masks are palettised with the object id as pixel value (255 is void). DAVIS-2016
masks are binary: 0 background, 255 the one object (not void).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from timecycle.datasets.io import IMAGE_ERRORS, frame_files, read_frame, read_mask
from timecycle.datasets.names import requested_names
from timecycle.errors import UserError

VOID = 255  # DAVIS-2017: void pixels, treated as background by the evaluation (SPEC 7)


@dataclass(frozen=True)
class DavisSequence:
    name: str
    frames: tuple[Path, ...]
    annotation_dir: Path
    binary_255: bool

    def annotation_path(self, frame: Path) -> Path:
        return self.annotation_dir / f"{frame.stem}.png"

    def annotated(self) -> list[Path]:
        """Annotation files that exist, in frame order (DAVIS annotates every frame).

        An annotation whose frame is missing is a UserError: the official evaluation scores
        every annotation (davis2017-evaluation reads a result for each), and no prediction can
        be made for a frame that is not there; skipping it would score a different set.
        """
        found = [p for p in map(self.annotation_path, self.frames) if p.is_file()]
        if self.annotation_dir.is_dir():
            stems = {f.stem for f in self.frames}
            orphans = sorted(p.name for p in self.annotation_dir.glob("*.png")
                             if p.stem not in stems)
            if orphans:
                shown = ", ".join(orphans[:5]) + (", ..." if len(orphans) > 5 else "")
                raise UserError(f"{len(orphans)} annotation(s) have no frame in "
                                f"{self.frames[0].parent}: {shown} (a frame deleted or "
                                "renamed?)", self.annotation_dir)
        return found

    def read_annotation(self, path: Path) -> np.ndarray:
        """(H, W) uint8 ids; 2016 masks come back as 0/1."""
        return read_mask(path, binary_255=self.binary_255)

    def first_label(self) -> tuple[np.ndarray, int]:
        """Frame 0's id map with void set to background, and the number of objects.

        The objects are the ids 1..max id of the first frame's annotation (SPEC 7).
        """
        path = self.annotation_path(self.frames[0])
        ids = self.read_annotation(path).copy()
        ids[ids == VOID] = 0
        n_objects = int(ids.max())
        if n_objects == 0:
            raise UserError("the first-frame mask is empty: there is no object to propagate"
                            + self._year_hint(path), path)
        present = np.unique(ids[ids > 0])
        if len(present) < n_objects:
            # The DAVIS evaluation counts ids 1..max as objects; one absent from frame 0 is
            # then absent from ground truth and prediction alike, and scores J = F = 1 on
            # every frame. A stray id or a JPEG saved as .png inflates J&F so, silently.
            shown = ", ".join(map(str, present[:8])) + (", ..." if len(present) > 8 else "")
            warnings.warn(f"{path}: ids 1..{n_objects} count as {n_objects} objects, as the "
                          f"DAVIS evaluation counts them, but only {len(present)} are in the "
                          f"mask ({shown}): each absent one scores J = F = 1 on every frame",
                          MaskWarning, stacklevel=2)
        frame_hw = frame_size(self.frames[0])
        if ids.shape != frame_hw:
            raise UserError(
                f"mask is {ids.shape[1]}x{ids.shape[0]} but the frame is "
                f"{frame_hw[1]}x{frame_hw[0]}",
                path,
            )
        return ids, n_objects

    def _year_hint(self, path: Path) -> str:
        """Why a mask reads as empty when it is the other year's format, else ''."""
        raw = np.unique(read_mask(path))
        if self.binary_255 and ((raw > 0) & (raw <= 127)).any():
            ids = ", ".join(map(str, raw[(raw > 0) & (raw <= 127)][:5]))
            return (f" (read as a DAVIS-2016 0/255 mask; its values {ids} look like DAVIS-2017 "
                    "object ids: pass --year 2017)")
        if not self.binary_255 and VOID in raw and not ((raw > 0) & (raw < VOID)).any():
            return (" (its only non-zero value is 255, void in DAVIS-2017: a DAVIS-2016 0/255 "
                    "mask? pass --year 2016)")
        return ""


def frame_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image, read from its header where possible."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size[1], img.size[0]
    except IMAGE_ERRORS as err:
        raise UserError(f"cannot read image ({err})", path) from None


class MaskWarning(UserWarning):
    """A first-frame mask the DAVIS rules read as something other than it probably is."""


class DavisRoot:
    """A DAVIS root folder.

    Args:
        root: the folder holding JPEGImages/, Annotations/ and ImageSets/.
        year: 2017 (palettised ids) or 2016 (binary 0/255 masks).
        annotations: an annotation folder overriding `Annotations/<resolution>`.
    """

    def __init__(
        self,
        root: str | Path,
        year: int = 2017,
        annotations: str | Path | None = None,
        resolution: str = "480p",
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError("DAVIS root folder not found", self.root)
        if year not in (2016, 2017):
            raise UserError(f"unknown DAVIS year {year}; choose 2016 or 2017")
        self.year = year
        self.images = self.root / "JPEGImages" / resolution
        if not self.images.is_dir():
            raise UserError("no JPEGImages folder: not a DAVIS root", self.images)
        self.annotations = (Path(annotations) if annotations
                            else self.root / "Annotations" / resolution)
        if annotations and not self.annotations.is_dir():
            # Checked here: otherwise the first message names <annotations>/<seq>/00000.png.
            raise UserError("annotation folder not found (--annotations)", self.annotations)

    @property
    def inputs(self) -> tuple[Path, ...]:
        """The folders this root's frames and ground truth are read from (no output may go
        there: see cli/common.check_out_apart)."""
        return (self.root / "JPEGImages", self.root / "Annotations", self.images,
                self.annotations)

    def sequence_names(self, spec: str | Path | None = None) -> list[str]:
        """Names from a list file, a comma-separated string, or ImageSets/<year>/val.txt.

        Every requested sequence must have frames on disk: a missing one is an error that
        lists all the missing ones, since a silently partial result is not comparable.
        """
        listing = self.root / "ImageSets" / str(self.year) / "val.txt"
        names = requested_names(spec, listing, read_sequence_list, "sequences", "--sequences")
        missing = [n for n in names if not (self.images / n).is_dir()]
        if missing:
            raise UserError(
                f"{len(missing)} of {len(names)} requested sequences have no frames in "
                f"{self.images}: {', '.join(missing)}"
            )
        return names

    def sequence(self, name: str) -> DavisSequence:
        folder = self.images / name
        frames = frame_files(folder, "sequence")
        return DavisSequence(name, frames, self.annotations / name, binary_255=self.year == 2016)


def read_sequence_list(path: Path) -> list[str]:
    """The sequence names of a DAVIS list file (ImageSets/<year>/val.txt or a user's list).

    Lines may be "<seq>" or, in some lists, "<seq> <something>"; the first field is the name.
    """
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:  # e.g. a binary file passed as the list
        raise UserError(f"cannot read the sequence list ({err})", path) from None
    return [ln.split()[0] for ln in lines if ln.strip()]


__all__ = ["DavisRoot", "DavisSequence", "VOID", "frame_size", "read_frame",
           "read_sequence_list"]
