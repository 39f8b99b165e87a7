"""An animation written one frame at a time, for videos of any length.

`AnimationStream` encodes each frame as it arrives into an mp4 (H.264 or MPEG-4 part 2 through
PyAV, yuv420p), so memory does not grow with the video. Where PyAV has no such encoder, it
falls back to an animated WebP (PIL), which must be written at once: it then keeps at most
`max_webp_frames` frames, dropping every other one (and doubling the time each stands for)
whenever that many are held. The file appears only when `close` succeeds.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from timecycle.datasets.io import atomic_path


def mp4_codec() -> str | None:
    """The H.264 encoder, else MPEG-4 part 2, else None (this PyAV cannot write mp4)."""
    try:
        import av
    except ImportError:
        return None
    for codec in ("libx264", "mpeg4"):
        if codec in av.codecs_available:
            try:
                av.CodecContext.create(codec, "w")
            except Exception:  # listed but not usable as an encoder in this build
                continue
            return codec
    return None


class AnimationStream:
    """Write (H, W, 3) uint8 frames to `stem.mp4`, or `stem.webp` without an mp4 encoder.

    `path` is the file written (known at construction); frames must all have one size.
    """

    def __init__(self, stem: str | Path, fps: float = 10.0, max_webp_frames: int = 240,
                 codec: str | None = "auto"):
        self.codec = mp4_codec() if codec == "auto" else codec
        self.path = Path(f"{stem}.{'mp4' if self.codec else 'webp'}")
        self.fps, self.max_webp_frames = fps, max_webp_frames
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        self._container = self._stream = None
        self._held: list[Image.Image] = []
        self._every = 1  # WebP: one kept frame per `_every` frames
        self._open = True
        self.count = 0

    def add(self, frame: np.ndarray) -> None:
        h, w = frame.shape[:2]
        if self.codec is None:
            if self.count % self._every == 0:
                self._held.append(Image.fromarray(frame))
                if len(self._held) >= self.max_webp_frames:
                    self._held, self._every = self._held[::2], self._every * 2
            self.count += 1
            return
        import av

        # yuv420p needs even sides: pad by one row/column of edge pixels when odd.
        frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        if self._stream is None:
            self._container = av.open(str(self._tmp), mode="w", format="mp4")
            self._stream = self._container.add_stream(self.codec,
                                                      rate=Fraction(self.fps).limit_denominator(1000))
            self._stream.width, self._stream.height = frame.shape[1], frame.shape[0]
            self._stream.pix_fmt = "yuv420p"
        packet_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        for packet in self._stream.encode(packet_frame):
            self._container.mux(packet)
        self.count += 1

    def close(self) -> Path:
        """Finish the file and put it in place."""
        try:
            if self.count == 0:
                raise ValueError("no frames to animate")
            if self.codec is None:
                duration = round(1000 * self._every / self.fps)
                self._held[0].save(self._tmp, format="WEBP", save_all=True,
                                   append_images=self._held[1:], duration=duration, loop=0,
                                   quality=80, method=4)
                self._held = []
            else:
                for packet in self._stream.encode():
                    self._container.mux(packet)
                self._container.close()
                self._container = None
        except BaseException as err:
            self.abort(err)
            raise
        self._open = False
        self._atomic.__exit__(None, None, None)
        return self.path

    def abort(self, err: BaseException | None = None) -> None:
        """Drop the partial file (after an error elsewhere)."""
        if not self._open:
            return
        self._open = False
        if self._container is not None:
            try:
                self._container.close()
            except Exception:
                pass
            self._container = None
        err = err or RuntimeError("aborted")
        try:
            self._atomic.__exit__(type(err), err, err.__traceback__)
        except BaseException:
            pass


__all__ = ["AnimationStream", "mp4_codec"]
