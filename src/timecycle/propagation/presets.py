"""Propagation presets per benchmark: DAVIS, JHMDB keypoints and VIP parts (SPEC 6).

The DAVIS presets are those of `protocols.py`. The JHMDB and VIP presets change only the frame
size and the context length of the same propagation rules, as the public code does; keypoints
add a read-out (how many top positions average into a joint's location).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from timecycle.errors import UserError
from timecycle.propagation.protocols import CRW, PROTOCOLS, TIMECYCLE, Protocol

JHMDB_CRW = CRW.replace(
    # CRW test.py on JHMDB: --cropSize 320 squashes every frame to 320x320 (its JhmdbSet keeps
    # ratio = 1.0), 7 context frames, the DAVIS top-10 / radius 12 / temperature 0.05.
    frame_resize="square",
    size=320,
    n_context=7,
)

JHMDB_TIMECYCLE = TIMECYCLE.replace(
    # TimeCycle paper, JHMDB: frames at 320x320, frame 0 + 7 previous, top-5 per frame.
    size=320,
    n_context=7,
)

VIP_CRW = CRW.replace(
    # CRW on VIP: frames squashed to 560x560 (SPEC 6), 4 context frames. CRW data/vos.py
    # resizes the label image with the frame, makes the one-hot there and resizes it bilinearly
    # to the feature size: a 560 canvas.
    frame_resize="square",
    size=560,
    label_canvas=560,
    n_context=4,
)

VIP_TIMECYCLE = TIMECYCLE.replace(
    # TimeCycle's rules at SPEC 6's VIP frame size (560x560; TimeCycle's own VIP test code is
    # not public, so the size is CRW's); the one-hot is made at the same canvas.
    size=560,
    label_canvas=560,
    n_context=7,
)

PROTOCOLS_BY_BENCHMARK: dict[str, dict[str, Protocol]] = {
    "davis": dict(PROTOCOLS),
    "jhmdb": {"crw": JHMDB_CRW, "timecycle": JHMDB_TIMECYCLE},
    "vip": {"crw": VIP_CRW, "timecycle": VIP_TIMECYCLE},
}


@dataclass(frozen=True)
class KeypointReadout:
    """How joints become heat maps and come back (SPEC 6, keypoints)."""

    # Weighted mean of the `topk` largest positions of a joint's propagated map: 3 in CRW
    # (utils/test_utils.py process_pose, topk=3), 5 in the TimeCycle paper.
    topk: int
    # Gaussian standard deviation in feature cells (CRW data/jhmdb.py JhmdbSet, sigma=0.5).
    sigma: float = 0.5

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


KEYPOINT_READOUTS: dict[str, KeypointReadout] = {
    "crw": KeypointReadout(topk=3),
    "timecycle": KeypointReadout(topk=5),
}


def get_benchmark_protocol(benchmark: str, name: str) -> Protocol:
    """The preset `name` for `benchmark`; an unknown one is a one-line error."""
    presets = PROTOCOLS_BY_BENCHMARK[benchmark]
    if name not in presets:
        raise UserError(
            f"unknown protocol {name!r} for {benchmark}; choose from {', '.join(presets)}"
        )
    return presets[name]


__all__ = [
    "JHMDB_CRW",
    "JHMDB_TIMECYCLE",
    "KEYPOINT_READOUTS",
    "KeypointReadout",
    "PROTOCOLS_BY_BENCHMARK",
    "VIP_CRW",
    "VIP_TIMECYCLE",
    "get_benchmark_protocol",
]
