"""`--weights builtin`: the package's own weights, exported fp16 with a sidecar, loaded offline,
refused when their sha256 does not match."""

from __future__ import annotations

import json

import pytest
import torch

from timecycle.encoder import builtin
from timecycle.encoder.resnet import ResNetEncoder
from timecycle.encoder.weights import checkpoint_has_head, load_weights
from timecycle.errors import UserError


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """Built-in weights exported from a random checkpoint into a temporary package folder."""
    torch.manual_seed(1)
    source = ResNetEncoder("resnet18", head=True)
    ckpt = tmp_path / "last.pt"
    torch.save({"model": {f"encoder.{k}": v for k, v in source.state_dict().items()},
                "config": {"padding": "reflect"}}, ckpt)
    folder = tmp_path / "builtin"
    monkeypatch.setattr(builtin, "FOLDER", folder)
    builtin.export_builtin(ckpt, {"command": "timecycle train ...", "steps": 3}, folder)
    return source, folder


def test_builtin_loads_offline_with_its_provenance(shipped):
    source, folder = shipped
    info = json.loads((folder / "resnet18.json").read_text())
    assert info["dtype"] == "float16" and info["head"] and info["padding_mode"] == "reflect"
    assert info["command"] == "timecycle train ..." and len(info["sha256"]) == 64
    assert checkpoint_has_head("builtin")
    encoder = ResNetEncoder("resnet18", head=True)
    loaded = load_weights(encoder, "builtin")
    assert loaded.path == folder / "resnet18.safetensors" and loaded.sha256 == info["sha256"]
    assert encoder.padding_mode == "reflect"
    w = encoder.state_dict()["layer3.0.conv1.weight"]
    assert torch.equal(w, source.state_dict()["layer3.0.conv1.weight"].half().float())


def test_builtin_with_a_wrong_sha256_is_refused(shipped):
    _, folder = shipped
    data = bytearray((folder / "resnet18.safetensors").read_bytes())
    data[-1] ^= 1
    (folder / "resnet18.safetensors").write_bytes(bytes(data))
    with pytest.raises(UserError, match="sha256"):
        load_weights(ResNetEncoder("resnet18", head=True), "builtin")


def test_no_builtin_weights_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setattr(builtin, "FOLDER", tmp_path / "none")
    with pytest.raises(UserError, match="no built-in weights"):
        load_weights(ResNetEncoder("resnet18"), "builtin")
    with pytest.raises(UserError, match="no built-in weights"):
        load_weights(ResNetEncoder("resnet50"), "builtin")
