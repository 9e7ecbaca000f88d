"""Every shipped workflow runs end to end on a real ComfyUI server.

The prompt is the shipped file converted through the server's /object_info; only the model file names
(random-weight test models), the cell size (64x128 instead of 512x768), the step count (2) and the output
prefix are changed. The images the workflow loads are real photos and pose pictures put in ComfyUI's input
folder under the names the files use.
"""
from __future__ import annotations

import json
import time
import urllib.parse

import pytest

from harness import (
    PACK_DIR_NAME,
    WORKFLOWS_DIR,
    image_stats,
    load_workflow,
    nodes_of_type,
    output_images,
    set_run_settings,
    ui_to_api,
)

# file stem -> (source photos, target poses, checkpoint to test it with)
EXPECTED = {
    "IMAGPose 1 - one photo to three poses": (1, 3, "tiny-imagpose.safetensors"),
    "IMAGPose 2 - one photo to one pose": (1, 1, "tiny-authors"),
    "IMAGPose 3 - two photos to two poses": (2, 2, "tiny-imagpose.safetensors"),
    "IMAGPose 4 - three photos to one pose": (3, 1, "tiny-authors"),
    "IMAGPose 5 - poses taken from photos of other people": (1, 2, "tiny-imagpose.safetensors"),
    "IMAGPose 6 - one photo through a pose sequence": (1, 12, "tiny-imagpose.safetensors"),
}
CELL_W, CELL_H = 64, 128  # small, not square (a swapped width/height shows)
WORKFLOW_FILES = sorted(WORKFLOWS_DIR.glob("*.json"))


def test_every_workflow_file_is_covered():
    names = {p.stem for p in WORKFLOW_FILES}
    assert names, f"no workflow files in {WORKFLOWS_DIR}"
    assert names == set(EXPECTED), f"workflow files {sorted(names)} vs tests {sorted(EXPECTED)}"


def small_prompt(path, object_info, checkpoint, prefix, saved_before_new_widgets=False):
    prompt = ui_to_api(load_workflow(path), object_info, saved_before_new_widgets)
    return set_run_settings(prompt, checkpoint=checkpoint, image_encoder="tiny-dinov2", vae="tiny-vae.safetensors",
                            width=CELL_W, height=CELL_H, steps=2, prefix=prefix)


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=[p.stem for p in WORKFLOW_FILES])
def test_shipped_settings(path, object_info):
    """The files carry the recommended settings and consistent cell sizes."""
    prompt = ui_to_api(load_workflow(path), object_info)
    (sampler,) = [prompt[n]["inputs"] for n in nodes_of_type(prompt, "KSampler")]
    assert (sampler["steps"], sampler["cfg"], sampler["scheduler"], sampler["denoise"]) == (20, 2.0, "simple", 1.0)
    assert sampler["sampler_name"] in ("ddim", "euler")
    (flc,) = [prompt[n]["inputs"] for n in nodes_of_type(prompt, "IMAGPoseFLCEncode")]
    (ilc,) = [prompt[n]["inputs"] for n in nodes_of_type(prompt, "IMAGPoseILCPack")]
    assert (flc["width"], flc["height"], flc["fit"]) == (ilc["width"], ilc["height"], ilc["fit"]) == (512, 768, "pad")
    notes = [n for n in load_workflow(path)["nodes"] if n["type"] in ("Note", "MarkdownNote")]
    text = "\n".join(n["widgets_values"][0] for n in notes)
    for needle in ("models/imagpose", "models/vae", "dinov2-base", "sd-vae-ft-mse", "cfg 2.0", "steps 20"):
        assert needle in text, f"the Notes of {path.name} do not mention {needle!r}"
    thumbnail = path.with_suffix(".jpg")
    assert thumbnail.is_file(), f"{thumbnail.name} (thumbnail) is missing"
    assert thumbnail.read_bytes()[:3] == b"\xff\xd8\xff", f"{thumbnail.name} is not a JPEG"
    assert thumbnail.stat().st_size < 300_000, f"{thumbnail.name} is too large"


def test_workflow_templates_served(comfy_server):
    templates = comfy_server.client.workflow_templates()
    assert sorted(templates.get(PACK_DIR_NAME, [])) == sorted(p.stem for p in WORKFLOW_FILES), templates
    for path in WORKFLOW_FILES:  # the URLs Browse Templates builds from the names (spaces included)
        base = f"/api/workflow_templates/{PACK_DIR_NAME}/{urllib.parse.quote(path.stem)}"
        served = comfy_server.client.get(base + ".json")
        if isinstance(served, (bytes, bytearray)):
            served = json.loads(served)
        assert served == load_workflow(path)
        assert comfy_server.client.get(base + ".jpg") == path.with_suffix(".jpg").read_bytes()


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=[p.stem for p in WORKFLOW_FILES])
def test_workflow_runs(path, comfy_server, object_info, timings):
    n_sources, n_targets, checkpoint = EXPECTED[path.stem]
    prompt = small_prompt(path, object_info, checkpoint, f"e2e_{path.stem[:10].replace(' ', '_')}")
    started = time.monotonic()
    history = comfy_server.client.run(prompt, timeout=900)
    timings[f"workflow {path.stem} ({checkpoint})"] = time.monotonic() - started

    (save_id,) = nodes_of_type(prompt, "SaveImage")
    images = output_images(history, save_id)
    assert len(images) == n_targets, f"{len(images)} images saved, expected one per target pose ({n_targets})"
    stats = [image_stats(comfy_server.output_path(ref)) for ref in images]
    for i, s in enumerate(stats):
        assert (s["width"], s["height"]) == (CELL_W, CELL_H), f"image {i}: {s}"
        assert s["finite"], f"image {i} has non-finite values"
        assert s["std"] > 1.0, f"image {i} is (nearly) constant: {s}"


def test_workflow_files_match_generator(object_info):
    """workflows/*.json are what scripts/make_workflows.py writes for the live node schemas
    (a node's inputs or outputs changed: run `python scripts/make_workflows.py`, and make_thumbnails.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_workflows", WORKFLOWS_DIR.parent / "scripts" / "make_workflows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built = module.build_all(object_info)
    assert set(built) == {p.stem for p in WORKFLOW_FILES}
    for name, workflow in built.items():
        on_disk = load_workflow(WORKFLOWS_DIR / f"{name}.json")
        assert on_disk == json.loads(json.dumps(workflow)), (
            f"{name}.json is out of date: run `python scripts/make_workflows.py` (and scripts/make_thumbnails.py)")
