"""The JHMDB layout: frames `Rename_Images/<class>/<video>/%05d.png`, joints
`joint_positions/<class>/<video>/joint_positions.mat` (SPEC 7).

The ground truth is the .mat file's `pos_img`: 2 x 15 x T, (x, y) of 15 joints in every frame,
in 1-based pixel coordinates (MATLAB's). A video is named `<class>/<video>`.

Video lists come in two forms, both read here: one `<class>/<video>` per line, or the two-path
lines of the public propagation code (CRW's JHMDB list: `<frames folder> <joint_positions.mat>`,
either order). Paths in a list usually point into another machine's copy of JHMDB, so only
their last two folder names (class and video) are kept and looked up under the given root.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np

from timecycle.datasets.io import frame_files
from timecycle.datasets.names import checked_names
from timecycle.errors import UserError

N_JOINTS = 15
# JHMDB's joint order (joint_positions' README), 0-based here.
JOINT_NAMES = (
    "neck", "belly", "face", "right_shoulder", "left_shoulder", "right_hip", "left_hip",
    "right_elbow", "left_elbow", "right_knee", "left_knee", "right_wrist", "left_wrist",
    "right_ankle", "left_ankle",
)
# (joint, parent) pairs of the skeleton: CRW utils/test_utils.py vis_pose's parent table.
LIMBS = (
    (1, 0), (2, 0), (3, 0), (4, 0), (5, 1), (6, 1), (7, 3), (8, 4),
    (9, 5), (10, 6), (11, 7), (12, 8), (13, 9), (14, 10),
)
JOINTS_FILE = "joint_positions.mat"


def read_joints(path: str | Path) -> np.ndarray:
    """(T, 15, 2) float64 (x, y) per frame and joint, pos_img's 1-based pixel convention."""
    import scipy.io

    path = Path(path)
    if not path.is_file():
        raise UserError("no such file", path)
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as err:  # scipy raises ValueError, TypeError, MatReadError, ... on bad files
        raise UserError(f"cannot read .mat file ({type(err).__name__}: {err})", path) from None
    if "pos_img" not in mat:
        keys = ", ".join(k for k in mat if not k.startswith("__")) or "none"
        raise UserError(f"no 'pos_img' variable in the .mat file (variables: {keys})", path)
    pos = mat["pos_img"]
    if not (isinstance(pos, np.ndarray) and pos.dtype.kind in "fiu"):
        raise UserError("'pos_img' is not a numeric array", path)
    if pos.ndim != 3 or pos.shape[:2] != (2, N_JOINTS) or pos.shape[2] < 1:
        raise UserError(f"'pos_img' has shape {pos.shape}; expected 2 x {N_JOINTS} x T", path)
    if not np.isfinite(pos).all():
        raise UserError("'pos_img' holds non-finite values", path)
    # JHMDB's puppet annotation places every joint in every frame; zeros everywhere is an
    # empty or corrupt file, which would otherwise score a silent PCK of 0 (each box empty).
    frames = np.flatnonzero(~pos.any(axis=(0, 1)))
    if len(frames):
        which = "every frame" if len(frames) == pos.shape[2] else f"frame {int(frames[0])}" + (
            f" and {len(frames) - 1} more" if len(frames) > 1 else "")
        raise UserError(f"'pos_img' is all zeros in {which}: no joint positions (an empty or "
                        "corrupt annotation)", path)
    return np.ascontiguousarray(pos.transpose(2, 1, 0), dtype=np.float64)


@dataclass(frozen=True)
class JhmdbVideo:
    name: str  # "<class>/<video>"
    frames: tuple[Path, ...]
    joints_file: Path

    def joints(self) -> np.ndarray:
        """(T, 15, 2) ground truth; see `read_joints`."""
        return read_joints(self.joints_file)


def video_name_of(entry: str) -> str | None:
    """`<class>/<video>` from one list token: a name, a frames folder or a .mat path."""
    path = PurePath(entry.rstrip("/\\").replace("\\", "/"))
    if path.suffix.lower() == ".mat":
        path = path.parent
    parts = path.parts
    if len(parts) < 2:
        return None
    return f"{parts[-2]}/{parts[-1]}"


def read_video_list(path: str | Path) -> list[str]:
    """Names from a list of `<class>/<video>` lines or of two-path lines (see the module doc)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read the video list ({err})", path) from None
    names = []
    for number, line in enumerate(lines, 1):
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        folders = [t for t in tokens if not t.lower().endswith(".mat")]
        name = video_name_of(folders[0] if folders else tokens[0])
        if name is None:
            raise UserError(
                f"line {number} ({line.strip()!r}): expected '<class>/<video>' or "
                "'<frames folder> <joint_positions.mat>'",
                path,
            )
        names.append(name)
    return names


class JhmdbRoot:
    """A JHMDB root folder holding `Rename_Images/` and `joint_positions/`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError("JHMDB root folder not found", self.root)
        self.images = self.root / "Rename_Images"
        self.joint_positions = self.root / "joint_positions"
        if not self.images.is_dir():
            raise UserError("no Rename_Images folder: not a JHMDB root", self.images)

    @property
    def inputs(self) -> tuple[Path, ...]:
        """The folders the frames and joints are read from (never an output)."""
        return (self.images, self.joint_positions)

    def joints_file(self, name: str) -> Path:
        return self.joint_positions / name / JOINTS_FILE

    def video_names(self, spec: str | Path | None = None) -> list[str]:
        """Names from a list file, comma-separated names, or every video under Rename_Images.

        Every requested video must have its frames folder and its joint_positions.mat: the
        missing ones are listed together in one error, since a partial result is not comparable.
        """
        if spec is None:
            names = sorted(
                f"{c.name}/{v.name}"
                for c in self.images.iterdir() if c.is_dir()
                for v in c.iterdir() if v.is_dir()
            )
        elif Path(spec).is_file():
            names = read_video_list(spec)
        else:
            names = [s.strip().strip("/") for s in str(spec).split(",") if s.strip()]
        if not names:
            raise UserError(f"no videos given ({spec if spec is not None else self.images})")
        names = checked_names(names, "videos", Path(spec) if spec is not None
                              and Path(spec).is_file() else None)
        bad = [n for n in names if video_name_of(n) != n]
        if bad:
            raise UserError(f"video names must be '<class>/<video>': {', '.join(bad)}")
        missing = [
            n for n in names
            if not (self.images / n).is_dir() or not self.joints_file(n).is_file()
        ]
        if missing:
            raise UserError(
                f"{len(missing)} of {len(names)} requested videos lack frames in {self.images} "
                f"or joints in {self.joint_positions}: {', '.join(missing)}"
            )
        return names

    def video(self, name: str) -> JhmdbVideo:
        folder = self.images / name
        frames = frame_files(folder)
        return JhmdbVideo(name, frames, self.joints_file(name))


__all__ = [
    "JOINT_NAMES",
    "JhmdbRoot",
    "JhmdbVideo",
    "LIMBS",
    "N_JOINTS",
    "read_joints",
    "read_video_list",
]
