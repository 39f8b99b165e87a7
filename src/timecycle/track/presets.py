"""The protocols `timecycle track` offers: the DAVIS presets by their names (`crw`, `timecycle`,
`dino`; frames at the sizes of SPEC 6's table, `crw` at the video's own size) and the JHMDB and
VIP presets as `jhmdb-crw`, `vip-timecycle` ... (frames squashed to 320 or 560 square), so a
video can be tracked exactly as `timecycle propagate jhmdb|vip` would propagate it.

Points are read back with the keypoint read-out of the protocol's family: the weighted mean of
the top 3 (crw) or top 5 (timecycle) positions of a point's map; `dino`, which has no keypoint
protocol, reads its own top-k (5).
"""

from __future__ import annotations

from timecycle.errors import UserError
from timecycle.propagation.presets import KEYPOINT_READOUTS, PROTOCOLS_BY_BENCHMARK, KeypointReadout
from timecycle.propagation.protocols import Protocol

TRACK_PROTOCOLS: dict[str, Protocol] = {
    (name if bench == "davis" else f"{bench}-{name}"): p
    for bench, presets in PROTOCOLS_BY_BENCHMARK.items() for name, p in presets.items()
}


def track_protocol(name: str) -> tuple[Protocol, KeypointReadout]:
    """The protocol `name` and its keypoint read-out; an unknown name is a one-line error."""
    if name not in TRACK_PROTOCOLS:
        raise UserError(f"unknown protocol {name!r}; choose from {', '.join(TRACK_PROTOCOLS)}")
    protocol = TRACK_PROTOCOLS[name]
    readout = KEYPOINT_READOUTS.get(protocol.name, KeypointReadout(topk=protocol.topk))
    return protocol, readout


__all__ = ["TRACK_PROTOCOLS", "track_protocol"]
