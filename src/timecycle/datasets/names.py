"""Which sequences or videos a command was asked for: `--sequences` / `--videos` handling."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from timecycle.errors import UserError


def requested_names(
    spec: str | Path | None,
    default_list: Path,
    read_list: Callable[[Path], list[str]],
    what: str,
    flag: str,
) -> list[str]:
    """Names from a list file, a comma-separated string, or `default_list` when `spec` is None.

    `what` names the items in messages ("sequences", "videos"); `flag` is the option to pass.
    """
    if spec is None and not default_list.is_file():
        raise UserError(f"no default {what[:-1]} list; pass {flag}", default_list)
    listing = default_list if spec is None else Path(spec)
    if listing.is_file():
        names = read_list(listing)
        if not names:  # an empty list file: name it (not "no sequences given (None)")
            raise UserError(f"the list names no {what}", listing)
        return checked_names(names, what, listing)
    names = [s.strip() for s in str(spec).split(",") if s.strip()]
    if not names:
        raise UserError(f"no {what} given ({spec})")
    return checked_names(names, what, None)


def checked_names(names: list[str], what: str, listing: Path | None) -> list[str]:
    """`names` each once, in its plain form ("./a/" is "a"), in the order given: a folder
    named twice would be propagated, and its results replaced, twice. A name is a folder
    under the dataset's root and the results folder: one that is absolute or climbs with
    `..` would read and write outside them, and is refused (naming `listing`, if any)."""
    for name in names:
        # The platform's own rules: "c:x" and "a\\b" are plain names on POSIX, not a drive
        # and two folders as on Windows.
        parts = Path(name).parts
        if not parts or Path(name).anchor or ".." in parts:
            raise UserError(f"{what[:-1]} name {name!r} leaves the dataset's folders: names "
                            "are relative, without '..'", listing)
    return list(dict.fromkeys(Path(n).as_posix() for n in names))
