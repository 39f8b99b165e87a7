"""Loading encoder weights from the layouts users bring, and refusing everything else.

Each layout is fabricated from a source encoder the way the public code names and wraps its
weights (torchvision ResNet; ajabri/videowalk train.py + From3D; xiaolonw/TimeCycle
train_video_cycle_simple.py + InflatedResNet), then loaded into an encoder built from another
seed, which must then compute exactly the source's features.
"""

from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import pathlib
import pickle
import subprocess
import sys

import pytest
import numpy as np
import torch
import torchvision
from torch import nn

from timecycle.encoder import build_encoder
from timecycle.encoder.weights import FORMATS, file_sha256, load_weights
from timecycle.errors import UserError


def _encoder(arch: str = "resnet18", head: bool = False, seed: int = 0) -> nn.Module:
    return build_encoder(arch, head=head, seed=seed).eval()


@functools.cache
def _source(arch: str = "resnet18", head: bool = False, seed: int = 1) -> nn.Module:
    """An encoder with random BatchNorm affine and statistics (fresh ones are all 1 and 0, the
    same for every seed, so a load that skipped them would go unnoticed). Shared: never load
    into it."""
    enc = _encoder(arch, head, seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in enc.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                m.num_batches_tracked.fill_(7)
    return enc


def _features(enc: nn.Module) -> torch.Tensor:
    x = torch.randn(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return enc(x)


def _assert_loaded(dst: nn.Module, src: nn.Module, path, skip_bn_counts: bool = False) -> object:
    """Load `path` into `dst` and check it now equals `src`, after checking it did not before."""
    want = _features(src)
    assert not torch.equal(_features(dst), want)
    info = load_weights(dst, path)
    assert torch.equal(_features(dst), want)
    expected = src.state_dict()
    for key, value in dst.state_dict().items():
        if skip_bn_counts and key.endswith("num_batches_tracked"):
            continue
        assert torch.equal(value, expected[key]), key
    return info


def _resnet_names(state: dict) -> dict:
    """ResNetEncoder keys -> torchvision keys (stem.0 -> conv1, stem.1 -> bn1), head dropped."""
    out = {}
    for key, value in state.items():
        if key.startswith("head."):
            continue
        key = key.replace("stem.0.", "conv1.", 1).replace("stem.1.", "bn1.", 1)
        out[key] = value.clone()
    return out


@functools.cache
def _torchvision_state(arch: str) -> dict:
    return getattr(torchvision.models, arch)(weights=None).state_dict()


def _tail(arch: str, fc: bool) -> dict:
    """The layer4 (and fc) tensors a real file of `arch` carries beyond layer3."""
    keep = ("layer4.", "fc.") if fc else ("layer4.",)
    return {k: v for k, v in _torchvision_state(arch).items() if k.startswith(keep)}


def _adam_state() -> dict:
    param = nn.Parameter(torch.ones(4))
    opt = torch.optim.Adam([param], lr=1e-4)
    param.grad = torch.full((4,), 0.5)
    opt.step()
    return opt.state_dict()


def _crw_checkpoint(src: nn.Module, padded_convs: bool = False) -> dict:
    """videowalk train.py: {'model': CRW.state_dict(), 'optimizer', 'lr_scheduler', 'epoch',
    'args'}; CRW.encoder = From3D(resnet) -> `encoder.model.*`; fc/avgpool removed by modify();
    layer4 kept at training time (--remove-layers defaults to [])."""
    resnet = {**_resnet_names(src.state_dict()), **_tail(src.arch, fc=False)}
    if padded_convs:  # Sequential(pad, conv) block convs, renamed back by videowalk test.py
        resnet = {
            k.replace("conv1.weight", "conv1.1.weight").replace("conv2.weight", "conv2.1.weight")
            if k.startswith("layer")
            else k: v
            for k, v in resnet.items()
        }
    model = {"encoder.model." + k: v for k, v in resnet.items()}
    model["selfsim_fc.0.weight"] = torch.zeros(128, 256)
    model["selfsim_fc.0.bias"] = torch.zeros(128)
    opt = torch.optim.Adam([nn.Parameter(torch.zeros(1))])
    scheduler = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[20, 30, 40], gamma=0.3)
    args = argparse.Namespace(
        model_type="scratch", remove_layers=[], device="cuda", lr=1e-4, temp=0.05, clip_len=4,
        patch_size=[64, 64, 3], output_dir="checkpoints/_drop0.1-len4/", head_depth=0,
    )
    return {
        "model": model,
        "optimizer": _adam_state(),
        "lr_scheduler": scheduler.state_dict(),  # milestones is a collections.Counter
        "epoch": 3,
        "args": args,
    }


def _timecycle_checkpoint(src: nn.Module) -> dict:
    """train_video_cycle_simple.py: {'epoch', 'state_dict'} of DataParallel(CycleTime):
    `module.encoderVideo.*` is InflatedResNet (all 2-D convs inflated with time size 1, layer4
    kept, no fc), `module.afterconv1` the 1x1x1 head, then the localiser's layers."""
    state = {}
    for key, value in {**_resnet_names(src.state_dict()), **_tail("resnet50", fc=False)}.items():
        if key.endswith("num_batches_tracked"):
            continue  # PyTorch 0.4.0, which the release used, did not save them
        state["module.encoderVideo." + key] = value.unsqueeze(2) if value.dim() == 4 else value
    state["module.afterconv1.weight"] = src.head.conv.weight.detach().clone()[:, :, None]
    state["module.afterconv3_trans.weight"] = torch.zeros(128, 900, 4, 4)
    state["module.afterconv4_trans.weight"] = torch.zeros(64, 128, 4, 4)
    state["module.linear2.weight"] = torch.zeros(3, 1024)
    state["module.linear2.bias"] = torch.zeros(3)
    return {"epoch": 15, "state_dict": state}


def _dino_checkpoint(teacher: nn.Module, student: nn.Module) -> dict:
    """facebookresearch/dino main_dino.py for a torchvision ResNet: {'student', 'teacher',
    'optimizer', 'epoch', 'args', 'dino_loss', 'fp16_scaler'}. Each network is
    MultiCropWrapper(backbone with fc = Identity, DINOHead) inside DDP (a ResNet has BatchNorm,
    so the teacher is wrapped too): `module.backbone.*` (layer4 kept) and `module.head.*`."""

    def wrapped(enc: nn.Module) -> dict:
        backbone = {**_resnet_names(enc.state_dict()), **_tail(enc.arch, fc=False)}
        state = {"module.backbone." + k: v for k, v in backbone.items()}
        state["module.head.mlp.0.weight"] = torch.zeros(2048, 512)
        state["module.head.last_layer.weight_g"] = torch.ones(65536, 1)
        return state

    args = argparse.Namespace(arch=teacher.arch, out_dim=65536, momentum_teacher=0.996,
                              use_bn_in_head=True, output_dir="./dino_rn")
    return {"student": wrapped(student), "teacher": wrapped(teacher), "optimizer": _adam_state(),
            "epoch": 100, "args": args, "dino_loss": {"center": torch.zeros(1, 65536)},
            "fp16_scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 0}}


def test_dino_resnet_checkpoint_takes_the_teacher_backbone(tmp_path):
    teacher, student = _source(seed=1), _source(seed=3)
    path = tmp_path / "checkpoint.pth"
    torch.save(_dino_checkpoint(teacher, student), path)
    info = _assert_loaded(_encoder(seed=2), teacher, path)
    assert info.format == "dino" and info.padding_mode == "zeros"
    assert info.tensors == len(teacher.state_dict())
    assert {"module.head.mlp.0.weight", "module.backbone.layer4.0.conv1.weight"} <= set(info.ignored)
    assert not any(key.startswith("module.backbone.layer3") for key in info.ignored)


def test_dino_released_resnet_backbone_is_a_torchvision_state_dict(tmp_path):
    # dino_resnet50_pretrain.pth: the teacher backbone alone, fc an Identity (no fc keys)
    src = _source()
    path = tmp_path / "dino_resnet_pretrain.pth"
    torch.save({**_resnet_names(src.state_dict()), **_tail("resnet18", fc=False)}, path)
    assert _assert_loaded(_encoder(seed=2), src, path).format == "torchvision"


def test_torchvision_state_dict(tmp_path):
    src = _source()
    path = tmp_path / "resnet18.pth"
    torch.save({**_resnet_names(src.state_dict()), **_tail("resnet18", fc=True)}, path)
    info = _assert_loaded(_encoder(seed=2), src, path)
    assert info.format == "torchvision"
    assert info.tensors == len(src.state_dict())
    assert set(info.ignored) == set(_tail("resnet18", fc=True))
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() == file_sha256(path)


def test_real_torchvision_model_keys_land_in_the_right_place(tmp_path):
    net = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        net.bn1.running_var.uniform_(0.5, 2.0)
        net.layer3[1].bn2.weight.uniform_(0.5, 2.0)
    path = tmp_path / "resnet18.pth"
    torch.save(net.state_dict(), path)
    enc = _encoder()
    load_weights(enc, path)
    assert torch.equal(enc.stem[0].weight, net.conv1.weight)
    assert torch.equal(enc.stem[1].running_var, net.bn1.running_var)
    assert torch.equal(enc.layer3[1].bn2.weight, net.layer3[1].bn2.weight)
    assert torch.equal(enc.layer3[0].downsample[0].weight, net.layer3[0].downsample[0].weight)


@pytest.mark.parametrize("padded_convs", [False, True])
def test_crw_checkpoint(tmp_path, padded_convs):
    src = _source()
    path = tmp_path / "crw.pth"
    torch.save(_crw_checkpoint(src, padded_convs), path)
    src = copy.deepcopy(src)  # _source is shared between tests
    src.set_padding_mode("reflect")  # CRW's scratch ResNet pads by reflection
    dst = _encoder(seed=2)
    info = _assert_loaded(dst, src, path)
    assert info.format == "crw" and info.padding_mode == "reflect"
    assert dst.stem[0].padding_mode == "reflect" and dst.layer3[0].conv2.padding_mode == "reflect"
    assert "selfsim_fc.0.weight" in info.ignored
    assert "encoder.model.layer4.1.bn2.running_var" in info.ignored


def test_timecycle_official_checkpoint_with_head(tmp_path):
    src = _source("resnet50", head=True)
    path = tmp_path / "checkpoint_14.pth.tar"
    # the release predates the zip format: legacy serialisation
    torch.save(_timecycle_checkpoint(src), path, _use_new_zipfile_serialization=False)
    dst = _encoder("resnet50", head=True, seed=2)
    info = _assert_loaded(dst, src, path, skip_bn_counts=True)
    assert info.format == "timecycle-official"
    assert "module.linear2.weight" in info.ignored
    assert "module.afterconv1.weight" not in info.ignored
    assert torch.equal(dst.head.conv.weight, src.head.conv.weight)


def test_timecycle_official_head_needs_an_encoder_head_or_drop_head(tmp_path):
    src = _source("resnet50", head=True)
    path = tmp_path / "checkpoint_14.pth.tar"
    torch.save(_timecycle_checkpoint(src), path)
    dst = _encoder("resnet50", head=False, seed=2)
    with pytest.raises(UserError, match=r"timecycle-official.*has the TimeCycle head.*head=True"):
        load_weights(dst, path)
    info = load_weights(dst, path, drop_head=True)
    assert "module.afterconv1.weight" in info.ignored
    assert torch.equal(dst.layer3[5].conv3.weight, src.layer3[5].conv3.weight)


@pytest.mark.parametrize("head, protocol, with_head", [
    ("auto", "timecycle", True),   # TimeCycle's test code applies afterconv1
    ("auto", "crw", False),        # CRW's load_tc_model keeps encoderVideo only
    ("auto", "dino", False),
    ("no", "timecycle", False),    # refused before: the file's head had nowhere to go
    ("yes", "crw", True),
])
def test_head_auto_follows_the_protocols_reference_code(tmp_path, head, protocol, with_head):
    from timecycle.encoder.weights import load_encoder

    src = _source("resnet50", head=True)
    path = tmp_path / "checkpoint_14.pth.tar"
    torch.save(_timecycle_checkpoint(src), path)
    encoder, info = load_encoder("resnet50", path, head, seed=2, protocol=protocol)
    assert info["head"] is with_head and (encoder.head is not None) is with_head
    want = _features(src)
    if not with_head:
        src_layer3 = copy.deepcopy(src)
        src_layer3.drop_head()
        want = _features(src_layer3)
        assert want.shape[1] == encoder.out_channels == 1024
    assert torch.allclose(_features(encoder.eval()), want, atol=1e-5)


def test_encoder_head_needs_a_head_in_the_file(tmp_path):
    path = tmp_path / "crw.pth"
    torch.save(_crw_checkpoint(_source()), path)
    with pytest.raises(UserError, match=r"crw checkpoint has no TimeCycle head.*head=False"):
        load_weights(_encoder(head=True), path)


@pytest.mark.parametrize("head", [False, True])
@pytest.mark.parametrize("wrapped", [False, True])
def test_native_checkpoints(tmp_path, head, wrapped):
    src = _source(head=head)
    state = {k: v.clone() for k, v in src.state_dict().items()}
    if wrapped:  # a training checkpoint: the encoder is `encoder.` of the trained model
        model = {"encoder." + k: v for k, v in state.items()}
        model["tracker.localizer.conv.weight"] = torch.zeros(8, 4, 3, 3)
        obj = {
            "model": model,
            "optimizer": _adam_state(),
            "step": 100,
            "config": {"encoder": {"arch": "resnet18", "head": head}, "lr": 2e-4},
        }
    else:
        obj = state
    path = tmp_path / "native.pt"
    torch.save(obj, path)
    info = _assert_loaded(_encoder(head=head, seed=2), src, path)
    assert info.format == "native"
    assert info.ignored == (("tracker.localizer.conv.weight",) if wrapped else ())


def test_a_run_checkpoint_is_content_checked_and_weights_must_be_finite(tmp_path):
    # A timecycle run's last.pt stores the sha256 of its contents: --weights checks it as
    # --resume does, so a corrupt file is refused, not propagated into masks of J&F 0.
    from timecycle.engine.checkpoint import save_checkpoint

    src = _source()
    model = {"encoder." + k: v.clone() for k, v in src.state_dict().items()}
    run = tmp_path / "run"
    path = save_checkpoint(run, {"model": model, "optimizer": _adam_state(), "step": 1,
                                 "config": {"arch": "resnet18"}}, step=1, numbered=False)
    _assert_loaded(_encoder(seed=2), src, path)
    payload = torch.load(path, weights_only=True)
    payload["model"]["encoder.layer3.0.conv1.weight"][0, 0, 0, 0] += 1e30  # sha256 kept
    torch.save(payload, path)
    with pytest.raises(UserError, match=r"last\.pt: content check failed"):
        load_weights(_encoder(), path)

    state = {k: v.clone() for k, v in src.state_dict().items()}
    state["layer2.0.bn1.running_var"][3] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(UserError, match=r"nan\.pt: weight 'layer2\.0\.bn1\.running_var' holds NaN"):
        load_weights(_encoder(), tmp_path / "nan.pt")
    state["layer2.0.bn1.running_var"][3] = -1.0  # finite, but sqrt(-1): NaN features, empty masks
    torch.save(state, tmp_path / "negative.pt")
    with pytest.raises(UserError, match=r"negative\.pt: weight 'layer2\.0\.bn1\.running_var' "
                                        "holds negative variances"):
        load_weights(_encoder(), tmp_path / "negative.pt")


def test_data_parallel_prefix_is_dropped(tmp_path):
    src = _source()
    path = tmp_path / "dp.pth"
    torch.save({"module." + k: v for k, v in _resnet_names(src.state_dict()).items()}, path)
    info = _assert_loaded(_encoder(seed=2), src, path)
    assert info.format == "torchvision"


def test_missing_bn_counts_are_allowed_and_other_missing_keys_named(tmp_path):
    src = _source()
    state = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "a.pt"
    torch.save(state, path)
    _assert_loaded(_encoder(seed=2), src, path, skip_bn_counts=True)
    del state["layer3.1.bn2.running_var"]
    torch.save(state, path)
    with pytest.raises(UserError, match=r"native.*1 missing keys: layer3\.1\.bn2\.running_var"):
        load_weights(_encoder(), path)


def test_resnet50_file_into_resnet18_names_keys_and_shapes(tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save(_torchvision_state("resnet50"), path)
    dst = _encoder(seed=2)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(UserError) as err:
        load_weights(dst, path)
    message = str(err.value)
    assert err.value.path == path and str(path) in message
    assert "torchvision checkpoint does not fit the resnet18 encoder" in message
    assert "the file holds a resnet50" in message
    assert "unexpected keys: layer1.0.conv3.weight" in message
    assert "layer1.0.conv1.weight (64, 64, 1, 1) vs (64, 64, 3, 3)" in message
    assert all(torch.equal(v, before[k]) for k, v in dst.state_dict().items())  # left untouched


def test_inflated_conv_with_real_time_extent_is_refused(tmp_path):
    src = _source("resnet50", head=True)
    ckpt = _timecycle_checkpoint(src)
    ckpt["state_dict"]["module.encoderVideo.conv1.weight"] = torch.zeros(64, 3, 3, 7, 7)
    path = tmp_path / "tc3.pth"
    torch.save(ckpt, path)
    with pytest.raises(UserError) as err:
        load_weights(_encoder("resnet50", head=True), path)
    shape = "module.encoderVideo.conv1.weight -> stem.0.weight (64, 3, 3, 7, 7) vs (64, 3, 7, 7)"
    assert shape in str(err.value)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ({"foo": torch.zeros(3), "bar": 1}, r"not a recognised encoder checkpoint.*foo, bar"),
        ({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, r"not a recognised encoder checkpoint"),
        (torch.zeros(3), r"holds a Tensor, not a state dict"),
    ],
)
def test_files_without_an_encoder_are_refused(tmp_path, content, match):
    path = tmp_path / "other.pt"
    torch.save(content, path)
    with pytest.raises(UserError, match=match):
        load_weights(_encoder(), path)


def test_unreadable_files_are_user_errors(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    full = tmp_path / "full.pt"
    torch.save(_source().state_dict(), full)
    legacy = tmp_path / "legacy.pt"
    torch.save(_source().state_dict(), legacy, _use_new_zipfile_serialization=False)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    cut_legacy = tmp_path / "cut_legacy.pt"
    cut_legacy.write_bytes(legacy.read_bytes()[: legacy.stat().st_size // 2])
    for path in (text, cut, cut_legacy, tmp_path / "absent.pt", tmp_path):
        with pytest.raises(UserError) as err:
            load_weights(_encoder(), path)
        assert err.value.path == path, path


class _WritesMarker:
    """Unpickling this writes a file: what a malicious checkpoint would do."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.write_text, (self.marker, "code ran"))


@pytest.mark.filterwarnings("error")  # torch's two-line note on plain pickles is not shown
@pytest.mark.parametrize("writer", ["torch.save", "torch.save legacy", "pickle", "pickle v2"])
def test_malicious_pickle_is_refused_without_running(tmp_path, writer):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    obj = {"model": {"conv1.weight": torch.zeros(1)}, "payload": _WritesMarker(marker)}
    if writer.startswith("pickle"):
        path.write_bytes(pickle.dumps(obj, protocol=2 if writer == "pickle v2" else None))
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=writer == "torch.save")
    with pytest.raises(UserError, match="refused to load") as err:
        load_weights(_encoder(), path)
    assert not marker.exists()
    assert err.value.path == path
    assert "weights_only" not in str(err.value)  # never advise loading it unsafely
    # control: the file really is malicious when unpickled without restrictions
    if writer.startswith("pickle"):
        pickle.loads(path.read_bytes())
    else:
        torch.load(path, weights_only=False)
    assert marker.read_text() == "code ran"


@pytest.mark.parametrize("name, content, needle", [
    ("config.json", b'{"arch": "resnet18"}', "it holds text"),
    ("arr.npy", None, "it holds a NumPy .npy file"),
    ("empty.pt", b"", "the file is empty"),
])
def test_files_that_are_not_checkpoints_say_so(tmp_path, name, content, needle):
    # torch.load's own message for these read "Unsupported operand 123".
    path = tmp_path / name
    if content is None:
        np.save(path, np.zeros(3))
    else:
        path.write_bytes(content)
    with pytest.raises(UserError, match=needle) as err:
        load_weights(_encoder(), path)
    assert err.value.path == path


def test_safetensors_without_the_package_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(UserError, match=r"`safetensors` package is not installed"):
        load_weights(_encoder(), path)


def test_safetensors_round_trip(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    src = _source()
    path = tmp_path / "w.bin"  # found by its header, not only by its suffix
    safetensors_torch.save_file(_resnet_names(src.state_dict()), str(path))
    assert _assert_loaded(_encoder(seed=2), src, path).format == "torchvision"


def test_file_sha256_streams_in_chunks(tmp_path):
    path = tmp_path / "blob"
    data = bytes(range(256)) * 1000
    path.write_bytes(data)
    assert file_sha256(path, chunk_size=1000) == hashlib.sha256(data).hexdigest()
    assert set(FORMATS) == {"native", "torchvision", "crw", "timecycle-official", "dino"}


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_trunk_is_torchvisions_resnet_to_the_bit(arch):
    """encoder.blocks builds ResNets without importing torchvision: for one seed its random
    network is torchvision's (every parameter and buffer, the generator's state after, the
    forward pass), so a random baseline "as built" is the network it always was."""
    from timecycle.encoder.blocks import ResNetTrunk

    torch.manual_seed(3)
    ours = ResNetTrunk(arch)
    after_ours = torch.get_rng_state()
    torch.manual_seed(3)
    theirs = getattr(torchvision.models, arch)(weights=None)
    assert torch.equal(torch.get_rng_state(), after_ours)
    want = theirs.state_dict()
    got = ours.state_dict()
    assert list(got) == list(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key
    x = torch.randn(2, 3, 64, 48)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        def trunk(net):
            return net.layer4(net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x))))))))
        assert torch.equal(trunk(ours), trunk(theirs))


def test_inference_does_not_import_torchvision():
    """The command line and an encoder for propagation load without torchvision, whose import
    (torch._dynamo through torchvision.ops) cost every command about a second; only training's
    walk crops (roi_align) import it, when a clip is cut."""
    code = ("import sys; from timecycle.cli import build_parser; build_parser(); "
            "from timecycle.encoder import build_encoder; build_encoder('resnet18'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torchvision'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
