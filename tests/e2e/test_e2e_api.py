"""What the server shows of the pack (/object_info) and how it handles bad prompts."""
from __future__ import annotations

import pytest

from harness import (
    MAIN_WORKFLOW,
    ComfyHTTPError,
    describe_error,
    image_stats,
    load_workflow,
    nodes_of_type,
    output_images,
)
from test_e2e_workflows import CELL_H, CELL_W, small_prompt

CORE_NODES = {
    # node id -> expected output names (the public API, in order)
    "IMAGPoseModelLoader": ["model", "imagpose"],
    "IMAGPoseImageEncoderLoader": ["image_encoder"],
    "IMAGPoseFLCEncode": ["positive", "negative"],
    "IMAGPoseILCPack": ["positive", "negative", "latent", "layout", "preview"],
    "IMAGPoseGridUnpack": ["images"],
    "IMAGPoseTrailingSigmas": ["sigmas"],
}
POSE_NODES = {"IMAGPosePoseExtract", "IMAGPosePoseRender", "IMAGPosePoseRetarget"}


def pack_nodes(object_info):
    return {name: info for name, info in object_info.items() if name.startswith("IMAGPose")}


def test_pack_loaded_without_import_errors(comfy_server, object_info):
    log = comfy_server.log_text()
    failed = [line for line in log.splitlines() if "IMPORT FAILED" in line and "comfyui-imagpose" in line]
    assert not failed, failed
    assert "IMAGPose: pose nodes unavailable" not in log
    assert set(CORE_NODES) | POSE_NODES <= set(pack_nodes(object_info)), sorted(pack_nodes(object_info))


def test_nodes_are_documented(object_info):
    for name, info in pack_nodes(object_info).items():
        assert info["category"].startswith("IMAGPose"), (name, info["category"])
        assert info["display_name"].startswith("IMAGPose "), (name, info["display_name"])
        assert info.get("description"), f"{name} has no description"
        assert info["python_module"].startswith("custom_nodes"), (name, info["python_module"])
        for section in ("required", "optional"):
            for input_name, spec in info["input"].get(section, {}).items():
                options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                assert options.get("tooltip"), f"{name}.{input_name} has no tooltip"
        tooltips = info.get("output_tooltips") or []
        assert len(tooltips) == len(info["output"]) and all(tooltips), f"{name}: output tooltips {tooltips}"


@pytest.mark.parametrize("name", sorted(CORE_NODES))
def test_core_node_outputs_are_named(name, object_info):
    assert object_info[name]["output_name"] == CORE_NODES[name]


def test_pose_node_outputs_are_named(object_info):
    for name in POSE_NODES:
        names = object_info[name]["output_name"]
        assert len(set(names)) == len(names) and all(n.islower() for n in names), (name, names)


def test_model_combos_list_test_models(object_info):
    loader = object_info["IMAGPoseModelLoader"]["input"]["required"]
    choices = loader["checkpoint"][1].get("options", loader["checkpoint"][0])
    assert {"tiny-imagpose.safetensors", "tiny-authors"} <= set(choices), choices
    enc = object_info["IMAGPoseImageEncoderLoader"]["input"]["required"]["image_encoder"]
    assert "tiny-dinov2" in enc[1].get("options", enc[0])


def one_to_three(object_info, prefix):
    return small_prompt(MAIN_WORKFLOW, object_info,
                        "tiny-imagpose.safetensors", prefix)


def assert_good_run(comfy_server, object_info, prefix):
    prompt = one_to_three(object_info, prefix)
    history = comfy_server.client.run(prompt, timeout=900)
    (save_id,) = nodes_of_type(prompt, "SaveImage")
    images = output_images(history, save_id)
    assert len(images) == 3
    for ref in images:
        stats = image_stats(comfy_server.output_path(ref))
        assert (stats["width"], stats["height"]) == (CELL_W, CELL_H) and stats["std"] > 1.0


def test_unknown_checkpoint_name_is_an_error_then_server_still_works(comfy_server, object_info):
    """A checkpoint name that is not in models/imagpose: rejected at validation (HTTP 400) or failed in
    /history, in both cases naming the loader and the file."""
    prompt = one_to_three(object_info, "e2e_unknown_ckpt")
    (loader_id,) = nodes_of_type(prompt, "IMAGPoseModelLoader")
    prompt[loader_id]["inputs"]["checkpoint"] = "no-such-model.safetensors"
    try:
        prompt_id = comfy_server.client.queue_prompt(prompt)
    except ComfyHTTPError as error:
        assert error.status == 400
        assert loader_id in error.json().get("node_errors", {}), error.body
        assert "no-such-model.safetensors" in error.body
    else:
        entry = comfy_server.client.wait_for(prompt_id, timeout=600)
        assert entry["status"]["status_str"] == "error", entry["status"]
        errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
        assert errors and errors[0]["node_id"] == loader_id, describe_error(entry)
        assert "no-such-model.safetensors" in errors[0]["exception_message"], errors[0]["exception_message"]
        assert not output_images(entry)
    assert_good_run(comfy_server, object_info, "e2e_after_unknown_ckpt")


def test_broken_checkpoint_file_is_an_error_then_server_still_works(comfy_server, object_info):
    """A checkpoint file that is listed but unreadable fails in /history with the loader named."""
    broken = comfy_server.models_dir / "imagpose" / "broken-e2e.safetensors"
    broken.write_bytes(b"this is not a safetensors file")
    prompt = one_to_three(object_info, "e2e_broken_ckpt")
    (loader_id,) = nodes_of_type(prompt, "IMAGPoseModelLoader")
    prompt[loader_id]["inputs"]["checkpoint"] = "broken-e2e.safetensors"
    prompt_id = comfy_server.client.queue_prompt(prompt)
    entry = comfy_server.client.wait_for(prompt_id, timeout=600)
    assert entry["status"]["status_str"] == "error", entry["status"]
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert errors and errors[0]["node_id"] == loader_id, describe_error(entry)
    assert "broken-e2e.safetensors" in errors[0]["exception_message"], errors[0]["exception_message"]
    assert_good_run(comfy_server, object_info, "e2e_after_broken")


def test_workflow_files_are_ui_format():
    from harness import WORKFLOWS_DIR

    for path in sorted(WORKFLOWS_DIR.glob("*.json")):
        workflow = load_workflow(path)
        assert workflow.get("version") == 0.4, path.name
        ids = [n["id"] for n in workflow["nodes"]]
        assert len(ids) == len(set(ids)) and workflow["last_node_id"] == max(ids), path.name
        assert workflow["last_link_id"] == len(workflow["links"]), path.name
        for link in workflow["links"]:
            link_id, src, src_slot, dst, dst_slot, _ = link
            src_node = next(n for n in workflow["nodes"] if n["id"] == src)
            dst_node = next(n for n in workflow["nodes"] if n["id"] == dst)
            assert link_id in src_node["outputs"][src_slot]["links"], (path.name, link)
            assert dst_node["inputs"][dst_slot]["link"] == link_id, (path.name, link)
