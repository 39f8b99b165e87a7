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
    # TimeCycle's own JHMDB script is not public; the public one of its lineage (UVC
    # test_jhmdb.py with libs/jhmdb_test_dense_fix_slide.py, grown from test_davis.py) keeps
    # DAVIS's steps: 8 copies of frame 0 with frame 0 as the first target, min-max normalised
    # stored labels, and the joints read from that normalised label (KeypointReadout, top 5).
    # Its heat maps are made at feature resolution, so the mask-only rows do not apply.
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
    # TimeCycle's propagation rules (frame 0 + 7 previous, per-frame top-5, min-max stored
    # context) at SPEC 6's VIP frame size (560x560, CRW's), the one-hot made at that canvas.
    # TimeCycle's VIP test code is not public (UVC's VIP script runs its own, DINO-like, loop),
    # so the quirks of its DAVIS script are not assumed here: the output comes from the raw
    # prediction, frame 0 is not propagated onto itself, the label is resized by floor
    # sampling and no small part is dropped, as before they were matched for DAVIS. (With
    # them, the Lab-colour baseline on the generated VIP videos of tests/test_vip.py falls
    # from 0.81 to 0.59 mIoU, below the identity baseline.)
    size=560,
    label_canvas=560,
    label_nearest="floor",
    min_label_pixels=0,
    n_context=7,
    self_propagate=False,
    output_label="prediction",
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
