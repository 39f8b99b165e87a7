"""The video index: one record per video of a `--data` folder, cached as JSON (SPEC 5).

A record holds what the clip sampler needs without opening the video: path, kind ("video" for
a file, "frames" for a frame folder), frame count, fps (None for frame folders: images carry no
rate), width and height. Probing reads container metadata, decodes the first frame and the
stretch from the claimed last frame's keyframe to the end, never the whole video unless its
timestamps are unusable: a file whose header claims more frames than decode gets its true
length here, once, instead of failing clip after clip (see `video.probe_video`).

The cache is keyed by path + size + mtime: a rebuild re-probes only new or changed sources and
drops removed ones. Sources that cannot be opened are skipped with a warning naming the file,
kept in the index as `skipped` (with the reason, and their key, so an unchanged broken file is
not re-probed either) and counted in `n_skipped`; they never stop a run.

JSON format (written atomically)::

    {"format": "timecycle-video-index", "version": 2, "root": "/abs/data",
     "n_videos": 2, "n_skipped": 1,
     "videos": [{"path": "/abs/data/a.mp4", "kind": "video", "n_frames": 300, "fps": 30.0,
                 "width": 640, "height": 360, "size": 1234567, "mtime_ns": 1700000000000000000},
                {"path": "/abs/data/clip_b", "kind": "frames", "n_frames": 70, "fps": null, ...}],
     "skipped": [{"path": "/abs/data/bad.mp4", "kind": "video", "size": 0, "mtime_ns": ...,
                  "reason": "cannot open video (InvalidDataError: ...)"}]}
"""

from __future__ import annotations

import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from timecycle.data import video as _video
from timecycle.data.video import BadVideoWarning
from timecycle.datasets.io import IMAGE_SUFFIXES, write_json_atomic
from timecycle.errors import UserError

INDEX_FORMAT = "timecycle-video-index"
INDEX_VERSION = 2  # 2: n_frames is the decodable length (1 trusted the header)


@dataclass(frozen=True)
class VideoRecord:
    """One usable video. `fps` is None for frame folders (their rate is unknown)."""

    path: str
    kind: str  # "video" (a file decoded with PyAV) or "frames" (a folder of images)
    n_frames: int
    fps: float | None
    width: int
    height: int
    size: int  # bytes (summed over the images of a frame folder): part of the cache key
    mtime_ns: int  # latest modification time (folder and its images): part of the cache key


@dataclass
class VideoIndex:
    """All sources found under `root`: usable `videos` (sorted by path) and `skipped` ones."""

    root: str
    videos: list[VideoRecord]
    skipped: list[dict] = field(default_factory=list)  # {path, kind, size, mtime_ns, reason}
    n_probed: int = 0  # sources opened by the build that made this object (0: all from cache)
    n_reused: int = 0  # sources whose cached entry was reused

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def to_json(self) -> dict:
        return {
            "format": INDEX_FORMAT,
            "version": INDEX_VERSION,
            "root": self.root,
            "n_videos": len(self.videos),
            "n_skipped": self.n_skipped,
            "videos": [asdict(v) for v in self.videos],
            "skipped": list(self.skipped),
        }

    @classmethod
    def from_json(cls, obj: dict) -> VideoIndex:
        if obj.get("format") != INDEX_FORMAT or obj.get("version") != INDEX_VERSION:
            raise ValueError(f"not a {INDEX_FORMAT} v{INDEX_VERSION} file")
        return cls(
            root=obj["root"],
            videos=[VideoRecord(**v) for v in obj["videos"]],
            skipped=list(obj["skipped"]),
        )


def find_sources(root: str | Path) -> list[tuple[str, str]]:
    """[(absolute path, kind)] of the video files and frame folders under `root`, sorted.

    Any folder that directly holds images is a frame folder (one video); video files are found
    at any depth. `root` may also be a single video file. Hidden names are ignored.
    """
    root = Path(root)
    if root.is_file():
        if root.suffix.lower() not in _video.VIDEO_SUFFIXES:
            raise UserError(f"not a video file ({', '.join(_video.VIDEO_SUFFIXES)})", root)
        return [(str(root.resolve()), "video")]
    if not root.is_dir():
        raise UserError("no such data folder", root)
    found = []
    for dirpath, dirnames, filenames in os.walk(root.resolve(), followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        names = [n for n in filenames if not n.startswith(".")]
        if any(n.lower().endswith(IMAGE_SUFFIXES) for n in names):
            found.append((dirpath, "frames"))
        found += [
            (os.path.join(dirpath, n), "video")
            for n in names
            if n.lower().endswith(_video.VIDEO_SUFFIXES)
        ]
    return sorted(found)


def source_key(path: str, kind: str) -> tuple[int, int]:
    """(size, mtime_ns) of a source: a frame folder sums its images and takes the latest time."""
    if kind == "video":
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    size, mtime = 0, os.stat(path).st_mtime_ns  # the folder's own mtime moves on add/remove
    for name in _video.list_frame_files(path):
        st = os.stat(os.path.join(path, name))
        size += st.st_size
        mtime = max(mtime, st.st_mtime_ns)
    return size, mtime


def _probe(path: str, kind: str, key: tuple[int, int]) -> VideoRecord | dict:
    """A VideoRecord, or a skipped entry {path, kind, size, mtime_ns, reason}."""
    try:
        meta = _video.probe_video(path) if kind == "video" else _video.probe_frames(path)
    except _video.DecodeError as err:
        return {"path": path, "kind": kind, "size": key[0], "mtime_ns": key[1],
                "reason": err.reason}
    meta.pop("declared_frames", None)  # training samples within the frames that decode
    return VideoRecord(path=path, kind=kind, size=key[0], mtime_ns=key[1], **meta)


def _read_cache(cache_path: Path) -> dict[str, VideoRecord | dict]:
    if not cache_path.is_file():
        return {}
    try:
        obj = json.loads(cache_path.read_text())
        if obj.get("format") == INDEX_FORMAT and obj.get("version") != INDEX_VERSION:
            return {}  # an older version's cache: probe everything again, quietly
        index = VideoIndex.from_json(obj)
    except (OSError, ValueError, KeyError, TypeError) as err:
        warnings.warn(f"{cache_path}: ignoring unreadable video index cache ({err})",
                      BadVideoWarning, stacklevel=3)
        return {}
    entries: dict[str, VideoRecord | dict] = {v.path: v for v in index.videos}
    entries.update({s["path"]: s for s in index.skipped})
    return entries


def build_index(
    root: str | Path, cache_path: str | Path | None = None, workers: int = 8
) -> VideoIndex:
    """Index every video file and frame folder under `root`, reusing `cache_path` if present.

    Unchanged sources (same path, size, mtime) come from the cache without being opened; new or
    changed ones are probed in a thread pool of `workers`. The result is written atomically to
    `cache_path` (when given). Unreadable sources are skipped with a BadVideoWarning each.
    """
    sources = find_sources(root)
    if not sources:
        raise UserError(
            "no videos (mp4/avi/mkv/webm) or frame folders (jpg/png) found", root
        )
    cached = _read_cache(Path(cache_path)) if cache_path is not None else {}
    entries: dict[str, VideoRecord | dict] = {}
    todo = []
    for path, kind in sources:
        try:
            key = source_key(path, kind)
        except OSError as err:  # vanished or unreadable between listing and stat
            entries[path] = {"path": path, "kind": kind, "size": -1, "mtime_ns": -1,
                             "reason": f"cannot stat ({err})"}
            continue
        old = cached.get(path)
        if old is not None and _key_of(old) == (kind, *key):
            entries[path] = old
        else:
            todo.append((path, kind, key))
    if todo:
        n_threads = max(1, min(workers, len(todo)))
        with ThreadPoolExecutor(n_threads) as pool:  # PyAV releases the GIL while probing
            for (path, _, _), entry in zip(todo, pool.map(lambda t: _probe(*t), todo)):
                entries[path] = entry
    videos = [e for e in entries.values() if isinstance(e, VideoRecord)]
    skipped = [e for e in entries.values() if isinstance(e, dict)]
    for s in sorted(skipped, key=lambda s: s["path"]):
        warnings.warn(f"{s['path']}: skipped, {s['reason']}", BadVideoWarning, stacklevel=2)
    index = VideoIndex(
        root=str(Path(root).resolve()),
        videos=sorted(videos, key=lambda v: v.path),
        skipped=sorted(skipped, key=lambda s: s["path"]),
        n_probed=len(todo),
        n_reused=len(sources) - len(todo),
    )
    if cache_path is not None:
        write_json_atomic(cache_path, index.to_json())
    return index


def _key_of(entry: VideoRecord | dict) -> tuple[str, int, int]:
    if isinstance(entry, VideoRecord):
        return entry.kind, entry.size, entry.mtime_ns
    return entry["kind"], entry["size"], entry["mtime_ns"]


def load_index(cache_path: str | Path) -> VideoIndex:
    """Read an index JSON written by `build_index` (no probing, no staleness check)."""
    path = Path(cache_path)
    try:
        return VideoIndex.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        raise UserError("no such video index", path) from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"cannot read video index ({err})", path) from None
