"""The IMAGPose model in half precision on real servers started with --bf16-unet and --fp16-unet.

The same prompt (1 source -> 3 targets, tiny models, 64x128 cells, 2 steps, same seed) runs on the fp32 server
of the session and on a half-precision server; the final latents and decoded images must be finite and within
the README's tolerance of fp32, and the loader must report the CVA and pose guider weights in the UNet's dtype.
On a CPU ComfyUI stores the weights in half precision and computes in float32 (its "manual cast").
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import running_server
from harness import WORKFLOWS_DIR, nodes_of_type, output_images
from test_e2e_workflows import small_prompt

WORKFLOW = WORKFLOWS_DIR / "IMAGPose 1 - one photo to three poses.json"
FLAGS = {"bfloat16": "--bf16-unet", "float16": "--fp16-unet"}
# relative deviation of the final latent from fp32 (max |difference| / max |fp32|), and mean |difference| of the
# decoded images in 8-bit levels; measured values are in the README
TOLERANCE = {"bfloat16": (0.03, 2.0), "float16": (0.005, 0.5)}


def run(server, object_info, prefix):
    prompt = small_prompt(WORKFLOW, object_info, "tiny-imagpose.safetensors", prefix)
    (sampler,) = nodes_of_type(prompt, "KSampler")
    prompt["latent_out"] = {"class_type": "SaveLatent", "inputs": {"samples": [sampler, 0], "filename_prefix": f"latents/{prefix}"}}
    history = server.client.run(prompt, timeout=900)
    (saved,) = history["outputs"]["latent_out"]["latents"]
    latent = load_file(str(server.output_path(saved)))["latent_tensor"]
    (save_id,) = nodes_of_type(prompt, "SaveImage")
    images = np.stack([np.asarray(Image.open(server.output_path(ref)).convert("RGB"), dtype=np.float32)
                       for ref in output_images(history, save_id)])
    return latent, images


@pytest.fixture(scope="module")
def fp32_result(comfy_server, object_info):
    return run(comfy_server, object_info, "half_reference_fp32")


@pytest.fixture(scope="module", params=sorted(FLAGS))
def half_server(request, tmp_path_factory, test_models):
    with running_server(tmp_path_factory, test_models, request.param, extra_args=[FLAGS[request.param]]) as server:
        yield request.param, server


def test_half_precision_is_close_to_fp32(half_server, fp32_result, measurements):
    dtype, server = half_server
    latent, images = run(server, server.client.object_info(), f"half_{dtype}")
    reference_latent, reference_images = fp32_result

    expected = f"IMAGPose model weight dtype: UNet {dtype}, cross-view attention {dtype}, pose guider {dtype}; computed in float32"
    assert expected in server.log_text(), "the loader did not put every IMAGPose weight in the UNet's dtype"
    assert torch.isfinite(latent).all() and np.isfinite(images).all()
    assert images.shape == reference_images.shape and images.std() > 1.0

    latent_deviation = ((latent - reference_latent).abs().max() / reference_latent.abs().max()).item()
    image_deviation = float(np.abs(images - reference_images).mean())
    image_max = float(np.abs(images - reference_images).max())
    measurements[f"--{dtype} UNet vs fp32"] = (f"final latent max |diff| / max |fp32| = {latent_deviation:.2e}; images mean "
                                               f"|diff| {image_deviation:.3f}, max {image_max:.0f} (8-bit levels)")
    latent_tolerance, image_tolerance = TOLERANCE[dtype]
    assert latent_deviation < latent_tolerance, f"{dtype} latent deviates {latent_deviation:.3g} from fp32"
    assert image_deviation < image_tolerance, f"{dtype} images deviate {image_deviation:.3g} levels from fp32"
    assert latent_deviation > 0, f"{dtype} gave exactly the fp32 result: the flag did not reach the weights"
