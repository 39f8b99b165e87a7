"""Assertions that several test files share."""

from __future__ import annotations


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    """A user error: exit status 2, one `timecycle: error:` line holding every needle, no
    traceback."""
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("timecycle: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
