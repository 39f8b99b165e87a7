"""How the result files write a score: one convention for every benchmark's CSV and JSON."""

from __future__ import annotations

import math


def csv_field(value: float | None) -> str:
    """'%.6f' (the official DAVIS tables' precision); NaN or None as an empty field (pandas'
    default na_rep), e.g. a class absent from every frame."""
    return "" if value is None or math.isnan(value) else "%.6f" % value


def json_number(value: float) -> float | None:
    """A float for JSON, NaN as null (JSON has no NaN)."""
    return None if math.isnan(value) else float(value)
