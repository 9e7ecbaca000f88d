"""Hostile and careless prompts on a real server: every bad input a named error (node, input, expected, got), every
size refused before it is allocated (the server's peak memory is measured), and the next good prompt succeeds."""
from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness import (
    WORKFLOWS_DIR,
    ComfyHTTPError,
    describe_error,
    nodes_of_type,
    output_images,
    saved_images,
    set_inputs,
)
from test_e2e_api import assert_good_run, one_to_three
from test_e2e_workflows import small_prompt

UNSAFE = ("weights_only` set to `False`", "weights_only=False", "add_safe_globals", "safe_globals(")
MIB = 2**20


def rejected(comfy_server, prompt) -> dict:
    """A prompt ComfyUI refuses when it is queued (HTTP 400): node_errors by node id."""
    with pytest.raises(ComfyHTTPError) as error:
        comfy_server.client.queue_prompt(prompt)
    assert error.value.status == 400, error.value.body
    return error.value.json()["node_errors"]


def validation_message(node_errors: dict, node_id: str, input_name: str) -> str:
    """The message ComfyUI shows against one input of one node."""
    assert node_id in node_errors, node_errors
    details = [e["details"] for e in node_errors[node_id]["errors"] if e["extra_info"].get("input_name") == input_name]
    assert details, node_errors[node_id]
    return details[0]


def failed(comfy_server, prompt) -> dict:
    """A prompt that runs and fails: its execution_error (node_id, exception_message, traceback)."""
    entry = comfy_server.client.wait_for(comfy_server.client.queue_prompt(prompt), timeout=600)
    assert entry["status"]["status_str"] == "error", entry["status"]
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert errors and not saved_images(entry), describe_error(entry)  # ILC Pack's preview may have run
    return errors[0]


def render_prompt(keypoints, width=0, height=0, prefix="e2e_render") -> dict:
    """Pose Render of literal keypoints (ComfyUI passes {"__value__": ...} through as the value) -> SaveImage."""
    return {"1": {"class_type": "IMAGPosePoseRender",
                  "inputs": {"keypoints": {"__value__": keypoints}, "width": width, "height": height,
                             "include_hands": True, "include_face": False}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}}}


def pose(canvas=(96, 128), nose=(40.0, 20.0)) -> dict:
    body = [nose[0], nose[1], 1.0] + [v for i in range(17) for v in (30.0 + 2 * i, 30.0 + 4 * i, 1.0)]
    return {"people": [{"pose_keypoints_2d": body}], "canvas_width": canvas[0], "canvas_height": canvas[1]}


def assert_render_works(comfy_server, prefix):
    """The cheap good prompt: a pose drawn and saved."""
    history = comfy_server.client.run(render_prompt([pose()], prefix=prefix), timeout=300)
    (image,) = output_images(history, "2")
    assert comfy_server.output_path(image).is_file()


def server_memory(comfy_server, field: str) -> int:
    """VmRSS / VmHWM (peak resident memory) of the ComfyUI server process, in bytes."""
    with open(f"/proc/{comfy_server.process.pid}/status") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith(field))


def reset_peak_memory(comfy_server) -> None:
    with open(f"/proc/{comfy_server.process.pid}/clear_refs", "w") as handle:
        handle.write("5")  # VmHWM := VmRSS


# -- sizes ---------------------------------------------------------------------------------------------------------------

def test_sizes_are_refused_before_allocating_and_the_server_stays_small(comfy_server, object_info):
    assert_good_run(comfy_server, object_info, "e2e_sizes_warm")  # models loaded and caches warm: what follows is new
    reset_peak_memory(comfy_server)
    resting = server_memory(comfy_server, "VmRSS")

    prompt = three_sources_at(one_to_three(object_info, "e2e_big_cells"), 2048)  # 3 x 2048 x 2048 px through the VAE
    error = failed(comfy_server, prompt)
    (flc_id,) = nodes_of_type(prompt, "IMAGPoseFLCEncode")
    assert error["node_id"] == flc_id and error["exception_message"].startswith(
        "IMAGPose FLC Encode: input 'width/height': expected cells the VAE can encode, within the memory"), error
    assert needed_gib(error, "got 2048x2048 cells (12.6 megapixels to VAE-encode on cpu)") > 150, error

    error = failed(comfy_server, render_prompt([{"people": [], "canvas_width": 100000, "canvas_height": 100000}]))
    assert error["exception_message"].startswith(  # 28 GiB of pose image if it were drawn
        "IMAGPose Pose Render: input 'keypoints': expected a size of at most 8192x8192 px; got 100000x100000"), error

    message = validation_message(rejected(comfy_server, render_prompt([pose()], 16384, 16384)), "1", "width")
    assert "IMAGPose Pose Render: input 'width': expected a value from 0 to 8192; got 16384" in message, message

    frames = [{"people": [], "canvas_width": 8, "canvas_height": 8}] * 1000  # 750 GiB at 8192x8192
    error = failed(comfy_server, render_prompt(frames, 8192, 8192))
    assert error["exception_message"].startswith(
        "IMAGPose Pose Render: input 'width/height': expected pose images, within the memory available now"), error
    assert needed_gib(error, "got 1000 pose image(s) of 8192x8192") > 700, error

    grown = server_memory(comfy_server, "VmHWM") - resting
    assert grown < 512 * MIB, f"the server's peak memory grew by {grown / MIB:.0f} MiB while refusing"
    assert_good_run(comfy_server, object_info, "e2e_after_sizes")


def needed_gib(error: dict, got: str) -> float:
    """The estimate a memory refusal gives after `got`."""
    match = re.search(re.escape(got) + r", which needs about ([0-9.]+) GiB", error["exception_message"])
    assert match, error["exception_message"]
    return float(match.group(1))


def three_sources_at(prompt: dict, side: int) -> dict:
    """FLC Encode with three source photos, use_all_sources, and cells of side x side on both conditioning nodes."""
    (flc_id,) = nodes_of_type(prompt, "IMAGPoseFLCEncode")
    prompt["910"] = {"class_type": "LoadImage", "inputs": {"image": "imagpose_source_2.png"}}
    prompt["911"] = {"class_type": "LoadImage", "inputs": {"image": "imagpose_source_3.png"}}
    prompt["912"] = {"class_type": "ImageBatch", "inputs": {"image1": prompt[flc_id]["inputs"]["source_images"],
                                                            "image2": ["910", 0]}}
    prompt["913"] = {"class_type": "ImageBatch", "inputs": {"image1": ["912", 0], "image2": ["911", 0]}}
    prompt[flc_id]["inputs"].update(source_images=["913", 0], use_all_sources=True)
    set_inputs(prompt, "IMAGPoseFLCEncode", width=side, height=side)
    set_inputs(prompt, "IMAGPoseILCPack", width=side, height=side)
    return prompt


# -- combos ----------------------------------------------------------------------------------------------------------------

def combo_inputs(object_info, prompt):
    """(node id, class, input) for every COMBO input of every IMAGPose node in the prompt."""
    for node_id, node in sorted(prompt.items()):
        if node["class_type"].startswith("IMAGPose"):
            info = object_info[node["class_type"]]["input"]
            for name, spec in {**info.get("required", {}), **info.get("optional", {})}.items():
                if spec[0] == "COMBO" or isinstance(spec[0], list):
                    yield node_id, node["class_type"], name


def test_every_combo_input_is_checked_by_the_pack(comfy_server, object_info):
    """ComfyUI 0.3.75 checks no V3 combo: 'everything' used to behave as 'all', a bad person as an image problem."""
    checked = set()
    for workflow in sorted(WORKFLOWS_DIR.glob("*.json")):  # together they hold every IMAGPose node
        prompt = small_prompt(workflow, object_info, "tiny-imagpose.safetensors", "e2e_combo")
        # ILC Pack's preview is an output of its own: with it ComfyUI would run the prompt and drop only the
        # branch with the bad combo (no HTTP 400) when the combo is on Grid Unpack
        for node_id in nodes_of_type(prompt, "PreviewImage"):
            del prompt[node_id]
        for node_id, class_type, name in combo_inputs(object_info, prompt):
            if (class_type, name) in checked:
                continue
            bad = json.loads(json.dumps(prompt))
            bad[node_id]["inputs"][name] = "everything"
            message = validation_message(rejected(comfy_server, bad), node_id, name)
            display = object_info[class_type]["display_name"]
            assert f"{display}: input '{name}': expected " in message and "got 'everything'" in message, message
            checked.add((class_type, name))
    assert {("IMAGPoseGridUnpack", "which"), ("IMAGPosePoseExtract", "person"), ("IMAGPosePoseExtract", "on_no_person"),
            ("IMAGPosePoseRetarget", "anchor"), ("IMAGPoseModelLoader", "checkpoint")} <= checked, sorted(checked)
    assert len(checked) >= 13, sorted(checked)  # 13 when written; nodes may gain combos
    assert_render_works(comfy_server, "e2e_after_combos")


# -- raw library errors ----------------------------------------------------------------------------------------------

class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_library_errors_reach_the_user_named_and_safe(comfy_server, object_info, tmp_path):
    models = comfy_server.models_dir / "imagpose"
    log_start = len(comfy_server.log_text())

    corrupt = models / "corrupt-metadata-e2e.safetensors"
    save_file(load_file(str(models / "tiny-imagpose.safetensors")), str(corrupt),
              metadata={"format": "imagpose-pack", "config": "{not json"})
    prompt = one_to_three(object_info, "e2e_corrupt")
    (loader_id,) = set_inputs(prompt, "IMAGPoseModelLoader", checkpoint=corrupt.name)
    error = failed(comfy_server, prompt)
    assert error["node_id"] == loader_id and error["exception_message"].startswith(
        "IMAGPose Model Loader: input 'checkpoint': expected "), error
    assert "corrupt-metadata-e2e.safetensors: its metadata 'config' is not the JSON this pack writes" \
        in error["exception_message"], error

    set_inputs(prompt, "IMAGPoseModelLoader", checkpoint="x" * 5000 + ".safetensors")
    message = validation_message(rejected(comfy_server, prompt), loader_id, "checkpoint")
    assert "input 'checkpoint'" in message and "a name of 5012 characters" in message, message
    assert len(message) < 1200 and str(models) not in message, message

    evil = models / "evil-dinov2-e2e"
    evil.mkdir()
    shutil.copy(models / "tiny-dinov2" / "config.json", evil / "config.json")
    torch.save({"embeddings.cls_token": RunsCode(tmp_path / "pwned")}, evil / "pytorch_model.bin")
    prompt = one_to_three(object_info, "e2e_evil")
    (encoder_id,) = set_inputs(prompt, "IMAGPoseImageEncoderLoader", image_encoder=evil.name)
    error = failed(comfy_server, prompt)
    shown = error["exception_message"] + "".join(error["traceback"])
    assert error["node_id"] == encoder_id and error["exception_message"].startswith(
        "IMAGPose Image Encoder Loader: input 'image_encoder': expected a DINOv2 model"), error
    assert "could run code" in shown and not any(u in shown for u in UNSAFE), shown
    assert not (tmp_path / "pwned").exists()

    error = failed(comfy_server, render_prompt([pose(nose=(1e30, 1e30))]))
    assert error["exception_message"].startswith("IMAGPose Pose Render: input 'keypoints': expected keypoints inside "
                                                 "or near their canvas; got a keypoint at (1e+30, 1e+30)"), error

    log = comfy_server.log_text()[log_start:]
    assert not any(u in log for u in UNSAFE), "the server log shows torch's advice to load a pickle unsafely"
    corrupt.unlink()
    shutil.rmtree(evil)
    assert_render_works(comfy_server, "e2e_after_library_errors")


# -- IMAGPose conditioning on another model -----------------------------------------------------------------------------

def test_plain_sd15_model_with_imagpose_conditioning_says_so(comfy_server, object_info):
    from harness.plain_model import write_plain_sd15_unet

    unet = comfy_server.models_dir / "diffusion_models" / "plain-sd15-e2e.safetensors"
    write_plain_sd15_unet(unet)
    prompt = one_to_three(object_info, "e2e_plain_model")
    prompt["920"] = {"class_type": "UNETLoader", "inputs": {"unet_name": unet.name, "weight_dtype": "default"}}
    (sampler_id,) = set_inputs(prompt, "KSampler", model=["920", 0])
    error = failed(comfy_server, prompt)
    assert error["node_id"] == sampler_id and error["exception_message"].startswith(
        "IMAGPose conditioning (from IMAGPose ILC Pack) reached a model that is not an IMAGPose model. Connect the "
        "sampler's model to the 'model' output of IMAGPose Model Loader"), error
    unet.unlink()
    assert_good_run(comfy_server, object_info, "e2e_after_plain_model")
