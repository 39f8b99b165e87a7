"""Training checkpoints: atomic writes, rotation, weights-only loading, RNG state, reuse as
encoder weights (`timecycle propagate --weights RUN/last.pt`)."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from timecycle.encoder import ResNetEncoder
from timecycle.encoder.weights import checkpoint_has_head, load_weights
from timecycle.engine import checkpoint as ckpt
from timecycle.engine.config import make_config
from timecycle.errors import UserError, first_sentence
from timecycle.losses import preset
from timecycle.tracker import TimeCycle


def draws():
    return torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)]


def test_rng_state_round_trip_restores_every_generator():
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.randn()  # leaves a cached Gaussian in NumPy's state
    state = ckpt.rng_state()
    first = draws()
    draws()
    ckpt.set_rng_state(state)
    second = draws()
    assert torch.equal(first[0], second[0])
    assert np.array_equal(first[1], second[1])
    assert first[2] == second[2]


@pytest.fixture(scope="module")
def trained_state():
    """A real checkpoint state: a small TimeCycle after one Adam step (optimiser state filled)."""
    model = TimeCycle.build("resnet18", preset("paper"), frame_size=64, patch_size=56, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.999))
    out = model(torch.randn(1, 3, 3, 64, 64), torch.randn(1, 3, 56, 56),
                torch.tensor([[[0.8, 0.0, 0.0], [0.0, 0.8, 0.0]]]))
    (out["long"].sum() + out["sim_feature"].sum()).backward()
    opt.step()
    return model, {
        "model": model.state_dict(), "optimizer": opt.state_dict(), "step": 7, "samples": 14,
        "nonfinite": 0, "rng": ckpt.rng_state(), "config": make_config("small").to_dict(),
        "environment": {"torch": torch.__version__},
    }


def leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


def test_save_load_round_trip_weights_only(tmp_path, trained_state):
    model, state = trained_state
    path = ckpt.save_checkpoint(tmp_path, state, step=7)
    assert path == tmp_path / "last.pt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "step-000007.pt"]
    assert leftovers(tmp_path) == []
    # What load_checkpoint does, spelled out: nothing beyond tensors and plain containers.
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == ckpt.FORMAT
    loaded = ckpt.load_checkpoint(path)
    assert loaded["step"] == 7 and loaded["samples"] == 14
    for k, v in model.state_dict().items():
        assert torch.equal(loaded["model"][k], v), k
    opt = torch.optim.Adam(model.parameters())
    opt.load_state_dict(loaded["optimizer"])
    assert opt.param_groups[0]["betas"] == (0.5, 0.999)


@pytest.mark.parametrize("keep_last, kept", [(2, (300, 400)), (0, (100, 200, 300, 400))])
def test_numbered_checkpoints_keep_the_newest(tmp_path, trained_state, keep_last, kept):
    _, state = trained_state
    for step in (100, 200, 300, 400):
        ckpt.save_checkpoint(tmp_path, {**state, "step": step}, step=step, keep_last=keep_last)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["last.pt"] + [f"step-{s:06d}.pt" for s in kept]
    assert ckpt.load_checkpoint(tmp_path / "last.pt")["step"] == 400


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path, trained_state, monkeypatch):
    _, state = trained_state
    ckpt.save_checkpoint(tmp_path, state, step=1, numbered=False)
    before = (tmp_path / "last.pt").read_bytes()

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(tmp_path, {**state, "step": 2}, step=2, numbered=False)
    assert (tmp_path / "last.pt").read_bytes() == before
    assert leftovers(tmp_path) == []


def test_truncated_checkpoint_is_a_user_error_naming_it(tmp_path, trained_state):
    _, state = trained_state
    path = ckpt.save_checkpoint(tmp_path, state, step=1, numbered=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="last.pt.*truncated or corrupt"):
        ckpt.load_checkpoint(path)
    with pytest.raises(UserError, match="no such checkpoint"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")


def test_passed_over_checkpoint_warning_is_one_whole_line(tmp_path, trained_state):
    """torch's reason is kept to its first sentence, whole: the warning used to cut it at 200
    characters, mid-word ("...your checkpoint file is; passed over")."""
    _, state = trained_state
    ckpt.save_checkpoint(tmp_path, {**state, "step": 1}, step=1)
    data = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "last.pt").write_bytes(data[: len(data) // 2])
    with pytest.warns(ckpt.CheckpointWarning) as caught:
        ckpt.latest_checkpoint(tmp_path)
    message = str(caught[0].message)
    assert "\n" not in message and "likelihood" not in message, message
    reason, passed = message.split("; passed over, ")
    assert reason.startswith(f"{tmp_path / 'last.pt'}: cannot read checkpoint (truncated or "
                             "corrupt?): ") and reason.endswith("."), reason
    assert passed == f"resuming from {tmp_path / 'step-000001.pt'} (step 1)"


@pytest.mark.parametrize("text, reason", [
    ("First part: the cause. Advice that goes on. And on.\nMore lines", "First part: the cause."),
    ("no full stop at all\nsecond line", "no full stop at all"),
    ("In torch 2.6 we changed it! Re-run it", "In torch 2.6 we changed it!"),
    ("", "RuntimeError")])
def test_unreadable_checkpoint_reason_is_the_first_sentence(text, reason):
    assert first_sentence(RuntimeError(text)) == reason


def test_foreign_file_is_not_a_training_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(ResNetEncoder("resnet18").state_dict(), path)
    with pytest.raises(UserError, match="not a timecycle training checkpoint"):
        ckpt.load_checkpoint(path)


def test_run_checkpoint_loads_as_encoder_weights(tmp_path, trained_state):
    """So that `timecycle propagate davis --weights RUN/last.pt` works."""
    model, state = trained_state
    path = ckpt.save_checkpoint(tmp_path, state, step=7)
    assert checkpoint_has_head(path)
    encoder = ResNetEncoder("resnet18", head=True)
    info = load_weights(encoder, path)
    assert info.format == "native"
    assert any(k.startswith("localizer.") for k in info.ignored)
    for k, v in encoder.state_dict().items():
        assert torch.equal(v, model.encoder.state_dict()[k]), k
