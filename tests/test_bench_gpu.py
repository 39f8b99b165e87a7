"""bench/gpu.py --smoke: every section on the CPU at tiny sizes, so the GPU script cannot rot."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@pytest.mark.slow
def test_gpu_bench_smoke_writes_four_sections_with_numbers(tmp_path):
    out = tmp_path / "gpu"
    # A budget the smoke run's tiny sizes never reach on a quiet machine (about a minute in
    # all): under load, 180 s cut the propagation runs short of every sequence, which the
    # asserts below would read as a bug.
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py"), "--smoke", "--out",
                           str(out), "--seconds", "480"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "gpu.json").read_text())
    for name in ("environment", "propagation", "training", "learning"):
        assert report[name]["status"] == "ok", (name, report[name].get("error"),
                                                report[name].get("log_tail"))
        assert "error" not in report[name]

    env = report["environment"]
    assert _number(env["cpu_count"]) and env["torch"] and env["torchvision"]
    assert env["pyav"].startswith("hidden")  # the smoke run reads frame folders without PyAV
    assert env["tensorboard"].startswith("hidden")  # and trains without TensorBoard

    prop = report["propagation"]
    runs = {(r["protocol"], r["precision"]): r for r in prop["runs"]}
    assert set(runs) == {(p, q) for p in ("crw", "dino", "timecycle", "dino-vit-s16")
                         for q in ("fp32", "bf16")} | {("crw-head", "fp32")}
    assert runs[("dino-vit-s16", "bf16")]["encoder"] == "vit-s16"
    assert runs[("dino-vit-s16", "fp32")]["channels"] == 384
    # The TimeCycle head's 512 channels against the plain encoder's 256, per channel.
    assert runs[("crw-head", "fp32")]["channels"] == 512 and runs[("crw", "fp32")]["channels"] == 256
    for r in runs.values():
        assert r["sequences"] == prop["sequences_available"], r
        assert _number(r["fps_e2e"]) and r["fps_e2e"] > 0 and _number(r["encoder_fps"])
        assert 0 <= r["jf"] <= 1 and set(r["per_sequence"]) == set(r["sequences"])
    st = prop["stages"]  # one sequence timed stage by stage
    assert set(st["ms_per_frame"]) == {"read JPEGs", "encoder", "propagation", "output"}
    assert all(_number(v) and v > 0 for v in st["ms_per_frame"].values())
    assert _number(st["e2e_ms_per_frame"]) and st["frames"] > 1
    check = prop["cpu_check"]
    assert check["ok"] is True and check["diff_fp32"] <= check["tolerance"] == 0.002

    assert st["graph_vs_eager_max_abs_diff"] == 0  # no CUDA graph on the CPU: the same steps
    assert st["cuda_graph"] == "no (eager: not CUDA)"  # said in the stages and in every run
    assert {r["cuda_graph"] for r in runs.values()} == {"no (eager: not CUDA)"}
    assert "| CUDA graph |" in (out / "gpu.md").read_text()
    assert _number(st["propagation_eager_ms_per_frame"])

    train = report["training"]["runs"]
    engine = [r for r in train if r["preset"] == "engine"]
    train = [r for r in train if r["preset"] != "engine"]
    measured = [r for r in train if "clips_per_s" in r]
    assert {r["preset"] for r in measured} == {"small", "full"}
    assert {r["arch"] for r in measured} == {"resnet18", "resnet50"}
    for r in measured:
        assert r["clips_per_s"] > 0 and 0 <= r["data_wait"] <= 1 and r["bound_ratio"] > 0
        # Profiled: the operator table written, no GPU time on the CPU.
        assert "profile_error" not in r and r["ops_per_step"] > 100, r
        assert r["device_busy"] is None and r["syncs_per_step"] is None
    tables = (out / "profiles.txt").read_text()  # gathered into one file
    assert "== small\n" in tables and "== full\n" in tables and "aten::" in tables
    assert not (out / "profiles").exists()
    assert all(r.get("skipped") for r in train if r["compile"] != "none")  # said, not missing
    # `timecycle train` itself at its defaults (no compiling on the CPU); graphs said skipped.
    assert [r["compile"] for r in engine] == ["auto", "graphs"] and engine[1].get("skipped")
    assert "error" not in engine[0], engine[0]  # e.g. an import the GPU machine lacks
    assert engine[0]["arch"] == "resnet50" and engine[0]["steps"] == 4, engine[0]
    assert engine[0]["clips_per_s"] > 0 and engine[0]["bound_ratio"] > 0

    learn = {r["objective"]: r for r in report["learning"]["runs"]}
    assert set(learn) == {"timecycle", "crw"}
    # the TimeCycle recipe that learns on the CPU, not the plain `small`
    assert learn["timecycle"]["preset"] == "small-reflect-long"
    for r in learn.values():
        assert r["steps"] == 2 and 0 <= r["jf_before"] <= 1 and 0 <= r["jf_after"] <= 1
        assert [c["step"] for c in r["curve"]] == [1, 2]

    table = (out / "gpu.md").read_text()
    for heading in ("## environment", "## propagation", "## training", "## learning"):
        assert heading in table
    assert "| crw | fp32 |" in table and "CPU check" in table and "Stages (" in table
    assert "TimeCycle head (crw-head, 512 channels" in table
