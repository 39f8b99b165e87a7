"""The training engine and `timecycle train`: a few-step run that learns, exact resume,
checkpoints kept, warm-up, stop requests, evaluation during training, and the command line.
Configs, non-finite steps and precision have their own files (test_engine_config.py, ...).

Runs use the `small` preset at a tiny resolution (64 crop, 56 patch: 8 x 8 search and 7 x 7
query features), batch 2, on generated translating-texture frame folders.
"""

from __future__ import annotations

import copy
import json
import shutil
import threading
from pathlib import Path

import pytest
import torch
from helpers import cli_config, params, tiny

from timecycle.cli import main
from timecycle.data import ClipDataset, build_index
from timecycle.datasets.davis import DavisRoot
from timecycle.engine import setup
from timecycle.engine.checkpoint import load_checkpoint, numbered_checkpoints
from timecycle.engine.config import make_config
from timecycle.engine.logging import read_metrics
from timecycle.engine.train import train
from timecycle.errors import UserError
from timecycle.tracker import cut_patch

pytestmark = pytest.mark.usefixtures("one_thread")


# Training ------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["paper", "code"])
def test_patch_is_cut_with_the_loss_presets_align_corners(data, tmp_path, loss):
    config = tiny(data, tmp_path, loss=loss)
    assert config.clip_config().align_corners == (loss == "code")
    videos = build_index(data).videos
    sample = ClipDataset(videos, config.clip_config(), seed=0)[0]
    expected = cut_patch(sample["frames"][-1:], sample["theta_gt"][None], config.patch,
                         align_corners=config.loss_config().align_corners)[0]
    torch.testing.assert_close(sample["patch"], expected)


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
    for opt, weights in ((fused, model.parameters()), (plain_twin, twin.parameters())):
        for p, g in zip(weights, grads):
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
