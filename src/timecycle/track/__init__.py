"""Track what a user points at in their own video: a first-frame mask, points, and dense
correspondence to frame 0, with the benchmarks' propagation engine (SPEC 6).

- `inputs`: the video as a stream of frames, the first-frame mask, the points CSV;
- `propagate`: mask and points as one label through `LabelPropagator`, and soft-argmax flow;
- `outputs`: the track arrays and CSV, and the flow array streamed to disk;
- `run`: `track_video`, which writes the whole output folder.
"""

from timecycle.track.run import track_video

__all__ = ["track_video"]
