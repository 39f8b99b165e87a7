"""The training engine and `timecycle train`: config layering, a few-step run that learns,
exact resume, non-finite losses, warm-up, and the command line.

Runs use the `small` preset at a tiny resolution (64 crop, 56 patch: 8 x 8 search and 7 x 7
query features), batch 2, on generated translating-texture frame folders.
"""

from __future__ import annotations

import copy
import json
import shutil
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from timecycle.cli import build_parser, main
from timecycle.cli.train import config_from_args
from timecycle.data import ClipDataset, build_index
from timecycle.datasets.davis import DavisRoot
from timecycle.encoder.resnet import ResNetEncoder
from timecycle.encoder.weights import load_weights
from timecycle.engine import setup
from timecycle.engine import step as step_mod
from timecycle.engine import train as train_mod
from timecycle.engine.checkpoint import load_checkpoint, numbered_checkpoints
from timecycle.engine.config import (PRESETS, TrainConfig, check_resumable, make_config,
                                     resolve_compile)
from timecycle.engine.logging import read_metrics
from timecycle.engine.train import train
from timecycle.errors import UserError
from timecycle.tracker import cut_patch


pytestmark = pytest.mark.usefixtures("one_thread")




def tiny(data, out, **overrides):
    base = dict(data=[str(data)], out=str(out), short_side=64, crop=64, patch=56, batch_size=2,
                steps=4, workers=0, log_every=1, fps=None, progress=False, tensorboard=False,
                deterministic=True)
    return make_config("small", **{**base, **overrides})


def params(run_dir):
    return load_checkpoint(run_dir / "last.pt")["model"]


# Config --------------------------------------------------------------------------------------


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


@pytest.mark.parametrize("loss", ["paper", "code"])
def test_patch_is_cut_with_the_loss_presets_align_corners(data, tmp_path, loss):
    config = tiny(data, tmp_path, loss=loss)
    assert config.clip_config().align_corners == (loss == "code")
    videos = build_index(data).videos
    sample = ClipDataset(videos, config.clip_config(), seed=0)[0]
    expected = cut_patch(sample["frames"][-1:], sample["theta_gt"][None], config.patch,
                         align_corners=config.loss_config().align_corners)[0]
    torch.testing.assert_close(sample["patch"], expected)


# Training ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_short_run_lowers_the_loss(data, tmp_path):
    # The small preset's lr (2e-4), paper loss, no warm-up. Seen: -2.88 -> -3.28, mostly from
    # the similarity term (features growing alike); the theta terms move little this early.
    run = train(tiny(data, tmp_path / "run", steps=12))
    totals = [r["loss"] for r in read_metrics(run)]
    assert len(totals) == 12
    first, last = sum(totals[:5]) / 5, sum(totals[-5:]) / 5
    assert last < first - 0.2, (first, last)
    saved = json.loads((run / "config.json").read_text())
    assert saved["resolved"]["total_steps"] == 12 and saved["train"]["crop"] == 64
    assert (run / "video_index.json").is_file()
    assert sorted(p.name for p in run.glob("*.pt")) == ["last.pt", "step-000012.pt"]


@pytest.mark.slow
def test_resume_gives_the_same_parameters_as_one_run(data, tmp_path):
    whole = train(tiny(data, tmp_path / "whole", steps=6))
    part = train(tiny(data, tmp_path / "part", steps=3))
    assert load_checkpoint(part / "last.pt")["samples"] == 6
    # Resume with DataLoader workers: the clip stream depends on the sample index only.
    train(tiny(data, tmp_path / "part", steps=6, workers=2), resume=True)
    a, b = params(whole), params(part)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["step"] for r in read_metrics(part)] == list(range(1, 7))
    assert load_checkpoint(part / "last.pt")["samples"] == 12


def test_a_resume_with_more_clips_per_step_still_reads_its_epochs(data, tmp_path):
    # 3 epochs of the 4 videos (one clip each) = 12 clips. 2 steps of 2 clips, then --resume
    # with --accum 2 (as with twice the processes): the 8 clips left are 2 steps of 4, not the
    # 3 steps of 4 that 12 clips would be from the start (that run would stop after 8 clips).
    run = tmp_path / "run"
    train(tiny(data, run, steps=2))
    train(tiny(data, run, steps=None, epochs=3.0, accum=2), resume=True)
    assert load_checkpoint(run / "last.pt")["samples"] == 12
    assert [r["samples"] for r in read_metrics(run)] == [2, 4, 8, 12]
    assert json.loads((run / "config.json").read_text())["resolved"]["total_steps"] == 4


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


def cli_config(data, tmp_path, *flags, preset: str = "small") -> TrainConfig:
    """The config `timecycle train --preset PRESET FLAGS` resolves to."""
    args = build_parser().parse_args(["train", "--data", str(data), "--out",
                                      str(tmp_path / "run"), "--preset", preset, *flags])
    return config_from_args(args)


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


def test_keep_last_zero_keeps_every_numbered_checkpoint(data, tmp_path):
    assert cli_config(data, tmp_path).keep_last == 3
    assert cli_config(data, tmp_path, "--keep-last", "0").keep_last == 0
    with pytest.raises(UserError, match="keep_last must be >= 0"):
        cli_config(data, tmp_path, "--keep-last", "-1")
    run = train(tiny(data, tmp_path / "all", steps=4, save_every=1, keep_last=0))
    assert [p.name for p in numbered_checkpoints(run)] == [
        f"step-{s:06d}.pt" for s in (1, 2, 3, 4)]
    run = train(tiny(data, tmp_path / "two", steps=4, save_every=1, keep_last=2))
    assert [p.name for p in numbered_checkpoints(run)] == ["step-000003.pt", "step-000004.pt"]


def test_propagate_applies_a_runs_timecycle_head_under_the_timecycle_protocol_only(
        data, synthetic_davis, tmp_path):
    run = train(tiny(data, tmp_path / "run", steps=1))
    name = DavisRoot(synthetic_davis).sequence_names()[0]
    for protocol, head in (("crw", False), ("timecycle", True), ("dino", False)):
        out = tmp_path / protocol
        assert main(["propagate", "davis", "--root", str(synthetic_davis), "--sequences", name,
                     "--protocol", protocol, "--weights", str(run / "last.pt"), "--out",
                     str(out), "--device", "cpu", "--quiet"]) == 0
        assert json.loads((out / "propagation.json").read_text())["head"] is head


def test_fused_adam_resumes_the_state_of_a_plain_adam():
    # Checkpoints written before the fused optimiser hold a plain Adam's state: it loads, and
    # the next update is the plain Adam's (up to rounding).
    torch.manual_seed(0)
    config = make_config("small")
    model = torch.nn.Linear(4, 3)
    grads = [torch.randn_like(p) for p in model.parameters()]
    plain = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas)
    for p, g in zip(model.parameters(), grads):
        p.grad = g.clone()
    plain.step()
    fused = setup.make_optimizer(model, config)
    assert fused.defaults["fused"]
    fused.load_state_dict(copy.deepcopy(plain.state_dict()))  # as from a file: no sharing
    twin = torch.nn.Linear(4, 3)
    twin.load_state_dict(model.state_dict())
    plain_twin = torch.optim.Adam(twin.parameters(), lr=config.lr, betas=config.betas)
    plain_twin.load_state_dict(copy.deepcopy(plain.state_dict()))
    for opt, params in ((fused, model.parameters()), (plain_twin, twin.parameters())):
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert int(fused.state_dict()["state"][0]["step"]) == 2


def test_existing_run_needs_resume(data, tmp_path):
    train(tiny(data, tmp_path, steps=1))
    with pytest.raises(UserError, match="--resume"):
        train(tiny(data, tmp_path, steps=2))
    with pytest.raises(UserError, match="crop"):
        train(tiny(data, tmp_path, steps=2, crop=72), resume=True)


def test_nonfinite_losses_are_skipped_and_counted(data, tmp_path, monkeypatch):
    real, calls = step_mod.total_loss, []

    def nan_on_second(terms, config):
        if torch.is_grad_enabled():  # training steps only, not the logged probe's forwards
            calls.append(1)
        loss = real(terms, config)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(step_mod, "total_loss", nan_on_second)
    with pytest.warns(RuntimeWarning, match="step 2: non-finite loss"):
        run = train(tiny(data, tmp_path, steps=3))
    records = read_metrics(run)
    assert [r["nonfinite"] for r in records] == [0, 1, 0]
    assert records[1]["loss"] is None and records[2]["loss"] is not None
    assert load_checkpoint(run / "last.pt")["nonfinite"] == 1


def test_a_nonfinite_gradient_is_skipped_and_named(data, tmp_path, monkeypatch):
    # A finite loss whose gradient norm is not: skipped too, and the warning says which.
    real, calls = torch.nn.utils.clip_grad_norm_, []

    def inf_on_second(params, max_norm):
        calls.append(1)
        norm = real(params, max_norm)
        return norm * float("inf") if len(calls) == 2 else norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", inf_on_second)
    with pytest.warns(RuntimeWarning, match=r"step 2: non-finite gradient norm inf \(loss -?\d"):
        run = train(tiny(data, tmp_path, steps=3))
    assert [r["nonfinite"] for r in read_metrics(run)] == [0, 1, 0]


def test_repeated_nonfinite_losses_stop_the_run(data, tmp_path, monkeypatch):
    monkeypatch.setattr(step_mod, "total_loss", lambda terms, config: terms["long"].sum() * torch.nan)
    with pytest.warns(RuntimeWarning):
        with pytest.raises(UserError, match="3 non-finite steps.*no checkpoint was saved"):
            train(tiny(data, tmp_path, steps=10, max_nonfinite=3))


def poison_from_step(monkeypatch, step, accum=1):
    """NaN frames from training step `step` on (each micro-batch), and in the probes after it:
    the forward then fills BatchNorm's batch statistics with NaN, as a diverged run does."""
    real, calls = step_mod.objective_loss, []

    def poisoned(model, batch, *args, **kwargs):
        if torch.is_grad_enabled():
            calls.append(1)
        if len(calls) > (step - 1) * accum:
            batch = {**batch, "frames": torch.full_like(batch["frames"], float("nan"))}
        return real(model, batch, *args, **kwargs)

    monkeypatch.setattr(step_mod, "objective_loss", poisoned)


def assert_same_state(a, b):
    """Two checkpoints' model and Adam state, bit for bit."""
    for part in ("model", "optimizer"):
        flat_a, flat_b = _flatten(a[part]), _flatten(b[part])
        assert flat_a.keys() == flat_b.keys(), part
        differ = [k for k, a_k in flat_a.items()
                  if not (torch.equal(a_k, flat_b[k]) if isinstance(a_k, torch.Tensor)
                          else a_k == flat_b[k])]
        assert not differ, (part, differ)


def _flatten(tree, prefix=""):
    if isinstance(tree, (list, tuple)):
        tree = dict(enumerate(tree))
    if not isinstance(tree, dict):
        return {prefix: tree}
    return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()}


@pytest.mark.parametrize("poison", ["forward", "gradient"])
def test_skipped_steps_leave_the_model_and_its_statistics_as_they_were(poison, data, tmp_path,
                                                                      monkeypatch):
    # Steps 2 and 3 skipped (two micro-batches each): last.pt must be step 1's, BatchNorm's
    # running statistics and their count included, whether the forward went NaN (its batch
    # statistics with it) or only the gradient norm did.
    before = train(tiny(data, tmp_path / "one", steps=1, accum=2, probe_every=0))
    if poison == "forward":
        poison_from_step(monkeypatch, 2, accum=2)
    else:
        real, calls = torch.nn.utils.clip_grad_norm_, []

        def inf_from_second(params, max_norm):
            calls.append(1)
            return real(params, max_norm) * (float("inf") if len(calls) > 1 else 1.0)

        monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", inf_from_second)
    with pytest.warns(RuntimeWarning, match=r"step [23]: non-finite"):
        run = train(tiny(data, tmp_path / "three", steps=3, accum=2, probe_every=0))
    saved = load_checkpoint(run / "last.pt")
    assert saved["nonfinite"] == 2
    assert_same_state(load_checkpoint(before / "last.pt"), saved)
    load_weights(ResNetEncoder("resnet18", head=True), run / "last.pt")  # refuses NaN, inf


def test_a_probe_on_a_skipped_step_leaves_the_statistics_as_they_were(data, tmp_path,
                                                                      monkeypatch):
    # The probe of step 2 runs on its NaN batch: no running statistic may take it in.
    before = train(tiny(data, tmp_path / "one", steps=1, probe_every=1))
    poison_from_step(monkeypatch, 2)
    with pytest.warns(RuntimeWarning, match="step 2: non-finite loss"):
        run = train(tiny(data, tmp_path / "two", steps=2, probe_every=1))
    assert_same_state(load_checkpoint(before / "last.pt"), load_checkpoint(run / "last.pt"))
    assert "probe_real" in read_metrics(run)[-1]  # the probe ran


def test_cli_summary_names_the_skipped_steps(data, tmp_path, capsys, monkeypatch):
    # Steps 2-3 of 3 skipped, logged in one interval with step 1: the record's loss is step 1's
    # (the mean of its finite steps), but the summary must not quote it for step 3.
    poison_from_step(monkeypatch, 2)
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(out), "--preset", "small",
                 "--crop", "64", "--patch", "56", "--short-side", "64", "--steps", "3",
                 "--batch-size", "2", "--workers", "0", "--device", "cpu", "--fps", "native",
                 "--probe-every", "0", "--quiet"]) == 0
    said = capsys.readouterr().out
    [record] = read_metrics(out)
    assert record["nonfinite"] == 2 and record["loss"] is not None
    assert "trained to step 3" in said and f"-> {record['loss']:.4f}" not in said, said
    assert "-> non-finite" in said and "2 of 3 steps skipped" in said, said


def test_warmup_freezes_the_encoder_only(data, tmp_path):
    run = train(tiny(data, tmp_path, steps=2, warmup_steps=2))
    from timecycle.tracker import TimeCycle

    config = tiny(data, tmp_path)
    init = TimeCycle.build("resnet18", config.loss_config(), 64, 56, seed=0).state_dict()
    after = params(run)
    assert torch.equal(after["encoder.stem.0.weight"], init["encoder.stem.0.weight"])
    assert not torch.equal(after["localizer.fc.weight"], init["localizer.fc.weight"])
    # The encoder stays in train mode: BatchNorm keeps tracking the (frozen) features.
    assert not torch.equal(after["encoder.stem.1.running_mean"], init["encoder.stem.1.running_mean"])
    assert all(r["frozen"] for r in read_metrics(run))


def test_stop_request_saves_and_returns(data, synthetic_davis, tmp_path):
    stop = threading.Event()
    stop.set()  # as a SIGTERM handler would
    names = DavisRoot(synthetic_davis).sequence_names()
    run = train(tiny(data, tmp_path, steps=5, eval_davis=str(synthetic_davis), eval_every=1,
                     eval_sequences=names, eval_frames=3, eval_size=64, probe_every=1), stop=stop)
    assert load_checkpoint(run / "last.pt")["step"] == 1
    assert not list(run.glob("step-*.pt"))  # an off-schedule save updates last.pt only
    # The save comes first: the evaluation and the probe due at step 1 are skipped.
    [record] = read_metrics(run)
    assert record["step"] == 1 and "eval_jf" not in record and "probe_real" not in record


def test_an_evaluation_gives_up_when_asked_between_sequences(synthetic_davis):
    from timecycle.encoder import build_encoder
    from timecycle.engine.evaluation import DavisProxy

    names = DavisRoot(synthetic_davis).sequence_names()
    proxy = DavisProxy(synthetic_davis, names, frames=3, size=64)
    encoder, asked = build_encoder("resnet18"), []
    try:
        assert proxy.score(encoder, torch.device("cpu"), abort=lambda: asked.append(1) or
                           len(asked) == 2) is None
        assert len(asked) == 2  # the first sequence ran, the second was not started
        scores = proxy.score(encoder, torch.device("cpu"), abort=lambda: False)
        assert 0 <= scores["J&F"] <= 1
    finally:
        proxy.close()


def test_the_proxy_defaults_to_every_val_sequence(tmp_path):
    """Without --eval-sequences the proxy scores every sequence of ImageSets/2016/val.txt (the
    DAVIS-2016 val list), else of 2017/val.txt; a root with neither list asks for the flag."""
    from timecycle.datasets.synthetic import write_davis_root
    from timecycle.engine.evaluation import DavisProxy

    names = write_davis_root(tmp_path / "davis", 3, seed=0, n_frames=4, height=64, width=64)
    proxy = DavisProxy(tmp_path / "davis", frames=3, size=64)  # 2017/val.txt only
    proxy.close()
    assert proxy.names == names and proxy.label.sequences == tuple(names)
    (tmp_path / "davis" / "ImageSets" / "2016").mkdir()
    (tmp_path / "davis" / "ImageSets" / "2016" / "val.txt").write_text(f"{names[2]}\n{names[0]}\n")
    proxy = DavisProxy(tmp_path / "davis", frames=3, size=64)
    proxy.close()
    assert proxy.names == [names[2], names[0]]
    shutil.rmtree(tmp_path / "davis" / "ImageSets")
    with pytest.raises(UserError, match="no default sequence list; pass --eval-sequences"):
        DavisProxy(tmp_path / "davis", frames=3, size=64)


def test_the_proxy_scores_layer3_of_an_encoder_with_the_timecycle_head(synthetic_davis):
    """The proxy runs the crw protocol, which propagates layer3 (`--head auto`): a TimeCycle
    model scores as its encoder without the head, and the model keeps its head."""
    from timecycle.encoder import build_encoder
    from timecycle.engine.evaluation import DavisProxy

    names = DavisRoot(synthetic_davis).sequence_names()
    # All 10 frames: with the head kept, every sequence's J&F differs (by 0.001-0.006 here).
    proxy = DavisProxy(synthetic_davis, names, frames=10, size=64)
    with_head = build_encoder("resnet18", head=True, seed=3)
    layer3 = build_encoder("resnet18", seed=3)
    layer3.load_state_dict({k: v for k, v in with_head.state_dict().items()
                            if not k.startswith("head.")})
    try:
        cpu = torch.device("cpu")
        scores = proxy.score(with_head, cpu, per_sequence=True)
        assert scores == proxy.score(layer3, cpu, per_sequence=True)
        assert with_head.head is not None
    finally:
        proxy.close()


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


# Command line --------------------------------------------------------------------------------


def test_cli_trains_and_resumes(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    argv = ["train", "--data", str(data), "--out", str(out), "--preset", "small",
            "--batch-size", "2", "--workers", "0", "--device", "cpu", "--fps", "native",
            "--query", "crop", "--quiet"]
    assert main([*argv, "--steps", "2"]) == 0
    for name in ("config.json", "metrics.jsonl", "last.pt", "video_index.json"):
        assert (out / name).is_file(), name
    assert any((out / "tb").iterdir())
    config = json.loads((out / "config.json").read_text())["train"]
    assert (config["preset"], config["arch"], config["fps"], config["steps"], config["query"]) == (
        "small", "resnet18", None, 2, "crop")
    said = capsys.readouterr().out
    assert "trained to step 2" in said and "(4 clips in " in said  # 2 steps of 2 clips
    reads, torch_load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **k: reads.append(Path(f).name) or torch_load(f, *a, **k))
    assert main(["train", "--out", str(out), "--resume", "--steps", "3", "--quiet"]) == 0
    assert reads == ["last.pt"]  # read once: the command's config and the engine's state
    monkeypatch.undo()
    assert load_checkpoint(out / "last.pt")["step"] == 3
    assert [r["step"] for r in read_metrics(out)] == [2, 3]  # small logs every 5, and at the end
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--steps", "2", "--quiet"]) == 0
    said = capsys.readouterr().out  # before: "trained to step 3 ... (0 clips ...)"
    assert said.startswith("nothing to train:") and "at step 3" in said and "ends at step 2" in said
    assert load_checkpoint(out / "last.pt")["step"] == 3


def test_meter_leaves_excluded_time_out_of_the_rate(monkeypatch):
    from timecycle.engine import logging as metrics_log

    clock = iter([100.0, 110.0])  # reset() at 100 s, summary() at 110 s
    monkeypatch.setattr(metrics_log.time, "perf_counter", lambda: next(clock))
    meter = metrics_log.Meter()
    meter.add({"loss": torch.tensor(1.0)}, clips=8, data_wait=0.0)
    meter.add({"loss": torch.tensor(3.0)}, clips=8, data_wait=0.0)
    meter.exclude(6.0)  # an evaluation: 4 of the 10 s were training
    summary = meter.summary()
    assert summary["clips_per_s"] == pytest.approx(16 / 4) and summary["step_s"] == 2.0
    assert summary["loss"] == 2.0


def test_metrics_log_writes_strict_json(tmp_path):
    # A probe on the batch that diverged logged "probe_real": NaN, which JSON has not.
    from timecycle.engine.logging import MetricsLog, read_metrics

    log = MetricsLog(tmp_path, 0, tensorboard=False)
    log.write({"step": 1, "loss": 1.5, "probe_real": float("nan"), "grad_norm": float("inf")})
    log.close()
    line = (tmp_path / "metrics.jsonl").read_text()
    json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in {line}"))
    assert read_metrics(tmp_path)[0] | {"time": 0} == {"step": 1, "loss": 1.5, "probe_real": None,
                                                        "grad_norm": None, "time": 0}


def test_metrics_log_without_tensorboard_notes_it_and_logs_on(tmp_path, monkeypatch, capsys):
    import sys

    from timecycle.engine.logging import MetricsLog

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import -> ImportError
    log = MetricsLog(tmp_path, tensorboard=True)
    log.write({"step": 1, "loss": 0.5})
    log.close()
    assert "TensorBoard is not installed" in capsys.readouterr().err
    assert read_metrics(tmp_path)[0]["loss"] == 0.5 and not (tmp_path / "tb").exists()


def test_cli_missing_data_is_one_line_exit_2(tmp_path, capsys):
    code = main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run"),
                 "--preset", "small", "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "no such data folder" in err and "nope" in err
