"""Model files on a real server: each loader lists its own kind, and a file changed on disk is used at once."""
from __future__ import annotations

import os
import shutil
import time

from harness import (
    MAIN_WORKFLOW,
    ComfyHTTPError,
    cached_nodes,
    describe_error,
    image_stats,
    nodes_of_type,
    saved_images,
)
from harness.model_zoo import remove_model_zoo, write_model_zoo
from test_e2e_workflows import small_prompt


def required(comfy_server, node_id):
    return comfy_server.client.get(f"/object_info/{node_id}")[node_id]["input"]["required"]


def test_loader_lists_show_their_kind_only(comfy_server, test_models, object_info):
    expected = write_model_zoo(comfy_server.models_dir, test_models)
    try:
        loader = required(comfy_server, "IMAGPoseModelLoader")
        encoder = required(comfy_server, "IMAGPoseImageEncoderLoader")
        lists = {name: spec[1]["options"] for name, spec in loader.items()}
        lists["image_encoder"] = encoder["image_encoder"][1]["options"]
        for widget, want in expected.items():
            assert want["shown"] <= set(lists[widget]), (widget, sorted(want["shown"] - set(lists[widget])))
            assert not want["left_out"] & set(lists[widget]), (widget, sorted(want["left_out"] & set(lists[widget])))
        # a loader added by hand starts on a file of its kind: a pack file, a DINOv2
        from imagpose import file_kinds

        default = loader["checkpoint"][1]["default"]
        assert default == lists["checkpoint"][0]
        assert file_kinds.contents(comfy_server.models_dir / "imagpose" / default).kind == file_kinds.PACK, default
        default = encoder["image_encoder"][1]["default"]
        path = comfy_server.models_dir / "imagpose" / default
        assert file_kinds.is_dinov2_folder(path) or file_kinds.contents(path).kind == file_kinds.DINOV2, default

        # the folder holding both kinds works in both loaders (the bare files load: tests/test_model_lists.py)
        prompt = small_prompt(MAIN_WORKFLOW, object_info, "zoo-both", "e2e_zoo_both")
        (encoder_id,) = nodes_of_type(prompt, "IMAGPoseImageEncoderLoader")
        prompt[encoder_id]["inputs"]["image_encoder"] = "zoo-both"
        history = comfy_server.client.run(prompt, timeout=900)
        assert len(saved_images(history)) == 3
    finally:
        remove_model_zoo(comfy_server.models_dir)


def pixels(comfy_server, history):
    import numpy as np
    from PIL import Image

    return [np.asarray(Image.open(comfy_server.output_path(ref))) for ref in saved_images(history)]


def test_changed_model_files_are_loaded_again_unchanged_ones_reused(comfy_server, test_models, object_info):
    """A checkpoint replaced under the same name (after training or converting) is used by the next run; an
    unchanged one comes from ComfyUI's cache; a removed one is an error, not a stale model."""
    from imagpose.checkpoints import save_pack
    from imagpose.testing import make_tiny_model

    models = comfy_server.models_dir / "imagpose"
    checkpoint, encoder = models / "e2e-replaced.safetensors", models / "e2e-replaced-dinov2"
    shutil.copy(test_models / "imagpose" / "tiny-imagpose.safetensors", checkpoint)  # copies: changed below
    shutil.copytree(test_models / "imagpose" / "tiny-dinov2", encoder)
    try:
        prompt = small_prompt(MAIN_WORKFLOW, object_info, "e2e-replaced.safetensors", "e2e_replaced")
        (loader_id,) = nodes_of_type(prompt, "IMAGPoseModelLoader")
        (encoder_id,) = nodes_of_type(prompt, "IMAGPoseImageEncoderLoader")
        (sampler_id,) = nodes_of_type(prompt, "KSampler")
        prompt[encoder_id]["inputs"]["image_encoder"] = "e2e-replaced-dinov2"
        first = comfy_server.client.run(prompt, timeout=900)

        save_pack(make_tiny_model(seed=7), checkpoint)  # other weights, same name
        second = comfy_server.client.run(prompt, timeout=900)
        assert loader_id not in cached_nodes(second), "the replaced checkpoint was not loaded again"
        assert encoder_id in cached_nodes(second)
        assert any((a != b).any() for a, b in zip(pixels(comfy_server, first), pixels(comfy_server, second)))

        from safetensors.torch import load_file, save_file

        weights = load_file(str(encoder / "model.safetensors"))  # now the encoder folder's weights change
        time.sleep(0.01)
        save_file({k: v + 0.5 for k, v in weights.items()}, str(encoder / "model.safetensors"))
        third = comfy_server.client.run(prompt, timeout=900)
        assert loader_id in cached_nodes(third), "the unchanged checkpoint was loaded again"
        assert encoder_id not in cached_nodes(third) and sampler_id not in cached_nodes(third)
        assert any((a != b).any() for a, b in zip(pixels(comfy_server, second), pixels(comfy_server, third)))

        os.unlink(checkpoint)
        try:  # the pack checks the file when the prompt is queued (HTTP 400); a run would fail in /history
            prompt_id = comfy_server.client.queue_prompt(prompt)
        except ComfyHTTPError as error:
            assert error.status == 400 and loader_id in error.json()["node_errors"], error.body
            assert "e2e-replaced.safetensors" in error.body, error.body
        else:
            entry = comfy_server.client.wait_for(prompt_id, timeout=600)
            assert entry["status"]["status_str"] == "error", "a removed checkpoint still 'works' from the cache"
            assert "e2e-replaced.safetensors" in describe_error(entry), describe_error(entry)
    finally:
        checkpoint.unlink(missing_ok=True)
        shutil.rmtree(encoder, ignore_errors=True)
    assert image_stats(comfy_server.output_path(saved_images(third)[0]))["std"] > 1.0
