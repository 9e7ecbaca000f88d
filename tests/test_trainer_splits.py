"""DeepFashion's standard split and pair lists, and test people kept out of training groups (issue 13, item 2).

Runs `python -m trainer.data build-groups` on a tiny fake DeepFashion tree (the nested img_highres layout, train.lst,
test.lst, a pairs CSV) the way a researcher would.
"""
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from trainer import data as data_lib
from trainer import deepfashion
from trainer.data import DataError, group_key, load_groups, load_rgb
from trainer.testing import write_deepfashion

NESTED = "img_highres/MEN/Shirts_Polos/id_00001802/02_4_full.jpg"
STANDARD = "fashionMENShirts_Polosid0000180202_4full"


def test_standard_names_match_the_published_lists():
    assert deepfashion.standard_stem(NESTED) == STANDARD
    assert deepfashion.standard_stem(f"/data/x/{NESTED}") == STANDARD
    assert deepfashion.standard_stem(STANDARD + ".jpg") == STANDARD
    assert deepfashion.standard_stem("WOMEN-Dresses-id_00000001-01_1_front.png") == "WOMEN-Dresses-id_00000001-01_1_front"
    assert deepfashion.person_of(NESTED) == deepfashion.person_of(STANDARD + ".jpg") == "00001802"
    assert deepfashion.person_of("WOMEN-Dresses-id_00000001-01_1_front.png") is None
    # flat standard names group by person + outfit; the underscore inside the category must not split them
    assert group_key(STANDARD + ".jpg") == "fashionMENShirts_Polosid0000180202"
    assert group_key("fashionMENShirts_Polosid0000180203_1front.jpg") != group_key(STANDARD + ".jpg")
    assert group_key("WOMEN-Dresses-id_00000001-01_1_front.jpg") == "WOMEN-Dresses-id_00000001-01"


def test_pair_lists_in_three_formats(tmp_path):
    a, b, c = (f"fashionWOMENDressesid0000000301_{v}.jpg" for v in ("1front", "2side", "3back"))
    (tmp_path / "fasion-resize-pairs-test.csv").write_text(f"from,to\n{a},{b}\n{c},{a}\n")
    (tmp_path / "test_pairs.txt").write_text(f"{b},{a}\n{a},{c},{b}\n")  # target, source[, more sources]
    (tmp_path / "test_data.json").write_text(json.dumps([{"source_image": a, "target_image": b},
                                                         {"source_image": c, "target_image": a}]))
    stem = lambda name: Path(name).stem  # noqa: E731
    expected = [(stem(a), stem(b)), (stem(c), stem(a))]
    assert deepfashion.read_pairs(tmp_path / "fasion-resize-pairs-test.csv") == expected
    assert deepfashion.read_pairs(tmp_path / "test_data.json") == expected
    assert deepfashion.read_pairs(tmp_path / "test_pairs.txt") == [(stem(a), stem(b)), (stem(c), stem(a))]
    (tmp_path / "bad.csv").write_text(f"from,to\n{a}\n")
    with pytest.raises(deepfashion.SplitError, match="bad.csv: line 2"):
        deepfashion.read_pairs(tmp_path / "bad.csv")


@pytest.fixture
def tree(tmp_path):
    return write_deepfashion(tmp_path / "deepfashion")


def build(tree: Path, *options: str) -> int:
    return data_lib.main(["build-groups", str(tree / "img_highres"), "--out", str(tree / "groups.json"), *options])


def people_in(groups_file: Path) -> set[str]:
    return {deepfashion.person_of(p) for group in json.loads(groups_file.read_text()) for p in group}


def test_build_groups_without_a_split_refuses_deepfashion_photos(tree, capsys):
    assert build(tree) == 1
    err = capsys.readouterr().err
    assert "no test list" in err and "--test-list" in err and "img_highres" in err and ".jpg" in err
    assert not (tree / "groups.json").exists()


def test_build_groups_with_the_standard_split_keeps_test_people_out(tree, capsys):
    assert build(tree, "--train-list", str(tree / "train.lst"), "--test-list", str(tree / "test.lst")) == 0
    report = json.loads(capsys.readouterr().out)
    test_people = {deepfashion.person_of(n) for n in deepfashion.read_split(tree / "test.lst")}
    assert people_in(tree / "groups.json") == {"00000001", "00000002"} and not people_in(tree / "groups.json") & test_people
    assert report["not_in_train_list"] == 7 and report["groups"] == 2
    # the group file loads and its paths point at the nested photos
    assert all(p.is_file() for group in load_groups(tree / "groups.json") for p in group)


def test_a_train_list_naming_test_people_is_refused_naming_them(tree, capsys):
    leaked = deepfashion.read_split(tree / "test.lst")[0]
    (tree / "train.lst").write_text((tree / "train.lst").read_text() + leaked + ".jpg\n")
    lists = ["--train-list", str(tree / "train.lst"), "--test-list", str(tree / "test.lst")]
    assert build(tree, *lists) == 1
    err = capsys.readouterr().err
    assert "show people of the test list" in err and "id_00000003/01_1_front.jpg" in err
    assert build(tree, *lists, "--test-identities", "drop") == 0
    assert json.loads(capsys.readouterr().out)["test_identity_dropped"] == 1
    assert "00000003" not in people_in(tree / "groups.json")
    assert build(tree, *lists, "--test-identities", "allow") == 0  # explicit: kept (its group has 1 photo: dropped)
    assert json.loads(capsys.readouterr().out)["test_identity_dropped"] == 0


def test_only_a_test_list_keeps_its_people_out(tree, capsys):
    assert build(tree, "--test-list", str(tree / "test.lst")) == 1  # they are in the folder: refused, named
    assert "id_00000004" in capsys.readouterr().err
    assert build(tree, "--test-list", str(tree / "test.lst"), "--test-identities", "drop") == 0
    assert people_in(tree / "groups.json") == {"00000001", "00000002"}


def test_empty_or_broken_group_files_and_photos_are_named(tmp_path):
    for text in ("", "[]", "{not json"):
        path = tmp_path / "groups.json"
        path.write_text(text)
        with pytest.raises(DataError, match=str(path)):
            load_groups(path)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataError, match="broken.jpg could not be read"):
        load_rgb(broken)
    truncated = tmp_path / "truncated.png"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(DataError, match="truncated.png could not be read"):
        load_rgb(truncated)
    Image.new("RGB", (8, 6)).save(tmp_path / "ok.png")
    assert load_rgb(tmp_path / "ok.png").shape == torch.Size([3, 6, 8])
