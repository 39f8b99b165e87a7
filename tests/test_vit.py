"""DINO's ViT encoders: patch-token maps, DINO's checkpoints, and propagation with them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_one_line_error, run_cli
from PIL import Image

from timecycle.encoder import build_encoder
from timecycle.encoder.vit import VIT_ARCHS, ViTEncoder
from timecycle.encoder.weights import load_encoder, load_weights
from timecycle.errors import UserError
from timecycle.propagation.protocols import DINO
from timecycle.propagation.resize import label_to_ids

pytestmark = pytest.mark.usefixtures("one_thread")


def _explicit_forward(enc: ViTEncoder, x: torch.Tensor) -> torch.Tensor:
    """The encoder's forward with attention written out as DINO writes it: softmax(q k^T *
    scale) v per head, the (N x N) map materialised."""
    b, _, height, width = x.shape
    grid = enc.patch_embed(x)
    h, w = grid.shape[-2:]
    t = torch.cat((enc.cls_token.expand(b, -1, -1), grid.flatten(2).transpose(1, 2)), 1)
    t = t + enc.positions(height, width)
    for blk in enc.blocks:
        y = blk.norm1(t)
        n, c = y.shape[1:]
        heads = blk.attn.heads
        q, k, v = blk.attn.qkv(y).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (c // heads) ** -0.5).softmax(dim=-1)
        t = t + blk.attn.proj((attn @ v).transpose(1, 2).reshape(b, n, c))
        t = t + blk.mlp(blk.norm2(t))
    return enc.norm(t)[:, 1:].transpose(1, 2).reshape(b, -1, h, w)


@pytest.mark.parametrize("arch", ["vit-s16", "vit-s8"])
def test_patch_tokens_on_the_patch_grid_equal_the_explicit_attention(arch):
    enc = build_encoder(arch, seed=0).eval()
    dim, _, patch = VIT_ARCHS[arch]
    x = torch.randn(2, 3, 3 * patch + 5, 5 * patch + patch - 1)  # partial patches are not seen
    with torch.no_grad():
        out, ref = enc(x), _explicit_forward(enc, x)
    assert out.shape == (2, dim, 3, 5) and enc.stride == patch and enc.out_channels == dim
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_positions_resize_only_off_the_pretraining_grid():
    enc = ViTEncoder("vit-s16")
    assert enc.positions(224, 224) is enc.pos_embed  # DINO: npatch == N and w == h
    # A non-square input of the same 14 x 14 cells is still resized (by (14 + 0.1) / 14).
    same_cells = enc.positions(224, 239)
    assert same_cells.shape == enc.pos_embed.shape
    assert not torch.equal(same_cells, enc.pos_embed)
    assert torch.equal(same_cells[:, 0], enc.pos_embed[:, 0])  # [CLS] keeps its own
    assert enc.positions(160, 400).shape == (1, 1 + 10 * 25, 384)
    # The resize is spatial only: a grid constant over space stays that constant.
    with torch.no_grad():
        enc.pos_embed[:, 1:] = torch.randn(1, 1, 384)
    torch.testing.assert_close(enc.positions(160, 400)[:, 1:],
                               enc.pos_embed[:, 1:2].expand(1, 250, -1))


def test_random_vits_are_seeded():
    a, b, c = (build_encoder("vit-s16", seed=s) for s in (0, 0, 1))
    assert torch.equal(a.pos_embed, b.pos_embed) and not torch.equal(a.pos_embed, c.pos_embed)
    assert float(a.blocks[0].attn.qkv.weight.detach().abs().max()) <= 2.0  # truncated at +-2


def _dino_full_checkpoint(enc: ViTEncoder) -> dict:
    """DINO's checkpoint.pth: teacher (MultiCropWrapper: backbone. and head.), student under DDP."""
    backbone = {f"backbone.{k}": v.clone() for k, v in enc.state_dict().items()}
    head = {"head.mlp.0.weight": torch.zeros(8, 384), "head.last_layer.weight_g": torch.ones(8, 1)}
    return {"teacher": {**backbone, **head},
            "student": {f"module.{k}": torch.zeros_like(v) for k, v in backbone.items()},
            "epoch": 100, "optimizer": {}}


@pytest.mark.parametrize("layout", ["bare", "full"])
def test_dino_checkpoints_load_key_for_key(layout, tmp_path):
    src = build_encoder("vit-s16", seed=5).eval()
    path = tmp_path / "dino.pth"
    torch.save(src.state_dict() if layout == "bare" else _dino_full_checkpoint(src), path)
    enc, info = load_encoder("vit-s16", path, protocol="dino")
    assert info["weights"]["format"] == "dino" and info["head"] is False
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(enc.eval()(x), src(x), rtol=0, atol=0)
    loaded = load_weights(build_encoder("vit-s16"), path)
    assert set(loaded.ignored) == ({"head.mlp.0.weight", "head.last_layer.weight_g"}
                                   if layout == "full" else set())


def test_wrong_vit_and_wrong_family_are_named(tmp_path):
    path = tmp_path / "dino_s8.pth"
    torch.save(build_encoder("vit-s8").state_dict(), path)
    with pytest.raises(UserError, match="holds a vit-s8 backbone, not vit-s16: use --encoder vit-s8"):
        load_encoder("vit-s16", path)
    with pytest.raises(UserError, match="DINO ViT backbone .vit-s8., not a ResNet: use --encoder vit-s8"):
        load_encoder("resnet18", path)
    resnet = tmp_path / "r18.pth"
    torch.save(build_encoder("resnet18").state_dict(), resnet)
    with pytest.raises(UserError, match=r"holds a ResNet \(resnet18, native layout\), not "
                                        r"vit-s16's ViT: use --encoder resnet18"):
        load_encoder("vit-s16", resnet)
    other = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(UserError, match="not a DINO ViT checkpoint"):
        load_encoder("vit-s16", other)


def test_a_backbone_with_missing_blocks_or_nan_is_refused_not_half_loaded(tmp_path):
    state = build_encoder("vit-s16").state_dict()
    path = tmp_path / "cut.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("blocks.11.")}, path)
    with pytest.raises(UserError, match=r"12 missing keys: blocks\.11\."):
        load_encoder("vit-s16", path)
    torch.save({**state, "pos_embed": torch.full((1, 197, 384), float("nan"))}, path)
    with pytest.raises(UserError, match="'pos_embed' holds NaN"):
        load_encoder("vit-s16", path)


def test_the_head_and_builtin_weights_are_resnet_only():
    with pytest.raises(UserError, match="--head yes does not apply to vit-b8"):
        load_encoder("vit-b8", None, head="yes")
    with pytest.raises(UserError, match="--weights builtin is a resnet18"):
        load_encoder("vit-s16", "builtin")


@pytest.mark.parametrize("stride", [8, 16])
def test_dino_output_upsamples_by_the_patch_size(stride, monkeypatch):
    # DINO: x patch_size, on a frame of whole cells; here the frame's side over the features'.
    from timecycle.propagation import resize

    sizes = []

    def spy(x, size=None, **kw):
        sizes.append(size)
        return F.interpolate(x, size=size, **kw)

    monkeypatch.setattr(resize, "F", type("F", (), {"interpolate": staticmethod(spy)}))
    soft = torch.zeros(2, 480 // stride, 832 // stride)
    soft[1, :, soft.shape[-1] // 2:] = 1  # the right half is object 1
    ids = label_to_ids(soft, DINO, (480, 832), (480, 854))
    assert sizes[0] == (480, 832) and ids.shape == (480, 854)
    assert int(ids[:, :400].max()) == 0 and int(ids[:, 460:].min()) == 1


@pytest.mark.parametrize("protocol, sequences", [("crw", "synth00,synth01"), ("dino", "synth00")])
def test_propagate_davis_with_a_dino_checkpoint(protocol, sequences, synthetic_davis, tmp_path,
                                                capsys):
    weights = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(build_encoder("vit-s16", seed=1).state_dict(), weights)
    out = tmp_path / "res"
    code, _, err = run_cli(capsys, "propagate", "davis", "--root", str(synthetic_davis), "--out",
                        str(out), "--device", "cpu", "--quiet", "--encoder", "vit-s16",
                        "--weights", str(weights), "--protocol", protocol, "--sequences",
                        sequences, "--evaluate")
    assert code == 0, err
    prov = json.loads((out / "propagation.json").read_text())
    assert prov["encoder"] == "vit-s16" and prov["weights"]["format"] == "dino"
    for name in sequences.split(","):
        truth = sorted((synthetic_davis / "Annotations" / "480p" / name).glob("*.png"))
        pred = sorted((out / name).glob("*.png"))
        assert [p.name for p in pred] == [t.name for t in truth]
        assert Image.open(pred[-1]).size == Image.open(truth[-1]).size
    jf = json.loads((out / "results-val.json").read_text())["global"]["J&F-Mean"]
    assert np.isfinite(jf)


def test_head_yes_with_a_vit_is_one_line(synthetic_davis, tmp_path, capsys):
    code, _, err = run_cli(capsys, "propagate", "davis", "--root", str(synthetic_davis), "--out",
                        str(tmp_path / "res"), "--device", "cpu", "--quiet", "--encoder",
                        "vit-s16", "--head", "yes")
    assert_one_line_error(code, err, "--head yes does not apply to vit-s16")
    assert not Path(tmp_path / "res").exists()
