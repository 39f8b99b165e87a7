"""Training data (SPEC 5): video sources, their index, clip sampling and the DataLoader.

    index = build_index(data_dir, cache_path=run_dir / "video_index.json")
    dataset = ClipDataset(index, ClipConfig(), seed=0)
    loader = make_loader(dataset, batch_size=32, workers=8, start_index=0, seed=0)
"""

from timecycle.data.clips import ClipConfig, ClipDataset, clip_offsets, cut_patch, patch_theta
from timecycle.data.index import VideoIndex, VideoRecord, build_index, find_sources, load_index
from timecycle.data.sampler import ResumableSampler, make_loader
from timecycle.data.video import BadVideoWarning, DecodeError, read_frames

__all__ = [
    "BadVideoWarning",
    "ClipConfig",
    "ClipDataset",
    "DecodeError",
    "ResumableSampler",
    "VideoIndex",
    "VideoRecord",
    "build_index",
    "clip_offsets",
    "cut_patch",
    "find_sources",
    "load_index",
    "make_loader",
    "patch_theta",
    "read_frames",
]
