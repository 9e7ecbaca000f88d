"""The shipped workflows as a user meets them in Browse Templates: titled, the main use first, nothing overlapping.

ComfyUI 0.3.75's frontend (1.32) titles a custom node pack's templates with their file names and lists them in the
order the server sends (the folder's order) or, when sorted, by that title: the files are named as titles and
numbered with the main use (1 source -> 3 targets) first.
"""
import copy
import re

import pytest

from harness import MAIN_WORKFLOW, WORKFLOWS_DIR, load_workflow
from harness.workflow import node_rectangles, overlapping

WORKFLOW_FILES = sorted(WORKFLOWS_DIR.glob("*.json"))


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=[p.stem for p in WORKFLOW_FILES])
def test_no_two_nodes_overlap_title_bars_included(path):
    pairs = overlapping(node_rectangles(load_workflow(path)))
    assert not pairs, f"{path.name}: overlapping nodes (id, [x, y, w, h] with the 30 px title bar): {pairs}"


def test_overlap_check_sees_a_node_on_another_title_bar():
    workflow = copy.deepcopy(load_workflow(MAIN_WORKFLOW))
    sampler = next(n for n in workflow["nodes"] if n["type"] == "KSampler")
    decode = next(n for n in workflow["nodes"] if n["type"] == "VAEDecode")
    decode["pos"] = [sampler["pos"][0], sampler["pos"][1] + sampler["size"][1] + 10]  # its title under the sampler
    assert [(a[0], b[0]) for a, b in overlapping(node_rectangles(workflow))] == [(sampler["id"], decode["id"])]


def test_names_are_numbered_titles_with_the_main_use_first():
    names = [p.stem for p in WORKFLOW_FILES]
    assert names and all(re.fullmatch(r"IMAGPose \d+ - [a-z][a-z0-9 ,()-]+", n) for n in names), names
    numbers = [int(n.split()[1]) for n in names]
    assert numbers == list(range(1, len(names) + 1)), names
    assert sorted(names, key=str.casefold)[0] == MAIN_WORKFLOW.stem == names[0]
    main = load_workflow(MAIN_WORKFLOW)
    titles = [n.get("title", "") for n in main["nodes"] if n["type"] == "LoadImage"]
    assert sum(t.startswith("Source photo") for t in titles) == 1 and sum(t.startswith("Target pose") for t in titles) == 3
