"""bench/learning.py end to end on generated video and a generated DAVIS root, --tiny's budget."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_learning_benchmark_runs_end_to_end(tmp_path):
    out = tmp_path / "learning"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "learning.py"), "--tiny", "--out", str(out),
         "--recipes", "tc-code-crop-frozenbn,crw-small", "--eval-every", "1",
         "--threads", "1", "--workers", "0"],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader(open(out / "results.csv")))
    names = [r["name"] for r in rows]
    assert names[:2] == ["identity", "pixel"]
    assert "random resnet18 (timecycle), as built" in names
    assert "random resnet18 (crw), training-clip BatchNorm statistics" in names
    recipes = {r["name"]: r for r in rows if r["kind"] == "recipe"}
    assert set(recipes) == {"tc-code-crop-frozenbn", "crw-small"}
    for r in rows:
        assert 0 <= float(r["proxy_jf"]) <= 1 and 0 <= float(r["final_jf"]) <= 1
    # --tiny's own budget: 8 clips a recipe, 2 steps of 4
    assert all(r["clips"] == "8" and r["steps"] == "2" for r in recipes.values())
    table = (out / "results.md").read_text()
    assert "Proxy: DAVIS proxy" in table and "| crw-small | 8 | 2 |" in table
    assert (out / "learning.png").stat().st_size > 1000

    # A finished run scored again with a chosen baseline: no training, only the rows asked for;
    # a checkpoint file is scored at its own step.
    again = tmp_path / "again"
    run = out / "runs" / "crw-small"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "learning.py"), "--tiny", "--out", str(again),
         "--runs", f"crw={run}", f"crw1={run / 'step-000001.pt'}", "--baselines", "pixel",
         "--threads", "1", "--workers", "0"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader(open(again / "results.csv")))
    assert [(r["name"], r["kind"]) for r in rows] == [
        ("pixel", "baseline"), ("crw", "recipe"), ("crw1", "recipe")]
    assert (rows[1]["clips"], rows[1]["steps"]) == ("8", "2")
    assert (rows[2]["clips"], rows[2]["steps"]) == ("4", "1")
    assert rows[1]["final_jf"] != rows[2]["final_jf"]  # two networks, not last.pt twice

    # The baselines of a run's architecture alone: the run itself is not scored, and the
    # statistics come from the run's own config (its seed), so they repeat the first table's.
    only = tmp_path / "only"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "learning.py"), "--tiny", "--out", str(only),
         "--runs", f"crw={run}", "--baselines", "random-bnstats", "--baselines-only",
         "--threads", "1", "--workers", "0"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader(open(only / "results.csv")))
    name = "random resnet18 (crw), training-clip BatchNorm statistics"
    assert [(r["name"], r["kind"]) for r in rows] == [(name, "baseline")]
    first = {r["name"]: r for r in csv.DictReader(open(out / "results.csv"))}[name]
    assert rows[0]["final_jf"] == first["final_jf"]


def test_learning_benchmark_refuses_unknown_baseline(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "learning.py"), "--out", str(tmp_path),
         "--baselines", "pixel,imagenet"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "unknown --baselines imagenet" in done.stderr


def test_learning_benchmark_refuses_baselines_only_without_runs(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "learning.py"), "--out", str(tmp_path),
         "--baselines-only"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--baselines-only needs --runs" in done.stderr
