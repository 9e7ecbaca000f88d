"""On a real server: a wrong image encoder is refused by the loader with what it is, and the server keeps serving;
a good one is a model ComfyUI loads and unloads itself."""
from __future__ import annotations

from harness import describe_error, nodes_of_type, output_images
from harness.encoders import write_wrong_encoders
from test_e2e_api import assert_good_run, one_to_three


def test_wrong_image_encoders_are_refused_then_server_still_works(comfy_server, object_info, test_models):
    cases = write_wrong_encoders(comfy_server.models_dir / "clip_vision", test_models / "imagpose" / "tiny-dinov2")
    for case, (path, message) in cases.items():
        prompt = one_to_three(object_info, f"e2e_encoder_{case}")
        (loader_id,) = nodes_of_type(prompt, "IMAGPoseImageEncoderLoader")
        prompt[loader_id]["inputs"]["image_encoder"] = path.name
        entry = comfy_server.client.wait_for(comfy_server.client.queue_prompt(prompt), timeout=600)
        assert entry["status"]["status_str"] == "error", (case, entry["status"])
        errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
        assert errors and errors[0]["node_id"] == loader_id, describe_error(entry)
        shown = errors[0]["exception_message"]
        assert shown.startswith("IMAGPose Image Encoder Loader: input 'image_encoder': expected a DINOv2"), shown
        assert f"got '{path.name}': " in shown and message in shown, (case, shown)
        assert "weights_only=False" not in shown and not output_images(entry)
    assert_good_run(comfy_server, object_info, "e2e_after_wrong_encoders")
    # the good run's DINOv2 went through ComfyUI's model management (its loader logs every model it loads)
    assert "Requested to load DINOv2Encoder" in comfy_server.log_text()
