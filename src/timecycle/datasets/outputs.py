"""A command's output folder as a transaction: checked before any work
(`check_output_folder`), tidied when the command fails (`output_folder`), and results it
replaces set aside until it succeeds (`replace_entry`), with a journal on disk so that the next
command puts them back after a run killed outright (`recover_interrupted`).
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import os
import shutil
import socket
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from timecycle.datasets.io import read_json_object, write_json_atomic
from timecycle.errors import UserError


def _writable(folder: Path) -> bool:
    # access() also reports a read-only filesystem (EROFS), not only the permission bits.
    return os.access(folder, os.W_OK | os.X_OK)


def check_output_folder(path: str | Path) -> Path:
    """`path` as an output folder that can be made and written, else a UserError naming it.

    Nothing is created: the folder itself, or its nearest existing parent, is checked. A file
    at `path` (or at a parent) and a folder that cannot be written (no permission, read-only
    filesystem) are refused.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError("exists and is not a folder; choose a folder for --out", path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot create the folder: {existing} is a file", path)
    if not _writable(existing):
        where = "" if existing == path else f" (in {existing})"
        raise UserError(f"cannot write here{where}: no permission or a read-only filesystem", path)
    return path


def _entries(folder: Path) -> set[str]:
    """Every path under `folder` (files and folders, at any depth)."""
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder):
        found.update(os.path.join(dirpath, n) for n in dirnames + filenames)
    return found


def _remove_new(folder: Path, before: set[str]) -> None:
    """Remove every path under `folder` that is not in `before`."""
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in list(dirnames):
            if os.path.join(dirpath, name) not in before:
                shutil.rmtree(os.path.join(dirpath, name), ignore_errors=True)
                dirnames.remove(name)
        for name in filenames:
            if os.path.join(dirpath, name) not in before:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(dirpath, name))


def _inside(name: object, folder: Path) -> bool:
    if not isinstance(name, (str, os.PathLike)):
        return False
    return Path(os.path.abspath(name)).is_relative_to(os.path.abspath(folder))


JOURNAL = ".timecycle-replaced.json"


class _Journal:
    """What an `output_folder` block has set aside so far, (original, set-aside copy) pairs.

    The outermost block also keeps every pair of itself and the blocks inside it on disk
    (`JOURNAL` in its folder, paths relative to it) from the first replacement on. A run
    killed outright (SIGKILL, power loss) cannot put its set-aside copies back itself; the
    journal lets the next command on the folder do it (`recover_interrupted`). Removing the journal is
    the commit: a run killed after that keeps its new results, and only its leftover
    `.replaced-*` copies are garbage, deleted when a later run replaces the same name."""

    def __init__(self, folder: Path, outer: _Journal | None) -> None:
        self.pairs: list[tuple[Path, Path]] = []
        self.top = self if outer is None else outer.top
        self.file = folder.absolute() / JOURNAL  # used by the top block only
        self.listed: list[tuple[Path, Path]] = []  # the top block's: what its file lists
        # Who writes it, read once: the file is rewritten at every replacement (per sequence).
        self.writer = {"pid": os.getpid(), "host": socket.gethostname(),
                       "started": _process_start(os.getpid())} if outer is None else None

    def add(self, original: Path, aside: Path) -> None:
        self.pairs.append((original, aside))
        self.top.listed.append((original, aside))
        self.top.write()

    def forget(self) -> None:
        """This (inner) block put its pairs back: the file lists them no longer."""
        self.top.listed = [p for p in self.top.listed if p not in self.pairs]
        self.top.write()

    def write(self) -> None:
        root = self.file.parent
        write_json_atomic(self.file, {
            **self.writer,
            "replaced": [[os.path.relpath(o, root), os.path.relpath(a, root)]
                         for o, a in self.listed]})

    def close(self) -> None:
        self.file.unlink(missing_ok=True)


# The journal of the innermost `output_folder` block; None outside such a block.
_REPLACED: contextvars.ContextVar[_Journal | None] = contextvars.ContextVar(
    "timecycle_replaced", default=None)


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _put_back(pairs: list[tuple[Path, Path]]) -> None:
    """Each set-aside copy back in its original's place, last replaced first. Safe to repeat
    after being killed half-way: a pair whose copy is gone is already back."""
    for original, aside in reversed(pairs):
        if not (aside.exists() or aside.is_symlink()):
            continue
        if original.exists() or original.is_symlink():
            _delete(original)
        aside.rename(original)


def replace_entry(path: Path) -> None:
    """Make way for a new `path` (a result file or folder a command writes again). Inside an
    `output_folder` block the old one is set aside as `.replaced-<name>` until the block ends:
    dropped if it succeeds, put back if it fails (or by the next command, if it is killed
    outright), so a failed rerun leaves the previous results whole instead of a mixture of
    old and new that still evaluates. Elsewhere it is deleted."""
    if not path.exists() and not path.is_symlink():
        return
    journal = _REPLACED.get()
    if journal is None or any(original == path for original, _ in journal.pairs):
        _delete(path)  # nothing to keep, or this block's own output written twice
        return
    aside = path.with_name(f".replaced-{path.name}")
    if aside.exists() or aside.is_symlink():
        _delete(aside)  # left by a run killed after its commit (see _Journal)
    journal.add(path, aside)  # on disk before the rename: a kill between them is harmless
    path.rename(aside)


def _journal_pairs(record: dict, root: Path) -> list[tuple[Path, Path]] | None:
    """The pairs a journal in `root` lists; None if it names anything but an entry and its
    `.replaced-<name>` copy beside it."""
    pairs = []
    items = record.get("replaced")
    for item in items if isinstance(items, list) else [None]:
        if not (isinstance(item, list) and len(item) == 2
                and all(isinstance(p, str) for p in item)):
            return None
        original, aside = (Path(os.path.normpath(root / p)) for p in item)
        if original == root or aside != original.with_name(f".replaced-{original.name}"):
            return None
        pairs.append((original, aside))
    return pairs


def _process_start(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (Linux's /proc/PID/stat field
    22); None where /proc cannot tell. With the pid it names one process: a pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])  # the name may hold spaces
    except (OSError, ValueError, IndexError):
        return None


def _live_writer(record: dict, folder: Path, reading: bool = False) -> bool:
    """True if the journal is this process's own (an enclosing block); a UserError if another
    live process on this machine writes it: two commands writing one folder at once would mix
    their results, and one reading it would read a half-replaced set."""
    pid = record.get("pid")
    if not isinstance(pid, int) or record.get("host") != socket.gethostname():
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    started = record.get("started")
    if isinstance(started, int) and _process_start(pid) not in (started, None):
        return False  # the writer is gone and its pid taken by another process since
    advice = "" if reading else ", or choose another --out"
    raise UserError(f"another run (process {pid}) is writing into this folder now; wait for "
                    f"it to finish{advice}", folder)


def recover_interrupted(path: str | Path, reading: bool = False) -> None:
    """Put back what runs killed outright had set aside in `path` (their journals, at any
    depth), and remove their unfinished `.partial-*` items: the folder returns to what it held
    before those runs, as a failed run leaves it. Every command that writes into a folder
    (`output_folder`) calls it first.

    `reading`: the command reads results from `path` (evaluate, report). Only `path`'s own
    journal is its business (the folder was the writer's --out), not those beside or below;
    and a journal written on another host is left alone with a warning: that run may be
    writing now over a shared filesystem, and this machine cannot tell.

    A UserError if another live process on this machine writes the folder now.
    """
    path = Path(path)
    if not path.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(path):
        if reading:
            dirnames.clear()
        if JOURNAL not in filenames:
            continue
        file = Path(dirpath).absolute() / JOURNAL
        record = read_json_object(file, "an interrupted run's journal") or {}
        if reading and record.get("host") != socket.gethostname():
            warnings.warn(f"{dirpath}: a run on host {record.get('host')} is replacing these "
                          "results, or was killed there; they are read as they are",
                          stacklevel=2)
            continue
        if _live_writer(record, file.parent, reading):
            continue
        pairs = _journal_pairs(record, file.parent)
        if pairs is None:
            raise UserError("cannot read this journal of the results an interrupted run "
                            "replaced; put its .replaced-* entries back by hand, then delete it",
                            file)
        _put_back(pairs)
        # No run has started here since the writer died (each would have recovered first):
        # its unfinished items (propagation/results.py partial_folder) are nobody's.
        for parent, names, _ in os.walk(file.parent):
            for name in [n for n in names if n.startswith(".partial-")]:
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
                names.remove(name)
        file.unlink()
        if pairs:
            warnings.warn(f"{dirpath}: put back {len(pairs)} previous result(s) that a run "
                          "killed before it finished had set aside", stacklevel=2)


# Errors of the device, not of one file: raised by write() and close(), without a filename.
_DEVICE_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


@contextlib.contextmanager
def output_folder(path: str | Path, keep: Callable[[Path], bool] | None = None,
                  reading: bool = False) -> Iterator[Path]:
    """A command's output folder: checked first (`check_output_folder`), tidied if it fails.

    If the block raises (a user error, a bug, Ctrl-C), everything it added under `path` is
    removed again (and `path` itself, with any parents, when the block made it), and what it
    replaced through `replace_entry` is put back, so a failed command leaves what was there
    before; `keep(path)` True keeps the partial output (a run with a checkpoint that
    `--resume` continues). Files changed in place stay as they are now. An OSError on a file
    inside `path` (disk full, read-only) becomes a UserError naming that file.
    """
    path = check_output_folder(path)
    recover_interrupted(path, reading)  # reading: scores written beside results it reads
    top = path  # the outermost folder the block will create
    while not top.parent.exists():
        top = top.parent
    existed = path.exists()
    before = _entries(path) if existed else set()
    outer = _REPLACED.get()  # a block inside another command's block (the demo's results)
    journal = _Journal(path, outer)
    token = _REPLACED.set(journal)
    try:
        yield path
    except BaseException as err:
        _REPLACED.reset(token)
        if keep is None or not keep(path):
            _put_back(journal.pairs)
            if outer is None:
                journal.close()
            else:
                journal.forget()
            if existed:
                _remove_new(path, before)
            else:
                shutil.rmtree(top, ignore_errors=True)
        else:
            _settle(journal, outer)
        if isinstance(err, OSError) and _inside(err.filename, path):
            reason = err.strerror or type(err).__name__
            raise UserError(f"cannot write ({reason})", err.filename) from None
        if isinstance(err, OSError) and err.filename is None and err.errno in _DEVICE_FULL:
            # write() and close() name no file: most likely this folder's device, but a
            # temporary file elsewhere (the evaluation proxy's) fails the same way
            raise UserError(f"cannot write ({os.strerror(err.errno)}), here or in a temporary "
                            "file of the run", path) from None
        raise
    _REPLACED.reset(token)
    _settle(journal, outer)


def _settle(journal: _Journal, outer: _Journal | None) -> None:
    """A block's new outputs stay: what they replaced is dropped, or handed to the enclosing
    block, which may still fail and put it back."""
    if outer is not None:
        outer.pairs.extend(journal.pairs)  # already in the top block's file
        return
    journal.close()  # the commit: from here on a kill leaves the new results
    for _, aside in journal.pairs:
        _delete(aside)
