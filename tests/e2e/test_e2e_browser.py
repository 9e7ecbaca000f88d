"""Every shipped workflow in ComfyUI's real frontend (headless Debian chromium): opened from the template URL,
nothing missing, nothing red, the file's widget values, no overlaps; Run pressed; the images appear.

The server is the session's; the test models are linked in under the names the workflows use, so the files are
opened unchanged. Only what a user would type is changed in the UI: cell size 64x128, 2 steps, the output prefix.
Screenshots go to out/browser-e2e/ (or $IMAGPOSE_ARTIFACTS_DIR/browser-e2e/), kept by CI as test artifacts.
A missing chromium fails these tests (scripts/provision.sh --browser installs it); they are never skipped.
"""
from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import pytest

from harness import PACK_DIR_NAME, REPO_ROOT, load_workflow
from harness.browser import Browser, ChromiumMissing, Frontend, write_frontend_settings
from test_e2e_workflows import CELL_H, CELL_W, EXPECTED, WORKFLOW_FILES

ARTIFACTS = Path(os.environ.get("IMAGPOSE_ARTIFACTS_DIR", REPO_ROOT / "out")) / "browser-e2e"
SHIPPED_NAMES = {  # model file names the workflows use -> test model
    "imagpose/imagpose.safetensors": "imagpose/tiny-imagpose.safetensors",
    "imagpose/dinov2-base": "imagpose/tiny-dinov2",
    "vae/vae-ft-mse-840000-ema-pruned.safetensors": "vae/tiny-vae.safetensors",
}


def link_shipped_names(models_dir: Path, test_models: Path) -> None:
    for name, source in SHIPPED_NAMES.items():
        target, source = models_dir / name, test_models / source
        if target.exists():
            continue
        if source.is_dir():
            target.mkdir(parents=True)
            for file in source.iterdir():
                os.link(file, target / file.name)
        else:
            os.link(source, target)


@pytest.fixture(scope="module")
def frontend(comfy_server, test_models, timings):
    try:
        browser = Browser(width=1600, height=1000)
    except ChromiumMissing as error:
        pytest.fail(str(error), pytrace=False)
    link_shipped_names(comfy_server.models_dir, test_models)
    write_frontend_settings(comfy_server.base_dir)
    started = time.monotonic()
    with browser:
        ui = Frontend(browser, comfy_server.client.base_url)
        ui.open()
        timings["browser: chromium and frontend start"] = time.monotonic() - started
        yield ui


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=[p.stem for p in WORKFLOW_FILES])
def test_workflow_in_the_browser(path, frontend, comfy_server, object_info, timings):
    workflow = load_workflow(path)
    frontend.open_template(PACK_DIR_NAME, path.stem, len(workflow["nodes"]))
    problems = frontend.problems(workflow, object_info)
    assert not problems, "the frontend shows the workflow differently from the file:\n" + "\n".join(problems)

    number = path.stem.split()[1]
    nodes = {n["type"]: n["id"] for n in workflow["nodes"]}
    for node in workflow["nodes"]:
        if node["type"] in ("IMAGPoseFLCEncode", "IMAGPoseILCPack"):
            frontend.set_widgets(node["id"], width=CELL_W, height=CELL_H)
    frontend.set_widgets(nodes["KSampler"], steps=2)
    frontend.set_widgets(nodes["SaveImage"], filename_prefix=f"browser/workflow_{number}")
    started = time.monotonic()
    frontend.queue()
    n_targets = EXPECTED[path.stem][1]
    try:
        images = frontend.wait_for_images(nodes["SaveImage"], n_targets, timeout=900)
        timings[f"browser: {path.stem} (Run to images shown)"] = time.monotonic() - started
        shown = frontend.queue_sidebar_images()
    finally:  # the screenshot shows what went wrong, too
        frontend.fit_view()
        shot = frontend.screenshot(ARTIFACTS / f"{path.stem}.png")
    assert len(images) == n_targets, images
    assert all((i["width"], i["height"]) == (CELL_W, CELL_H) for i in images), images
    assert all(f"workflow_{number}_" in i["src"] for i in images), images
    for image in images:  # the files the UI shows are the server's outputs
        name = image["src"].split("filename=")[1].split("&")[0]
        assert (comfy_server.output_dir / "browser" / name).is_file(), name
    assert any(f"workflow_{number}_" in src for src in shown), f"the queue sidebar shows {shown}"
    red = [(n["id"], n["type"]) for n in frontend.graph_state() if n["has_errors"]]
    assert not red, f"nodes marked with errors after the run: {red}"
    assert shot.stat().st_size > 10_000


def test_browser_check_fails_on_a_broken_workflow(frontend, object_info):
    """A node whose inputs changed (one widget value too few) and a node type that no longer exists are both
    reported: the test above would fail on them."""
    workflow = copy.deepcopy(load_workflow(WORKFLOW_FILES[0]))
    ilc = next(n for n in workflow["nodes"] if n["type"] == "IMAGPoseILCPack")
    ilc["widgets_values"] = ilc["widgets_values"][1:]  # as if a widget had been added in front
    unpack = next(n for n in workflow["nodes"] if n["type"] == "IMAGPoseGridUnpack")
    unpack["type"] = "IMAGPoseGridUnpackRemoved"
    frontend.load_workflow(workflow, "broken copy")
    problems = "\n".join(frontend.problems(workflow, object_info))
    assert "does not know the node type 'IMAGPoseGridUnpackRemoved'" in problems, problems
    assert f"node {ilc['id']} (IMAGPoseILCPack): the frontend holds widgets_values" in problems, problems
