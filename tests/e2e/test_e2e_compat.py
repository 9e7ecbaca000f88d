"""ComfyUI's stock MODEL and conditioning nodes on the IMAGPose model, on a real server (the README's matrix).

Every prompt is the shipped 1 source -> 3 targets workflow (tiny models, 64x128 cells, 2 steps) with one stock
node put between the loader and the sampler; its final latent is saved with SaveLatent and compared with the
run without the node. Each run also passes the pack's own check that all cross-view attention (CVA) layers ran
in every UNet call; the last test unloads the models and checks that every inserted CVA layer was removed.

The UNet here has SD1.5's channel ratios (64, 128, 256, 256 instead of the usual 32, 64, 64, 64): ComfyUI builds
SD1.5 ControlNets with 64-channel attention heads, and FreeU acts on the blocks of 2x and 4x the base width. The server runs with --verbose DEBUG (the pack logs CVA insertion and removal at
debug level) and --use-pytorch-cross-attention (ComfyUI's CPU default, sub-quadratic attention, asks psutil
for free memory inside the attention, which breaks TorchDynamo's graphs).
"""
from __future__ import annotations

import os
import re
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import running_server
from harness import WORKFLOWS_DIR, nodes_of_type
from harness.compat_models import write_controlnet, write_lora, write_merged_checkpoint
from test_e2e_workflows import small_prompt

CHECKPOINT = "compat-imagpose.safetensors"
MERGED = "compat-imagpose-lora-merged.safetensors"
LORA = "compat-lora.safetensors"
CONTROLNET = "compat-controlnet.safetensors"
GRADIENT = "imagpose_gradient.png"
WORKFLOW = WORKFLOWS_DIR / "IMAGPose 1 - one photo to three poses.json"
CVA_INSERTED = re.compile(r"IMAGPose: inserted (\d+) cross-view attention layers")
CVA_REMOVED = re.compile(r"IMAGPose: removed (\d+) cross-view attention layers")


def prepare(base):
    from imagpose.checkpoints import save_pack
    from imagpose.comfyui.model_patch import comfy_unet_config
    from imagpose.testing import make_tiny_model

    model = make_tiny_model(seed=3, block_out_channels=[64, 128, 256, 256])
    checkpoint = save_pack(model, base / "models" / "imagpose" / CHECKPOINT, {"note": "random weights"})
    factors = write_lora(base / "models" / "loras" / LORA, model.unet.state_dict())
    write_merged_checkpoint(checkpoint, base / "models" / "imagpose" / MERGED, factors)
    write_controlnet(base / "models" / "controlnet" / CONTROLNET, comfy_unet_config(model))
    ramp = np.tile(np.linspace(0, 255, 128, dtype=np.uint8), (256, 1))  # grid-sized, left 0 -> right 1
    Image.fromarray(np.stack([ramp] * 3, axis=-1)).save(base / "input" / GRADIENT)


@pytest.fixture(scope="module")
def compat_server(tmp_path_factory, test_models):
    with running_server(tmp_path_factory, test_models, "compat", prepare=prepare,
                        extra_args=["--verbose", "DEBUG", "--use-pytorch-cross-attention"]) as server:
        yield server


@pytest.fixture(scope="module")
def compat_info(compat_server):
    return compat_server.client.object_info()


class Prompt:
    """The small 1 -> 3 prompt with a SaveLatent after the sampler, and edits that put stock nodes in it."""

    def __init__(self, object_info, prefix, checkpoint=CHECKPOINT):
        self.graph = small_prompt(WORKFLOW, object_info, checkpoint, prefix)
        (self.sampler,) = nodes_of_type(self.graph, "KSampler")
        for decode in ("VAEDecode", "IMAGPoseGridUnpack", "SaveImage"):  # the latents say it all, and faster
            for node_id in nodes_of_type(self.graph, decode):
                del self.graph[node_id]
        self.graph["latent_out"] = {"class_type": "SaveLatent",
                                    "inputs": {"samples": [self.sampler, 0], "filename_prefix": f"latents/{prefix}"}}

    @property
    def sampler_inputs(self):
        return self.graph[self.sampler]["inputs"]

    def add(self, node_id, class_type, **inputs):
        self.graph[node_id] = {"class_type": class_type, "inputs": inputs}
        return [node_id, 0]

    def patch_model(self, class_type, **inputs):
        """Put a MODEL -> MODEL node between the loader and the sampler."""
        self.sampler_inputs["model"] = self.add(f"compat_{class_type}", class_type, model=self.sampler_inputs["model"],
                                                **inputs)

    def run(self, server):
        history = server.client.run(self.graph, timeout=900)
        (saved,) = history["outputs"]["latent_out"]["latents"]
        return load_file(str(server.output_path(saved)))["latent_tensor"]


def assert_changed(latent, baseline, what):
    assert torch.isfinite(latent).all(), f"{what}: non-finite latent"
    assert latent.shape == baseline.shape
    change = (latent - baseline).abs().max().item()
    assert change > 1e-3 * baseline.abs().max().item(), f"{what} did not change the result (max change {change})"


@pytest.fixture(scope="module")
def baseline(compat_server, compat_info):
    latent = Prompt(compat_info, "compat_baseline").run(compat_server)
    assert torch.isfinite(latent).all() and latent.std() > 0.1
    return latent


def test_lora_model_only_changes_exactly_the_merged_weights(compat_server, compat_info, baseline):
    """LoraLoaderModelOnly with an SD1.5 LoRA in four key styles equals the LoRA merged into the checkpoint."""
    prompt = Prompt(compat_info, "compat_lora")
    prompt.patch_model("LoraLoaderModelOnly", lora_name=LORA, strength_model=1.0)
    with_lora = prompt.run(compat_server)
    assert_changed(with_lora, baseline, "LoraLoaderModelOnly")
    merged = Prompt(compat_info, "compat_merged", checkpoint=MERGED).run(compat_server)
    torch.testing.assert_close(with_lora, merged, rtol=1e-4, atol=1e-4)
    log = compat_server.log_text()
    assert "lora key not loaded" not in log and "NOT LOADED" not in log, "some LoRA keys were not mapped"


def test_model_sampling_discrete_v_prediction_zsnr_is_what_the_loader_sets(compat_server, compat_info, baseline):
    prompt = Prompt(compat_info, "compat_msd_v")
    prompt.patch_model("ModelSamplingDiscrete", sampling="v_prediction", zsnr=True)
    same = prompt.run(compat_server)
    torch.testing.assert_close(same, baseline, rtol=0, atol=0)


def test_sampler_custom_advanced_with_cfg_guider_equals_ksampler(compat_server, compat_info, baseline):
    prompt = Prompt(compat_info, "compat_custom")
    k = prompt.sampler_inputs
    output = prompt.add("custom", "SamplerCustomAdvanced",
                        noise=prompt.add("noise", "RandomNoise", noise_seed=k["seed"]),
                        guider=prompt.add("guider", "CFGGuider", model=k["model"], positive=k["positive"],
                                          negative=k["negative"], cfg=k["cfg"]),
                        sampler=prompt.add("sampler_select", "KSamplerSelect", sampler_name=k["sampler_name"]),
                        sigmas=prompt.add("sigmas", "BasicScheduler", model=k["model"], scheduler=k["scheduler"],
                                          steps=k["steps"], denoise=k["denoise"]),
                        latent_image=k["latent_image"])
    for node in prompt.graph.values():
        for name, value in node["inputs"].items():
            if value == [prompt.sampler, 0]:
                node["inputs"][name] = output
    del prompt.graph[prompt.sampler]
    custom = prompt.run(compat_server)
    torch.testing.assert_close(custom, baseline, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("class_type,inputs", [
    ("FreeU_V2", {"b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2}),
    ("PerturbedAttentionGuidance", {"scale": 3.0}),
    ("SelfAttentionGuidance", {"scale": 0.5, "blur_sigma": 2.0}),
])
def test_guidance_and_freeu_nodes_change_the_result(compat_server, compat_info, baseline, class_type, inputs):
    prompt = Prompt(compat_info, f"compat_{class_type}")
    prompt.patch_model(class_type, **inputs)
    assert_changed(prompt.run(compat_server), baseline, class_type)


def test_sd15_controlnet_changes_the_result(compat_server, compat_info, baseline):
    """An ldm-format SD1.5 ControlNet: it sees the 4-channel noisy latent and the FLC tokens as its context."""
    prompt = Prompt(compat_info, "compat_controlnet")
    k = prompt.sampler_inputs
    control = prompt.add("cn_loader", "ControlNetLoader", control_net_name=CONTROLNET)
    hint = prompt.add("cn_hint", "LoadImage", image="imagpose_pose_2.png")
    prompt.add("cn_apply", "ControlNetApplyAdvanced", positive=k["positive"], negative=k["negative"],
               control_net=control, image=hint, strength=1.0, start_percent=0.0, end_percent=1.0)
    k["positive"], k["negative"] = ["cn_apply", 0], ["cn_apply", 1]
    assert_changed(prompt.run(compat_server), baseline, "ControlNetApplyAdvanced")
    assert "missing controlnet keys" not in compat_server.log_text()


def test_differential_diffusion_changes_a_masked_run(compat_server, compat_info, baseline):
    """Differential Diffusion acts on a soft latent noise mask; with the same mask and without it, the results differ."""
    results = []
    for differential in (False, True):
        prompt = Prompt(compat_info, f"compat_dd_{differential}")
        k = prompt.sampler_inputs
        mask = prompt.add("mask", "LoadImageMask", image=GRADIENT, channel="red")
        k["latent_image"] = prompt.add("noise_mask", "SetLatentNoiseMask", samples=k["latent_image"], mask=mask)
        if differential:
            prompt.patch_model("DifferentialDiffusion", strength=1.0)
        results.append(prompt.run(compat_server))
    masked, differential = results
    assert_changed(masked, baseline, "SetLatentNoiseMask")
    assert_changed(differential, masked, "DifferentialDiffusion")


def test_cva_layers_are_removed_when_models_unload(compat_server):
    """Every insertion of the CVA layers (one per load of a model variant) is undone when ComfyUI unloads.
    (Before the TorchCompileModel test: after a compiled run this ComfyUI did not act on /free within a minute.)"""
    compat_server.client.post("/free", {"unload_models": True, "free_memory": True})
    deadline = time.monotonic() + 60
    while True:
        log = compat_server.log_text()
        inserted, removed = CVA_INSERTED.findall(log), CVA_REMOVED.findall(log)
        if len(removed) >= len(inserted) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert inserted and set(inserted) == {"13"}, inserted
    assert removed == inserted, f"{len(inserted)} insertions, {len(removed)} removals: {removed}"


COMPILE_BACKENDS = ["cudagraphs"] + (["inductor"] if os.environ.get("IMAGPOSE_TEST_INDUCTOR") == "1" else [])


@pytest.mark.parametrize("backend", COMPILE_BACKENDS)
def test_torch_compile_model_matches_eager(compat_server, compat_info, baseline, backend, timings):
    """TorchDynamo traces the UNet with the CVA layers and the pose wrapper inside it. On a CPU the cudagraphs
    backend runs the traced graphs without CUDA graphs; inductor (IMAGPOSE_TEST_INDUCTOR=1) also compiles C++
    kernels, which takes about 10 minutes for this tiny UNet on 2 cores."""
    prompt = Prompt(compat_info, f"compat_compile_{backend}")
    prompt.patch_model("TorchCompileModel", backend=backend)
    started = time.monotonic()
    compiled = prompt.run(compat_server)
    timings[f"TorchCompileModel {backend} (compile + 2 steps)"] = time.monotonic() - started
    torch.testing.assert_close(compiled, baseline, rtol=1e-3, atol=1e-3)
