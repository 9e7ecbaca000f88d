"""Pose sequences on a real ComfyUI server: N target poses in, N images out (in chunks through ComfyUI's list
outputs), bad sequences named, and workflows saved before the sequence support still running."""
from __future__ import annotations

import pytest
from PIL import Image

from harness import WORKFLOWS_DIR, describe_error, image_stats, nodes_of_type, output_images
from test_e2e_api import assert_good_run
from test_e2e_workflows import CELL_H, CELL_W, small_prompt

SEQUENCE = WORKFLOWS_DIR / "IMAGPose 6 - one photo through a pose sequence.json"
OLD_WORKFLOWS = sorted((WORKFLOWS_DIR.parent / "tests" / "e2e" / "old_workflows").glob("*.json"))


def sequence_prompt(object_info, prefix):
    return small_prompt(SEQUENCE, object_info, "tiny-imagpose.safetensors", prefix)


def double_the_poses(prompt):
    """The 12-frame pose file batched with itself: 24 target poses."""
    (ilc_id,) = nodes_of_type(prompt, "IMAGPoseILCPack")
    poses = prompt[ilc_id]["inputs"]["target_poses"]
    prompt["900"] = {"class_type": "ImageBatch", "inputs": {"image1": poses, "image2": poses}}
    prompt[ilc_id]["inputs"]["target_poses"] = ["900", 0]
    return ilc_id


def saved(comfy_server, history, prompt, class_type):
    (node_id,) = nodes_of_type(prompt, class_type)
    return [comfy_server.output_path(ref) for ref in output_images(history, node_id)]


def test_24_poses_in_chunks_give_24_images_and_an_animation(comfy_server, object_info, timings):
    import time

    prompt = sequence_prompt(object_info, "e2e_sequence_24")
    ilc_id = double_the_poses(prompt)
    prompt[ilc_id]["inputs"].update(batching="chunks", grids_per_batch=3)  # 8 grids: chunks of 3, 3, 2
    (flc_id,) = nodes_of_type(prompt, "IMAGPoseFLCEncode")
    for node_id in (ilc_id, flc_id):  # square cells: 8 grids cost as little VAE time as 4 of the usual size
        prompt[node_id]["inputs"].update(width=CELL_W, height=CELL_W)
    started = time.monotonic()
    history = comfy_server.client.run(prompt, timeout=900)
    timings["sequence of 24 poses, chunks of 3 grids"] = time.monotonic() - started
    frames = saved(comfy_server, history, prompt, "SaveImage")
    assert len(frames) == 24, f"{len(frames)} images saved for 24 target poses"
    for path in frames:
        stats = image_stats(path)
        assert (stats["width"], stats["height"]) == (CELL_W, CELL_W) and stats["finite"] and stats["std"] > 1.0, stats
    (animation,) = saved(comfy_server, history, prompt, "SaveAnimatedWEBP")
    with Image.open(animation) as webp:
        assert webp.n_frames == 24 and webp.size == (CELL_W, CELL_W)
    previews = saved(comfy_server, history, prompt, "PreviewImage")
    assert len(previews) == 8, "one preview per grid"
    assert (image_stats(previews[0])["width"], image_stats(previews[0])["height"]) == (4 * CELL_W, 2 * CELL_W)


def test_four_targets_from_one_source_are_two_grids(comfy_server, object_info):
    """Formerly an error (more than 3 targets per grid): now a second grid."""
    prompt = small_prompt(WORKFLOWS_DIR / "IMAGPose 1 - one photo to three poses.json", object_info,
                          "tiny-imagpose.safetensors", "e2e_four_targets")
    (ilc_id,) = nodes_of_type(prompt, "IMAGPoseILCPack")
    prompt["900"] = {"class_type": "LoadImage", "inputs": {"image": "imagpose_pose_4.png"}}
    prompt["901"] = {"class_type": "ImageBatch",
                     "inputs": {"image1": prompt[ilc_id]["inputs"]["target_poses"], "image2": ["900", 0]}}
    prompt[ilc_id]["inputs"]["target_poses"] = ["901", 0]
    history = comfy_server.client.run(prompt, timeout=900)
    assert len(saved(comfy_server, history, prompt, "SaveImage")) == 4
    assert len(saved(comfy_server, history, prompt, "PreviewImage")) == 2


def no_target_poses(prompt, ilc_id):
    del prompt[ilc_id]["inputs"]["target_poses"]


def more_than_one_batch_allows(prompt, ilc_id):
    prompt[ilc_id]["inputs"].update(batching="one_batch", grids_per_batch=2)


def a_frame_without_person(prompt, ilc_id):
    prompt["910"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 96, "batch_size": 1, "color": 0}}
    prompt["911"] = {"class_type": "IMAGPosePoseExtract",
                     "inputs": {"images": ["910", 0], "detector": "mediapipe", "include_hands": True,
                                "include_face": False, "person": "largest", "person_index": 0, "on_no_person": "empty"}}
    del prompt[ilc_id]["inputs"]["target_poses"]
    prompt[ilc_id]["inputs"]["target_keypoints"] = ["911", 1]


BAD_SEQUENCES = {
    "0 target poses": (no_target_poses, ["input 'target_poses'", "got nothing connected"]),
    "more than one batch allows": (more_than_one_batch_allows, [
        "input 'target_poses'", "at most 6 target poses for one batch", "chunks",
        "got 12 target poses, which need 4 grids"]),
    "keypoints without a person": (a_frame_without_person, [
        "input 'target_keypoints'", "a person in every frame", "no person in frame(s) 0"]),
}


def test_bad_sequences_are_named_then_server_still_works(comfy_server, object_info):
    pytest.importorskip("mediapipe", reason="the MediaPipe pose backend is a test requirement")
    for case, (break_it, words) in BAD_SEQUENCES.items():
        prompt = sequence_prompt(object_info, "e2e_bad_sequence")
        (ilc_id,) = nodes_of_type(prompt, "IMAGPoseILCPack")
        break_it(prompt, ilc_id)
        entry = comfy_server.client.wait_for(comfy_server.client.queue_prompt(prompt), timeout=600)
        assert entry["status"]["status_str"] == "error", (case, entry["status"])
        errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
        assert errors and errors[0]["node_id"] == ilc_id, (case, describe_error(entry))
        message = errors[0]["exception_message"]
        assert message.startswith("IMAGPose ILC Pack: "), (case, message)
        for word in words:
            assert word in message, (case, message)
        assert not saved(comfy_server, entry, prompt, "SaveImage"), case
    assert_good_run(comfy_server, object_info, "e2e_after_bad_sequence")


@pytest.mark.parametrize("path", OLD_WORKFLOWS, ids=[p.stem for p in OLD_WORKFLOWS])
def test_workflows_saved_before_sequences_still_run(path, comfy_server, object_info):
    """Workflow files as shipped before any-number-of-targets (no batching widgets, sources through Batch Images)
    load as the frontend loads them (new widgets at their defaults) and give the same number of images."""
    prompt = small_prompt(path, object_info, "tiny-imagpose.safetensors", f"e2e_old_{path.stem}",
                          saved_before_new_widgets=True)
    (ilc_id,) = nodes_of_type(prompt, "IMAGPoseILCPack")
    assert "batching" not in prompt[ilc_id]["inputs"] and "target_poses" in prompt[ilc_id]["inputs"]
    history = comfy_server.client.run(prompt, timeout=900)
    n_targets = int(path.stem.split("_to_")[1].split("_")[0])
    assert len(saved(comfy_server, history, prompt, "SaveImage")) == n_targets
