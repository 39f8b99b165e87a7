"""Training precision: bf16 autocast, and `--precision auto` by what the device computes natively."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny

from timecycle.engine.logging import read_metrics
from timecycle.engine.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bf16_autocast_path_runs(data, tmp_path):
    """The CUDA recipe's autocast, exercised on the CPU."""
    run = train(tiny(data, tmp_path, steps=1, precision="bf16", deterministic=False))
    record = read_metrics(run)[0]
    assert record["nonfinite"] == 0 and record["loss"] is not None
    assert json.loads((run / "config.json").read_text())["resolved"]["precision"] == "torch.bfloat16"


@pytest.mark.parametrize("native", [True, False])
def test_precision_auto_is_bf16_where_the_device_computes_it(native, data, tmp_path, monkeypatch):
    from timecycle.engine import runtime

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert runtime.amp_dtype("auto", cpu) == (torch.bfloat16 if native else None)
    assert runtime.amp_dtype("auto", cuda) == torch.bfloat16
    assert runtime.amp_dtype("fp32", cpu) is None and runtime.amp_dtype("fp32", cuda) is None
    assert runtime.amp_dtype("bf16", cpu) == torch.bfloat16
    run = train(tiny(data, tmp_path, steps=1))  # precision "auto"
    resolved = json.loads((run / "config.json").read_text())["resolved"]["precision"]
    assert resolved == ("torch.bfloat16" if native else "fp32")


@pytest.mark.parametrize("native", [True, False])
def test_explicit_bf16_on_an_emulating_cpu_is_noted(native, data, tmp_path, monkeypatch, capsys):
    from timecycle.engine import runtime

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    train(tiny(data, tmp_path, steps=1, precision="bf16", deterministic=False))
    assert ("bf16 on this CPU is emulated" in capsys.readouterr().err) == (not native)
    assert runtime.emulated_bf16_note(None, torch.device("cpu")) is None  # fp32: nothing to say
    assert runtime.emulated_bf16_note(torch.bfloat16, torch.device("cuda")) is None


def test_native_bf16_detection_reads_the_cpu_flags(tmp_path, monkeypatch):
    from timecycle.engine import runtime

    def detect(flags: str) -> bool:
        (tmp_path / "cpuinfo").write_text(f"processor\t: 0\nflags\t\t: {flags}\n\n")
        real_open = open
        monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(
            tmp_path / "cpuinfo" if path == "/proc/cpuinfo" else path, *a, **k))
        runtime.cpu_has_native_bf16.cache_clear()
        try:
            return runtime.cpu_has_native_bf16()
        finally:
            monkeypatch.undo()
            runtime.cpu_has_native_bf16.cache_clear()

    mkldnn_bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert detect("fpu avx2 avx512f avx512bw") is False  # AVX-512 alone: emulated bf16
    assert detect("fpu avx512f avx512_bf16 avx512_vnni") is mkldnn_bf16
    assert detect("fpu amx_bf16 amx_tile") is mkldnn_bf16
