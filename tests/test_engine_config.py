"""Training configs: presets, layering and checks, `timecycle train`'s options reaching the
model, and the choice of compiling the tracker's cycles."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from helpers import cli_config, params, tiny

from timecycle.encoder.resnet import ResNetEncoder
from timecycle.encoder.weights import load_weights
from timecycle.engine import setup
from timecycle.engine import train as train_mod
from timecycle.engine.config import (PRESETS, TrainConfig, check_resumable, make_config,
                                     resolve_compile)
from timecycle.engine.train import train
from timecycle.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_full_preset_is_the_paper():
    c = PRESETS["full"]
    assert (c.arch, c.crop, c.patch, c.short_side, c.batch_size) == ("resnet50", 240, 80, 256, 32)
    assert (c.lr, c.betas, c.weight_decay, c.grad_clip) == (2e-4, (0.5, 0.999), 0.0, 10.0)
    assert (c.epochs, c.steps, c.fps, c.loss) == (30.0, None, 12.0, "paper")


def test_small_preset_geometry_fits_the_localizer():
    c = PRESETS["small"]
    assert c.arch == "resnet18" and (c.crop // 8, c.patch // 8) == (14, 7)


def test_small_reflect_preset_is_the_command_that_learned(data, tmp_path):
    # The README's measured command (three seeds at full size), as flags on `small`.
    measured = cli_config(data, tmp_path, "--loss", "code", "--query", "patch", "--batchnorm",
                          "batch", "--padding", "reflect", "--warmup-steps", "0", "--steps", "250")
    preset = cli_config(data, tmp_path, preset="small-reflect")
    assert preset.preset == "small-reflect"
    assert replace(preset, preset="small") == measured
    # Flags still layer on it, and a resume keeps its preset name.
    zeros = cli_config(data, tmp_path, "--padding", "zeros", preset="small-reflect")
    assert (zeros.padding, zeros.loss) == ("zeros", "code")
    assert check_resumable(preset, replace(preset, steps=500)) == ["steps"]


def test_small_reflect_long_is_the_quarter_rate_command_of_the_seeds(data, tmp_path):
    # The README's 1000-step runs at --lr 5e-5 (three seeds), as a name.
    measured = cli_config(data, tmp_path, "--lr", "5e-5", "--steps", "1000", "--save-every", "250",
                          preset="small-reflect")
    preset = cli_config(data, tmp_path, preset="small-reflect-long")
    assert replace(preset, preset="small-reflect") == measured
    assert (preset.lr, preset.steps, preset.padding, preset.loss) == (5e-5, 1000, "reflect", "code")


def test_overrides_layer_on_the_preset_and_round_trip():
    c = make_config("small", lr=1e-3, epochs=2.0, fps=None)
    assert (c.lr, c.steps, c.epochs, c.fps, c.arch) == (1e-3, None, 2.0, None, "resnet18")
    assert c.total_steps(n_videos=10) == 3  # ceil(2 epochs x 10 videos / batch 8)
    # Resumed after 1 step of 8 clips by 2 processes (16 a step): ceil(12 clips left / 16).
    assert c.total_steps(n_videos=10, world_size=2, done_steps=1, done_clips=8) == 2
    assert TrainConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(UserError, match="multiple of 8"):
        make_config("small", crop=100)
    with pytest.raises(UserError, match="preset"):
        make_config("huge")


@pytest.mark.parametrize("field, value", [("lr", float("nan")), ("lr", float("inf")),
                                          ("lr", 0.0), ("fps", float("nan")),
                                          ("save_minutes", float("nan")), ("workers", -1),
                                          ("epochs", float("inf"))])
def test_numbers_that_cannot_train_are_refused_by_name(field, value):
    # NaN passes comparisons (lr <= 0 is False); an infinite lr trains on NaN losses.
    overrides = {field: value, **({"steps": None} if field == "epochs" else {})}
    with pytest.raises(UserError, match=f"^{field} must be"):
        make_config("small", **overrides)


def test_cli_fps_must_be_a_finite_rate(data, tmp_path, capsys):
    for bad in ("nan", "inf", "-2"):
        with pytest.raises(SystemExit):
            cli_config(data, tmp_path, "--fps", bad)
        assert "must be a finite number > 0 (or 'native')" in capsys.readouterr().err


def test_resume_refuses_a_different_model():
    saved = make_config("small")
    assert check_resumable(saved, make_config("small", steps=900, workers=0)) == ["steps", "workers"]
    with pytest.raises(UserError, match="arch"):
        check_resumable(saved, make_config("small", arch="resnet50"))
    with pytest.raises(UserError, match="query"):
        check_resumable(saved, make_config("small", query="crop"))


def test_query_option_reaches_the_model_and_is_checked():
    assert PRESETS["full"].loss_config().query == "patch"  # SPEC 4: the patch, encoded alone
    config = make_config("small", query="crop", loss="code")
    loss = config.loss_config()
    assert (loss.query, loss.similarity, loss.align_corners) == ("crop", "inlier", True)
    with pytest.raises(UserError, match="--query"):
        make_config("small", query="frame")


@pytest.fixture
def fake_compile(monkeypatch):
    """torch.compile replaced by a recorder that returns the function unchanged, and CUDA-graph
    step marks counted: the wiring, without paying for a compile (tests/test_cycle.py compiles
    for real). Returns (compiled [(function name, kwargs)], marks [one per mark])."""
    compiled, marks = [], []

    def compile_(fn, **kwargs):
        compiled.append((fn.__name__, kwargs))
        return fn

    monkeypatch.setattr(torch, "compile", compile_)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    return compiled, marks


def test_compile_cycles_compiles_the_cycles_alone(data, tmp_path, fake_compile, capsys):
    # The engine hands torch.compile the model's cycles, and the checkpoint keeps eager keys.
    compiled, marks = fake_compile
    run = train(tiny(data, tmp_path / "run", steps=2, compile_cycles="on"))
    assert compiled == [("cycles", {"dynamic": False})]
    assert marks == []  # step marks are for CUDA graphs only
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["compile_cycles"] == "on" and saved["resolved"]["compile_cycles"] == "on"
    assert all(not k.startswith("_orig_mod") for k in params(run))
    assert "compiling the tracker's cycles (mode on)" in capsys.readouterr().err


def test_auto_compile_on_the_cpu_stays_eager(data, tmp_path, fake_compile, capsys):
    compiled, _ = fake_compile
    run = train(tiny(data, tmp_path / "run", steps=1))
    assert compiled == []
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["compile_cycles"] == "auto" and saved["resolved"]["compile_cycles"] == "off"
    assert "compiling" not in capsys.readouterr().err


def test_cuda_graphs_compile_reduce_overhead_and_mark_each_step(data, tmp_path, fake_compile,
                                                               monkeypatch):
    # "graphs" resolved as on a GPU, run on the CPU: torch.compile gets CUDA graphs' mode, and
    # each training step (not the probe's forwards) begins a new CUDA-graph iteration.
    compiled, marks = fake_compile
    monkeypatch.setattr(train_mod, "resolve_compile", lambda config, device: "graphs")
    run = train(tiny(data, tmp_path / "run", steps=3))
    assert compiled == [("cycles", {"dynamic": False, "mode": "reduce-overhead"})]
    assert marks == [1, 1, 1]
    assert json.loads((run / "config.json").read_text())["resolved"]["compile_cycles"] == "graphs"


def test_cuda_graphs_are_refused_on_the_cpu(data, tmp_path, fake_compile):
    compiled, _ = fake_compile
    with pytest.raises(UserError, match="CUDA"):
        train(tiny(data, tmp_path / "run", compile_cycles="graphs", device="cpu"))
    assert compiled == [] and not (tmp_path / "run").exists()  # refused before any work


def test_compile_resolves_by_device_and_objective():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    timecycle, walk = make_config("small"), make_config("crw-small")
    assert timecycle.compile_cycles == walk.compile_cycles == "auto"
    assert resolve_compile(timecycle, cuda) == "on"
    assert resolve_compile(timecycle, torch.device("cuda", 1)) == "on"
    assert resolve_compile(timecycle, cpu) == "off"
    assert resolve_compile(walk, cuda) == "off"  # the walk has no cycles: auto is off, silently
    for mode in ("off", "on", "graphs"):
        assert resolve_compile(make_config("small", compile_cycles=mode), cuda) == mode
    assert resolve_compile(make_config("small", compile_cycles="on"), cpu) == "on"
    with pytest.raises(UserError, match="CUDA"):
        resolve_compile(make_config("small", compile_cycles="graphs"), cpu)
    # CUDA-graph trees overwrite one micro-batch's gradients with the next one's
    # (pytorch/pytorch#169545): graphs take one micro-batch a step; compiled cycles take more.
    with pytest.raises(UserError, match=r"graphs cannot accumulate micro-batches \(--accum 4\)"):
        make_config("full", compile_cycles="graphs", accum=4)
    assert make_config("full", compile_cycles="on", accum=4).accum == 4


def test_compile_cycles_of_an_older_config_was_a_flag():
    old = make_config("small").to_dict()
    for flag, mode in ((True, "on"), (False, "off")):
        config = TrainConfig.from_dict({**old, "compile_cycles": flag})
        assert config.compile_cycles == mode
        assert resolve_compile(config, torch.device("cuda")) == mode
    with pytest.raises(UserError, match="auto, off, on, graphs"):
        make_config("small", compile_cycles="fast")


def test_compile_cycles_is_refused_for_the_walk():
    for mode in ("on", "graphs", True):
        with pytest.raises(UserError, match="no cycles"):
            make_config("crw-small", compile_cycles=mode)


def test_cli_compile_cycles_choices(data, tmp_path):
    def parsed(*flags):
        return cli_config(data, tmp_path, *flags).compile_cycles

    assert parsed() == "auto"
    assert parsed("--compile-cycles") == "on"  # the bare flag of earlier command lines
    assert parsed("--compile-cycles", "--steps", "3") == "on"
    assert parsed("--compile-cycles", "graphs") == "graphs"
    assert parsed("--compile-cycles", "off") == "off"
    with pytest.raises(SystemExit):
        parsed("--compile-cycles", "fast")


def test_cli_padding_reaches_the_timecycle_encoder(data, tmp_path):
    def parsed(*flags):
        return cli_config(data, tmp_path, *flags)

    assert parsed().padding == "zeros"  # the paper's (torchvision's) padding stays the default
    config = parsed("--padding", "reflect")
    assert config.padding == "reflect"
    convs = [m for m in setup.build_model(config).encoder.modules()
             if isinstance(m, torch.nn.Conv2d) and sum(m.padding) > 0]
    assert convs and {m.padding_mode for m in convs} == {"reflect"}
    with pytest.raises(UserError, match="padding 'zeros' -> 'reflect'"):
        check_resumable(parsed(), config)
    with pytest.raises(SystemExit):
        parsed("--padding", "circular")
    # The run's checkpoint records it, and propagation restores it with the TimeCycle head.
    run = train(tiny(data, tmp_path / "reflect", padding="reflect", steps=1))
    encoder = ResNetEncoder("resnet18", head=True)
    info = load_weights(encoder, run / "last.pt")
    assert info.format == "native" and info.padding_mode == "reflect"
    assert encoder.padding_mode == "reflect" and encoder.stem[0].padding_mode == "reflect"
