"""Non-finite training steps: skipped, counted and named; the model, Adam's state and BatchNorm's
running statistics stay as they were; 20 in a row stop the run."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny

from timecycle.cli import main
from timecycle.encoder.resnet import ResNetEncoder
from timecycle.encoder.weights import load_weights
from timecycle.engine import step as step_mod
from timecycle.engine.checkpoint import load_checkpoint
from timecycle.engine.logging import read_metrics
from timecycle.engine.train import train
from timecycle.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")


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
