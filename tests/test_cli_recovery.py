"""A rerun killed outright (kill -9, a lost machine): the next command that writes into its folder,
or reads results from it, puts back what it had set aside; live writers and other hosts' runs
are left alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from helpers import run_cli

_KILLED_RERUN = """
import os, signal, sys
from pathlib import Path
from timecycle.datasets.outputs import output_folder, replace_entry
out = Path(sys.argv[1])
with output_folder(out):
    for name in ("a", "b"):
        replace_entry(out / name)
        (out / name).mkdir()
        (out / name / "x.png").write_text("new")
    replace_entry(out / "c.csv")  # killed before the new c.csv is written
    if sys.argv[2] == "after-commit":
        from timecycle.datasets import outputs
        outputs._REPLACED.get().close()
    os.kill(os.getpid(), signal.SIGKILL)
"""


_KILLED_PROPAGATION = """
import os, signal, sys
from pathlib import Path
from timecycle.datasets.outputs import output_folder, replace_entry
out = Path(sys.argv[1])
with output_folder(out):  # as a rerun of `propagate davis` is when SIGKILL comes
    replace_entry(out / "propagation.json")
    replace_entry(out / "synth00")
    (out / ".partial-synth00").mkdir()
    (out / ".partial-synth00" / "00000.png").write_text("half")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_rerun(out: Path, when: str) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _KILLED_RERUN, str(out), when])
    assert proc.returncode == -9


def _contents(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _texts(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): p.read_text() for p in sorted(out.rglob("*")) if p.is_file()}


def test_a_rerun_killed_outright_is_put_back_by_the_next_command(tmp_path):
    # SIGKILL leaves the originals set aside as .replaced-*; the next command on the folder
    # puts them back before it starts (so a failure of its own cannot lose them), as a failed
    # run would have done itself.
    from timecycle.datasets.outputs import output_folder

    out = tmp_path / "o"
    for name in ("a", "b"):
        (out / name).mkdir(parents=True)
        (out / name / "x.png").write_text("old")
    (out / "c.csv").write_text("old")
    before = _texts(out)
    _killed_rerun(out, "before-commit")
    assert ".replaced-a/x.png" in _texts(out)
    with pytest.warns(UserWarning, match="put back 3 previous result"):
        with pytest.raises(KeyError), output_folder(out):
            assert _texts(out) == before
            raise KeyError("the next run fails too")
    assert _texts(out) == before and sorted(p.name for p in out.iterdir()) == ["a", "b", "c.csv"]


@pytest.mark.parametrize("reader", ["evaluate", "report"])
def test_commands_that_read_results_put_a_killed_rerun_back_first(reader, synthetic_davis,
                                                                   tmp_path, capsys):
    # `evaluate` without --root reads propagation.json and `report` reads the whole folder:
    # before, both found the killed rerun's folder without it and failed.
    import subprocess
    import sys

    out = tmp_path / "res"
    code, _, err = run_cli(capsys, *["propagate", "davis", "--root", synthetic_davis, "--encoder",
                                 "pixel", "--device", "cpu", "--sequences", "synth00",
                                 "--out", out, "--quiet", "--evaluate"])
    assert code == 0, err
    before = _contents(out)
    assert subprocess.run([sys.executable, "-c", _KILLED_PROPAGATION, str(out)]).returncode == -9
    assert not (out / "propagation.json").exists() and (out / ".partial-synth00").is_dir()
    argv = (["evaluate", "davis", "--results", out, "--quiet"] if reader == "evaluate"
            else ["report", out, "--out", tmp_path / "page"])
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert "put back 2 previous result(s)" in err
    assert _contents(out) == before  # `evaluate` wrote its score files again, equal
    assert reader == "evaluate" or (tmp_path / "page" / "index.html").is_file()
    assert not list(out.glob(".*"))  # no journal, no set-aside copy, no unfinished item


def test_readers_recover_their_results_folder_alone(tmp_path, capsys):
    # `evaluate points --pred W/pred.npy` reads W and, by default, writes its scores there: a
    # killed run in W/k2, or one writing W/live now, is another command's business (before:
    # put back, or refused "another run").
    import socket
    import subprocess

    from timecycle.datasets.outputs import JOURNAL

    (tmp_path / "gt.json").write_text(json.dumps({"names": ["a", "b"], "frames": [
        {"frame": 0, "xy": [[5, 5], [9, 9]], "visible": [True, True]},
        {"frame": 1, "xy": [[10, 10], [20, 30]], "visible": [True, True]}]}))
    np.save(tmp_path / "pred.npy", np.array([[[5.0, 5.0], [9, 9]], [[10.0, 10.0], [20, 30]]]))
    (tmp_path / "k2" / "a").mkdir(parents=True)
    (tmp_path / "k2" / "a" / "x.png").write_text("old")
    _killed_rerun(tmp_path / "k2", "before-commit")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "live").mkdir()
        (tmp_path / "live" / JOURNAL).write_text(json.dumps(
            {"pid": live.pid, "host": socket.gethostname(), "replaced": []}))
        code, _, err = run_cli(capsys, *["evaluate", "points", "--gt", tmp_path / "gt.json",
                                     "--pred", tmp_path / "pred.npy"])
    finally:
        live.kill()
        live.wait()
    assert code == 0 and "warning" not in err, err
    assert (tmp_path / "points_pck.csv").is_file()
    assert (tmp_path / "k2" / JOURNAL).is_file() and (tmp_path / "k2" / ".replaced-a").is_dir()


def test_a_reader_leaves_a_journal_from_another_host_alone(tmp_path):
    # That run may be writing now over a shared filesystem: putting its folder back would
    # wreck it. A writer on this machine still takes such a journal for a killed run's.
    from timecycle.datasets.outputs import JOURNAL, output_folder, recover_interrupted

    (tmp_path / "a").mkdir()
    (tmp_path / ".replaced-a").mkdir()
    (tmp_path / ".partial-b").mkdir()
    (tmp_path / JOURNAL).write_text(json.dumps(
        {"pid": 1, "host": "elsewhere.example", "replaced": [["a", ".replaced-a"]]}))
    with pytest.warns(UserWarning, match="a run on host elsewhere.example is replacing"):
        recover_interrupted(tmp_path, reading=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [JOURNAL, ".partial-b", ".replaced-a", "a"])
    with pytest.warns(UserWarning, match="put back 1 previous"), output_folder(tmp_path):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_a_run_killed_after_its_commit_keeps_its_new_results(tmp_path):
    from timecycle.datasets.outputs import output_folder, replace_entry

    out = tmp_path / "o"
    (out / "a").mkdir(parents=True)
    (out / "a" / "x.png").write_text("old")
    _killed_rerun(out, "after-commit")
    assert (out / ".replaced-a" / "x.png").read_text() == "old"  # garbage after the commit
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to put back
        with output_folder(out):
            assert (out / "a" / "x.png").read_text() == "new"
            replace_entry(out / "a")  # the stale copy goes, this run's original is set aside
    assert not (out / "a").exists() and not list(out.glob(".*"))


def test_a_folder_another_live_run_writes_is_refused(tmp_path):
    import socket
    import subprocess
    import sys

    from timecycle.datasets.outputs import JOURNAL, output_folder
    from timecycle.errors import UserError

    out = tmp_path / "o"
    out.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / JOURNAL).write_text(json.dumps(
            {"pid": live.pid, "host": socket.gethostname(), "replaced": []}))
        with pytest.raises(UserError, match=f"another run \\(process {live.pid}\\)"):
            with output_folder(out):
                pass
    finally:
        live.kill()
        live.wait()
    with output_folder(out):  # its writer gone, the journal is an interrupted run's
        pass
    assert not (out / JOURNAL).exists()


def test_a_journal_whose_pid_is_now_another_process_is_an_interrupted_runs(tmp_path):
    # A killed run's pid can be reused by an unrelated process: that one must not be taken for
    # the writer (the folder would be refused until it ended). /proc says when a pid started.
    import socket

    from timecycle.datasets.outputs import JOURNAL, _process_start, output_folder

    if _process_start(os.getpid()) is None:
        pytest.skip("no /proc here: a process's start time is unknown")
    out = tmp_path / "o"
    out.mkdir()
    (out / "res").write_text("new")
    (out / ".replaced-res").write_text("old")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # its own pid, but a start time before it was born: the writer was another process
        (out / JOURNAL).write_text(json.dumps(
            {"pid": live.pid, "host": socket.gethostname(),
             "started": _process_start(live.pid) - 1, "replaced": [["res", ".replaced-res"]]}))
        with pytest.warns(UserWarning, match="put back 1 previous result"):
            with output_folder(out):
                pass
    finally:
        live.kill()
        live.wait()
    assert (out / "res").read_text() == "old" and not (out / JOURNAL).exists()
