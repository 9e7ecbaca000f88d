"""`python -m trainer.prepare` on a tiny fake DeepFashion tree: reported, resumable, bad input named.

The DWPose path runs the pack's real DWPose code on tiny ONNX models with the real files' signatures that always
report two people (so every photo is a "several people" case); MediaPipe on real photos, and two processes under
`accelerate launch`, run in the README walk-through test (tests/test_trainer_readme.py).
"""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.pose_fixtures import write_two_person_dwpose
from trainer import deepfashion
from trainer import prepare as prepare_lib
from trainer.testing import DEEPFASHION_SIZE, write_deepfashion

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def dwpose_dir(tmp_path_factory):
    return write_two_person_dwpose(tmp_path_factory.mktemp("dwpose"), *DEEPFASHION_SIZE)


def make_tree(root: Path) -> Path:
    tree = write_deepfashion(root / "deepfashion")
    blank = tree / "img_highres" / "MEN" / "Denim" / "id_00000001" / "01_4_full.jpg"
    Image.new("RGB", DEEPFASHION_SIZE, (128, 128, 128)).save(blank)  # nobody in it
    return tree


def run_prepare(tree: Path, out: Path, dwpose_dir: Path, *options: str) -> int:
    return prepare_lib.main([str(tree), "--out", str(out), "--detector", "dwpose", "--dwpose-dir", str(dwpose_dir),
                             *options])


def photos_of(tree: Path) -> list[str]:
    return deepfashion.read_split(tree / "train.lst") + deepfashion.read_split(tree / "test.lst")


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, dwpose_dir):
    """The tree prepared in this process (two processes under `accelerate launch`: the README walk-through test)."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("prepare")
    tree, out = make_tree(root), root / "prepared"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert run_prepare(tree, out, dwpose_dir) == 0
    return tree, out, printed.getvalue()


def test_every_photo_gets_one_pose(sharded):
    tree, out, stdout = sharded
    names = photos_of(tree)
    log = [json.loads(line)["name"] for line in (out / "dwpose" / ".status" / "process-0.jsonl").read_text().splitlines()]
    assert sorted(log) == sorted(names), "each photo once"
    blank = "fashionMENDenimid0000000101_4full"
    for name in names:
        pose = out / "dwpose" / f"{name}.png"
        assert pose.is_file() == (name != blank), name
        if name != blank:
            with Image.open(pose) as image, Image.open(out / "image" / f"{name}.jpg") as photo:
                assert image.size == photo.size == DEEPFASHION_SIZE
                assert np.asarray(image).max() > 0, "an empty pose image"
    assert not list((out / "dwpose").glob(".*.partial"))


def test_report_groups_and_manifest(sharded):
    tree, out, stdout = sharded
    report = json.loads((out / "prepare-report.json").read_text())
    names = photos_of(tree)
    assert report["no_person"] == ["fashionMENDenimid0000000101_4full"]
    assert sorted(report["several_people"]) == sorted(n for n in names if n not in report["no_person"])
    assert "1 photo(s) with no person found" in stdout and "several people" in stdout
    groups = json.loads((out / "groups.json").read_text())
    test_people = {deepfashion.person_of(n) for n in deepfashion.read_split(tree / "test.lst")}
    grouped = [p for g in groups for p in g]
    assert not {deepfashion.person_of(p) for p in grouped} & test_people
    assert "image/fashionMENDenimid0000000101_4full.jpg" not in grouped  # no pose: left out
    manifest = json.loads((out / "prepared.json").read_text())
    pairs = deepfashion.read_pairs(tree / "fasion-resize-pairs-test.csv")
    assert [[Path(s).stem, Path(t).stem] for s, t in manifest["test_pairs"]] == [list(p) for p in pairs]
    assert all((out / p).is_file() for pair in manifest["test_pairs"] for p in pair)
    assert sorted(manifest["train_images"]) == sorted(f"image/{n}.jpg" for n in deepfashion.read_split(tree / "train.lst"))
    test_groups = json.loads((out / "test-groups.json").read_text())
    assert {deepfashion.person_of(p) for g in test_groups for p in g} == test_people


def test_rerun_skips_finished_work(sharded, dwpose_dir, capsys):
    tree, out, _ = sharded
    poses = {p: p.stat().st_mtime_ns for p in (out / "dwpose").glob("*.png")}
    assert run_prepare(tree, out, dwpose_dir) == 0
    assert "this one renders 0 of its 14" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (out / "dwpose").glob("*.png")} == poses


def test_interrupted_run_and_bad_photos(tmp_path, dwpose_dir, capsys):
    tree, out = make_tree(tmp_path), tmp_path / "prepared"
    broken = tree / "img_highres" / "WOMEN" / "Blouses_Shirts" / "id_00000002" / "01_2_side.jpg"
    broken.write_bytes(broken.read_bytes()[:300])  # a truncated JPEG
    assert run_prepare(tree, out, dwpose_dir) == 2
    assert f"photo {broken} could not be read" in capsys.readouterr().err
    assert not (out / "prepared.json").exists(), "an unfinished preparation must not leave a manifest"
    done = sorted(p.name for p in (out / "dwpose").glob("*.png"))
    (out / "dwpose" / ".fashionWOMENDressesid0000000301_1front.png.partial").write_bytes(b"half a png")  # a kill
    assert run_prepare(tree, out, dwpose_dir, "--skip-bad") == 0
    report = json.loads((out / "prepare-report.json").read_text())
    assert report["unreadable"] == ["fashionWOMENBlouses_Shirtsid0000000201_2side"]
    assert "image/fashionWOMENBlouses_Shirtsid0000000201_2side.jpg" not in str((out / "groups.json").read_text())
    assert set(done) < {p.name for p in (out / "dwpose").glob("*.png")}
    with Image.open(out / "dwpose" / "fashionWOMENDressesid0000000301_1front.png") as image:
        assert image.size == DEEPFASHION_SIZE


def test_a_pose_of_another_size_is_named_or_skipped(sharded, dwpose_dir, tmp_path, capsys):
    import shutil

    tree, source_out, _ = sharded
    out = tmp_path / "prepared"
    shutil.copytree(source_out, out, symlinks=True)
    wrong = out / "dwpose" / "fashionMENDenimid0000000101_1front.png"
    Image.new("RGB", (100, 100)).save(wrong)
    assert run_prepare(tree, out, dwpose_dir) == 2
    assert f"pose image {wrong} is 100x100" in capsys.readouterr().err
    assert run_prepare(tree, out, dwpose_dir, "--skip-bad") == 0
    report = json.loads((out / "prepare-report.json").read_text())
    assert list(report["pose_size_mismatch"]) == ["fashionMENDenimid0000000101_1front"]
    assert "fashionMENDenimid0000000101_1front" not in (out / "groups.json").read_text()


def test_a_split_naming_missing_photos_is_named_or_counted(tmp_path, dwpose_dir, capsys):
    tree, out = make_tree(tmp_path), tmp_path / "prepared"
    (tree / "test.lst").write_text((tree / "test.lst").read_text() + "fashionWOMENDressesid0000009901_1front.jpg\n")
    assert run_prepare(tree, out, dwpose_dir) == 2
    err = capsys.readouterr().err
    assert str(tree / "test.lst") in err and "fashionWOMENDressesid0000009901_1front" in err
    assert run_prepare(tree, out, dwpose_dir, "--skip-missing") == 0
    report = json.loads((out / "prepare-report.json").read_text())
    assert report["photos"]["missing_from_folder"]["test"] == ["fashionWOMENDressesid0000009901_1front"]
