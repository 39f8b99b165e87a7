"""`timecycle propagate davis` and `timecycle evaluate davis` end to end, and their errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from timecycle.datasets.io import read_mask, write_mask
from helpers import assert_one_line_error, run_cli


def _propagate(capsys, root: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return run_cli(capsys, "propagate", "davis", "--root", str(root), "--out", str(out),
                   "--device", "cpu", "--quiet", *extra)


def _copy_root(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_identity_propagation_writes_the_davis_format(synthetic_davis, tmp_path, capsys):
    out = tmp_path / "res"
    code, stdout, _ = _propagate(capsys, synthetic_davis, out, "--encoder", "identity", "--evaluate")
    assert code == 0
    names = (synthetic_davis / "ImageSets/2017/val.txt").read_text().split()
    for name in names:
        frames = sorted((synthetic_davis / "JPEGImages/480p" / name).iterdir())
        preds = sorted((out / name).iterdir())
        assert [p.stem for p in preds] == [f.stem for f in frames]
        first = read_mask(synthetic_davis / "Annotations/480p" / name / "00000.png")
        for p in preds:
            img = Image.open(p)
            assert img.mode == "P"  # palettised, ids as values
            assert np.array_equal(np.asarray(img), first)  # identity: frame 0's label everywhere
    prov = json.loads((out / "propagation.json").read_text())
    assert prov["encoder"] == "identity" and prov["protocol"]["name"] == "crw"
    rows = list(csv.DictReader(open(out / "global_results-val.csv")))
    assert list(rows[0]) == ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]
    assert len(rows[0]["J-Mean"].split(".")[1]) == 6
    assert "J&F-Mean" in stdout
    assert not list(out.glob(".partial-*"))


@pytest.mark.parametrize("protocol", ["crw", "timecycle", "dino"])
def test_pixel_beats_identity_on_moving_objects(synthetic_davis, tmp_path, capsys, protocol):
    res = {}
    for enc in ("identity", "pixel"):
        out = tmp_path / enc
        code, _, err = _propagate(capsys, synthetic_davis, out, "--encoder", enc,
                                  "--protocol", protocol, "--evaluate")
        assert code == 0, err
        res[enc] = float(next(csv.DictReader(open(out / "global_results-val.csv")))["J&F-Mean"])
    # The objects move several pixels per frame: copying frame 0 falls behind, colour
    # correspondence follows them.
    assert res["pixel"] > res["identity"] + 0.05, res


def test_random_resnet_runs_and_records_provenance(synthetic_davis, tmp_path, capsys):
    out = tmp_path / "r18"
    code, _, err = _propagate(capsys, synthetic_davis, out, "--encoder", "resnet18",
                              "--sequences", "synth00", "--seed", "3")
    assert code == 0, err
    prov = json.loads((out / "propagation.json").read_text())
    assert prov["encoder"] == "resnet18" and prov["seed"] == 3 and prov["weights"] is None
    assert prov["sequences"][0]["name"] == "synth00"


def test_bf16_features_are_recorded_and_close_to_fp32(synthetic_davis, tmp_path, capsys):
    import torch

    from timecycle.encoder import build_encoder
    from timecycle.propagation.protocols import CRW
    from timecycle.propagation.video import FrameEncoder

    runs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        code, _, err = _propagate(capsys, synthetic_davis, out, "--encoder", "resnet18",
                                  "--sequences", "synth00", "--precision", precision,
                                  "--evaluate")
        assert code == 0, err
        assert json.loads((out / "propagation.json").read_text())["precision"] == precision
        runs[precision] = json.loads((out / "results-val.json").read_text())
    jf = [r["global"]["J&F-Mean"] for r in runs.values()]
    assert abs(jf[0] - jf[1]) < 0.02
    # The encoder really ran in bf16 on the CPU: close to fp32, not equal to it.
    frames = np.random.default_rng(0).integers(0, 256, (2, 64, 96, 3), dtype=np.uint8)
    enc = build_encoder("resnet18", seed=0).eval()
    f32, _ = FrameEncoder(enc, CRW, torch.device("cpu"))(frames)
    f16, _ = FrameEncoder(enc, CRW, torch.device("cpu"), amp=True)(frames)
    assert f16.dtype == torch.float32 and not torch.equal(f16, f32)
    assert torch.nn.functional.cosine_similarity(f16, f32, dim=1).min() > 0.99


@pytest.mark.parametrize("encoder", ["identity", "pixel"])
def test_bf16_is_for_a_network_only(encoder, synthetic_davis, tmp_path, capsys, monkeypatch):
    """No network, no autocast: identity and pixel run and record fp32 under --precision bf16
    (pixel's colour conversion used to run its product in bf16 and record "bf16"), and no note
    about an emulating CPU is printed or recorded."""
    from timecycle.engine import runtime

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    pngs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        code, _, err = run_cli(capsys, "propagate", "davis", "--root", str(synthetic_davis),
                               "--out", str(out), "--device", "cpu", "--encoder", encoder,
                               "--sequences", "synth00", "--precision", precision)
        assert code == 0 and "note" not in err, err
        prov = json.loads((out / "propagation.json").read_text())
        assert prov["precision"] == "fp32" and "notes" not in prov
        pngs[precision] = {p.name: p.read_bytes() for p in (out / "synth00").iterdir()}
    assert pngs["bf16"] == pngs["fp32"]


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_an_emulating_cpu_is_noted_and_recorded(native, synthetic_davis, tmp_path,
                                                        capsys, monkeypatch):
    from timecycle.engine import runtime

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    out = tmp_path / "res"
    # Without --quiet, so that the note is printed.
    code, _, err = run_cli(capsys, "propagate", "davis", "--root", str(synthetic_davis), "--out",
                           str(out), "--device", "cpu", "--encoder", "resnet18", "--sequences",
                           "synth00", "--precision", "bf16")
    assert code == 0, err
    noted = "timecycle: note: bf16 on this CPU is emulated" in err
    assert noted == (not native)
    recorded = json.loads((out / "propagation.json").read_text()).get("notes", [])
    assert len(recorded) == (0 if native else 1)


def test_evaluate_rescores_and_never_reuses_stale_results(synthetic_davis, tmp_path, capsys):
    out = tmp_path / "res"
    assert _propagate(capsys, synthetic_davis, out, "--encoder", "identity", "--evaluate")[0] == 0
    first = (out / "global_results-val.csv").read_text()
    # Damage one prediction: the next evaluation must see it.
    seq = "synth00"
    p = sorted((out / seq).iterdir())[3]
    write_mask(p, np.zeros_like(read_mask(p)))
    code, _, _ = run_cli(capsys, "evaluate", "davis", "--root", str(synthetic_davis), "--results", str(out), "--quiet")
    assert code == 0
    assert (out / "global_results-val.csv").read_text() != first
    # A new propagation into the folder removes the old evaluation before writing.
    assert _propagate(capsys, synthetic_davis, out, "--encoder", "identity", "--sequences", seq)[0] == 0
    assert not (out / "global_results-val.csv").exists()


def test_evaluate_scores_a_results_folder_as_it_was_propagated(synthetic_davis, tmp_path,
                                                               capsys):
    # The sequences, year and annotations a folder was propagated with are recorded; evaluate
    # takes them unless given, so `evaluate davis --results R` re-scores R as propagated.
    root = _copy_root(synthetic_davis, tmp_path / "root")
    alt = root / "Annotations_alt" / "480p"
    shutil.copytree(root / "Annotations" / "480p", alt)
    for p in sorted((alt / "synth01").iterdir())[1:]:  # a static object: identity is exact
        shutil.copy(alt / "synth01" / "00000.png", p)
    out = tmp_path / "res"
    code, stdout, _ = _propagate(capsys, root, out, "--encoder", "identity", "--sequences",
                                 "synth01", "--annotations", str(alt), "--evaluate")
    assert code == 0 and "J&F-Mean 1.0000" in stdout
    assert json.loads((out / "propagation.json").read_text())["annotations"] == (
        "Annotations_alt/480p")
    scored = (out / "global_results-val.csv").read_text()
    (out / "global_results-val.csv").unlink()
    moved = Path(shutil.move(root, tmp_path / "moved"))  # relative: found under a new --root
    for extra in ([], ["--root", str(moved)]):
        code, stdout, err = run_cli(capsys, "evaluate", "davis", "--results", str(out), "--quiet",
                                    *extra)
        if not extra:  # the recorded root is gone
            assert_one_line_error(code, err, "DAVIS root folder not found", str(root))
            continue
        assert code == 0 and (out / "global_results-val.csv").read_text() == scored
        assert "--sequences synth01, --year 2017, --annotations Annotations_alt/480p" in err
    # Given options win over the record: the default annotations score it lower.
    code, stdout, _ = run_cli(capsys, "evaluate", "davis", "--results", str(out), "--quiet",
                              "--root", str(moved), "--annotations", str(moved / "Annotations/480p"))
    assert code == 0 and "J&F-Mean 1.0000" not in stdout
    (out / "propagation.json").unlink()
    code, _, err = run_cli(capsys, "evaluate", "davis", "--results", str(out))
    assert_one_line_error(code, err, "pass --root", str(out))


def test_a_propagation_into_another_benchmarks_results_drops_their_scores(synthetic_davis,
                                                                          tmp_path, capsys):
    # A DAVIS run into a folder of JHMDB results kept their pck.csv, a score of nothing there.
    out = tmp_path / "o"
    out.mkdir()
    for name in ("pck.csv", "pck_per_video.csv", "pck.json", "miou.csv", "miou.json"):
        (out / name).write_text("old scores")
    code, _, err = _propagate(capsys, synthetic_davis, out, "--encoder", "identity")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["propagation.json"]


def test_missing_sequences_are_all_listed(synthetic_davis, tmp_path, capsys):
    code, _, err = _propagate(capsys, synthetic_davis, tmp_path / "o", "--encoder", "identity",
                              "--sequences", "synth00,nope1,nope2")
    assert_one_line_error(code, err, "nope1", "nope2", "2 of 3")


def test_unknown_protocol(synthetic_davis, tmp_path, capsys):
    code, _, err = _propagate(capsys, synthetic_davis, tmp_path / "o", "--protocol", "fancy")
    assert_one_line_error(code, err, "unknown protocol")


def test_evaluate_names_a_missing_results_folder_first(tmp_path, capsys):
    code, _, err = run_cli(capsys, "evaluate", "davis", "--results", str(tmp_path / "nosuch"))
    assert_one_line_error(code, err, "nosuch", "results folder not found")  # not "pass --root"


def test_missing_root(tmp_path, capsys):
    code, _, err = _propagate(capsys, tmp_path / "nowhere", tmp_path / "o")
    assert_one_line_error(code, err, "nowhere")


def test_truncated_frame_names_the_file(synthetic_davis, tmp_path, capsys):
    root = _copy_root(synthetic_davis, tmp_path / "root")
    bad = root / "JPEGImages/480p/synth00/00004.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    out = tmp_path / "o"
    code, _, err = _propagate(capsys, root, out, "--encoder", "pixel", "--sequences", "synth00")
    assert_one_line_error(code, err, "00004.jpg")
    assert not (out / "synth00").exists()  # no half-written sequence that looks complete
    assert not (out / "propagation.json").exists()


@pytest.mark.parametrize("inside", ["Annotations/480p", "JPEGImages/480p/new", "Annotations"])
def test_results_inside_the_datasets_inputs_are_refused(inside, synthetic_davis, tmp_path, capsys):
    # Before: --out ROOT/Annotations/480p replaced the ground truth with the predictions and
    # scored them against themselves, J&F 1.0 with exit 0.
    root = _copy_root(synthetic_davis, tmp_path / "root")
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    code, _, err = _propagate(capsys, root, root / inside, "--encoder", "pixel", "--evaluate")
    assert_one_line_error(code, err, str(root / inside), "input folder")
    code, _, err = run_cli(capsys, "evaluate", "davis", "--root", str(root), "--results",
                           str(root / inside))
    assert_one_line_error(code, err, "input folder" if (root / inside).is_dir()
                          else "results folder not found")
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    code, _, err = _propagate(capsys, root, root / "results", "--encoder", "identity")
    assert code == 0, err  # beside the inputs is fine


def test_an_annotation_without_its_frame_is_refused(synthetic_davis, tmp_path, capsys):
    # A frame deleted mid-sequence: before, its annotation was silently left out of the
    # score (the official evaluation reads a result for every annotation).
    root = _copy_root(synthetic_davis, tmp_path / "root")
    done = tmp_path / "done"
    code, _, err = _propagate(capsys, root, done, "--encoder", "pixel")
    assert code == 0, err
    (root / "JPEGImages/480p/synth01/00004.jpg").unlink()
    code, _, err = run_cli(capsys, "evaluate", "davis", "--results", str(done), "--root", str(root))
    assert_one_line_error(code, err, "synth01", "1 annotation(s) have no frame", "00004.png")
    out = tmp_path / "o"
    code, _, err = _propagate(capsys, root, out, "--encoder", "pixel", "--evaluate")
    assert_one_line_error(code, err, "synth01", "00004.png")
    assert not out.exists()  # refused before any sequence was propagated


def test_rgb_mask_is_refused(synthetic_davis, tmp_path, capsys):
    root = _copy_root(synthetic_davis, tmp_path / "root")
    m = root / "Annotations/480p/synth00/00000.png"
    Image.open(m).convert("RGB").save(m)
    code, _, err = _propagate(capsys, root, tmp_path / "o", "--encoder", "pixel", "--sequences", "synth00")
    assert_one_line_error(code, err, "00000.png", "mode RGB")


def test_wrong_size_mask_is_refused(synthetic_davis, tmp_path, capsys):
    root = _copy_root(synthetic_davis, tmp_path / "root")
    m = root / "Annotations/480p/synth01/00000.png"
    write_mask(m, np.ones((10, 12), np.uint8))
    code, _, err = _propagate(capsys, root, tmp_path / "o", "--encoder", "pixel")
    assert_one_line_error(code, err, "00000.png", "12x10")


def test_empty_first_mask_is_refused(synthetic_davis, tmp_path, capsys):
    root = _copy_root(synthetic_davis, tmp_path / "root")
    m = root / "Annotations/480p/synth02/00000.png"
    ids = read_mask(m)
    write_mask(m, np.zeros_like(ids))
    code, _, err = _propagate(capsys, root, tmp_path / "o", "--encoder", "pixel")
    assert_one_line_error(code, err, "empty")
    assert "--year" not in err
    # the other year's format reads as empty too: the message says which flag fits it
    write_mask(m, np.where(ids > 0, 255, 0).astype(np.uint8))
    code, _, err = _propagate(capsys, root, tmp_path / "o", "--encoder", "pixel")
    assert_one_line_error(code, err, "empty", "pass --year 2016")
    write_mask(m, np.where(ids > 0, 1, 0).astype(np.uint8))
    code, _, err = _propagate(capsys, root, tmp_path / "o", "--encoder", "pixel", "--year", "2016",
                              "--sequences", "synth02")
    assert_one_line_error(code, err, "empty", "values 1 look like DAVIS-2017", "--year 2017")


def test_prediction_with_unknown_object_id(synthetic_davis, tmp_path, capsys):
    out = tmp_path / "res"
    assert _propagate(capsys, synthetic_davis, out, "--encoder", "identity")[0] == 0
    p = out / "synth00" / "00003.png"
    mask = read_mask(p)
    mask[0, 0] = 9
    write_mask(p, mask)
    code, _, err = run_cli(capsys, "evaluate", "davis", "--root", str(synthetic_davis), "--results", str(out), "--quiet")
    assert_one_line_error(code, err, "9")


def test_wrong_checkpoint_is_one_line(synthetic_davis, tmp_path, capsys):
    ckpt = tmp_path / "w.pt"
    ckpt.write_text("not a checkpoint")
    code, _, err = _propagate(capsys, synthetic_davis, tmp_path / "o", "--encoder", "resnet18", "--weights", str(ckpt))
    assert_one_line_error(code, err, "w.pt")
