"""The nodes inside an in-process ComfyUI: SD1.5-size mapping, isolation from other models, clear errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.imagpose_sampling import load_test_models, run_node
from harness.inprocess import pack_module
from imagpose.testing import TINY_UNET
from imagpose.unet import IMAGPoseUNet

REPO = Path(__file__).resolve().parents[1]


def test_sd15_size_maps_to_comfyui_own_inpaint_config(comfy_nodes):
    import comfy.model_detection

    from imagpose.comfyui.model_patch import comfy_unet_config
    from imagpose.model import IMAGPoseModel

    config = {**TINY_UNET, "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
              "cross_attention_dim": 768, "sample_size": 64}
    with torch.device("meta"):
        unet = IMAGPoseUNet(**config)
    ours = comfy_unet_config(IMAGPoseModel(unet, torch.nn.Identity(), torch.nn.Identity()))
    state_dict = {k: v for k, v in unet.state_dict().items() if ".motion_modules." not in k}
    comfys = comfy.model_detection.unet_config_from_diffusers_unet(state_dict)
    assert comfys is not None, "ComfyUI does not see an SD1.5 inpaint UNet"
    assert {k: ours[k] for k in comfys if k != "dtype"} == {k: v for k, v in comfys.items() if k != "dtype"}


PLAIN_SCRIPT = r"""
import json, sys, torch
from pathlib import Path
from harness.inprocess import load
nodes = load(Path(sys.argv[1]), Path(sys.argv[2]))
from harness.plain_model import sample_plain
if len(sys.argv) > 3:
    from harness.imagpose_sampling import sample_imagpose
    sample_imagpose(nodes)
print(json.dumps(sample_plain().flatten().tolist()))
"""


def test_other_models_are_untouched_after_imagpose_sampling(tiny_models, tmp_path):
    """A plain SD1.5-family model gives the same result after IMAGPose sampled in the same process as fresh."""
    root, _ = tiny_models
    results = []
    for run, with_imagpose in enumerate((False, True)):
        custom = tmp_path / f"custom{run}"
        custom.mkdir()
        args = [sys.executable, "-c", PLAIN_SCRIPT, str(custom), str(root)] + (["imagpose"] if with_imagpose else [])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        results.append(torch.tensor(json.loads(done.stdout.strip().splitlines()[-1])))
    fresh, after = results
    assert torch.isfinite(fresh).all() and fresh.abs().sum() > 0
    assert torch.equal(fresh, after)


def test_imagpose_layers_exist_only_while_patched(comfy_nodes, tiny_models):
    from harness.imagpose_sampling import sample_imagpose

    def cva_layers(module):  # by name: the pack runs as ComfyUI's custom_nodes copy of this code
        return sum(type(m).__name__ == "CVALayer" for m in module.modules())

    model, images = sample_imagpose(comfy_nodes, keep_model=True)
    assert images.shape == (3, 64, 64, 3) and torch.isfinite(images).all() and images.std() > 0
    unet = model.model.diffusion_model
    model.patch_model()  # what ComfyUI does before sampling
    assert cva_layers(unet) == 13  # one per CVA module of the tiny model
    model.unpatch_model()  # what ComfyUI does when the model is unloaded
    assert cva_layers(unet) == 0


def test_sampling_without_the_cva_layers_is_refused(comfy_nodes, tiny_models):
    """A node that hands the sampler a clone without the pack's injections (so the UNet runs without its CVA
    layers) gets a message naming the limitation, not a silently different image."""
    from harness.imagpose_sampling import sample_imagpose

    from imagpose.comfyui.model_patch import KEY

    def strip_injections(model):
        clone = model.clone()
        clone.remove_injections(KEY)
        clone.is_injected = False
        return clone

    with pytest.raises(RuntimeError, match="0 of its 13 cross-view attention layers ran in this UNet call"):
        sample_imagpose(comfy_nodes, transform_model=strip_injections)


@pytest.fixture(scope="module")
def parts(comfy_nodes, tiny_models):
    vae, _, bundle, encoder = load_test_models(comfy_nodes)
    positive, negative = run_node(comfy_nodes, "IMAGPoseFLCEncode", encoder, bundle, vae,
                                  torch.rand(1, 64, 64, 3), 0, False, 64, 64, "pad")
    return comfy_nodes, vae, bundle, encoder, positive, negative


def images(n, h=64, w=64):
    return torch.rand(n, h, w, 3)


@pytest.mark.parametrize("case,match", [
    ("no_sources", "input 'source_images': expected 1 to 3 images; got none"),
    ("four_sources", "input 'source_images': expected 1 to 3 images; got 4"),
    ("four_sources_in_all", "input 'source_images \\+ source_2': expected 1 to 3 source images in all; got 2 \\+ 2 = 4"),
    ("no_targets", "input 'target_poses': expected 1 to 256 rendered target poses .*; got nothing connected"),
    ("zero_targets", "input 'target_poses': expected 1 to 256 images; got 0"),
    ("both_targets", "input 'target_poses/target_keypoints': expected target poses on one of the two inputs; got both"),
    ("one_batch_too_small", "input 'target_poses': expected at most 6 target poses for one batch of at most 2 grids "
                            "\\(grids_per_batch\\) .*set batching to 'chunks'.*; got 7 target poses, which need 3 grids"),
    ("pose_count", "input 'source_poses': expected one pose per source image \\(2\\); got 1"),
    ("cell_size", "multiple of 64"),
    ("cell_mismatch", "set the same width, height and fit"),
])
def test_ilc_pack_refuses_bad_input_clearly(parts, case, match):
    nodes, vae, _, _, positive, negative = parts
    sources, source_poses, targets, width, height = images(1), images(1), images(1), 64, 64
    extra = {}
    if case == "no_sources":
        sources = None
    elif case == "four_sources":
        sources, source_poses = images(4), images(4)
    elif case == "four_sources_in_all":
        sources, source_poses, extra = images(2), images(4), {"source_2": images(2, 32, 32)}
    elif case == "no_targets":
        targets = None
    elif case == "zero_targets":
        targets = images(0)
    elif case == "both_targets":
        extra = {"target_keypoints": [{"canvas_width": 64, "canvas_height": 64, "people": []}]}
    elif case == "one_batch_too_small":
        targets, extra = images(7), {"batching": "one_batch", "grids_per_batch": 2}
    elif case == "pose_count":
        sources = images(2)
    elif case == "cell_size":
        width = 96
    elif case == "cell_mismatch":
        width = height = 128
    with pytest.raises(ValueError, match=f"^IMAGPose ILC Pack: .*{match}"):
        run_node(nodes, "IMAGPoseILCPack", positive, negative, vae, sources, targets, width, height, "pad", "auto",
                 source_poses=source_poses, **extra)


def test_sources_of_different_sizes_are_fitted_not_refused(parts):
    nodes, vae, _, _, positive, negative = parts
    out = run_node(nodes, "IMAGPoseILCPack", positive, negative, vae, images(2, 120, 80), images(1, 64, 200),
                   64, 64, "pad", "auto", source_poses=images(2, 30, 20))
    assert out[2][0]["samples"].shape == (1, 4, 16, 16)


def test_flc_refuses_bad_reference_index(parts):
    nodes, vae, bundle, encoder, _, _ = parts
    with pytest.raises(ValueError, match="^IMAGPose FLC Encode: input 'reference_index': expected 0..1"):
        run_node(nodes, "IMAGPoseFLCEncode", encoder, bundle, vae, images(2), 2, False, 64, 64, "pad")


def test_missing_model_file_names_folders_and_expected_files(comfy_nodes, tiny_models):
    root, _ = tiny_models
    with pytest.raises(ValueError) as error:
        run_node(comfy_nodes, "IMAGPoseModelLoader", "nope.safetensors", "none", "auto", "auto")
    message = str(error.value)
    assert message.startswith("IMAGPose Model Loader: input 'checkpoint': expected ")
    assert "'nope.safetensors', which was not found" in message
    assert str(root / "imagpose") in message and "denoising_unet-N.pth" in message


def test_not_imagpose_checkpoint_is_named_by_loader(comfy_nodes, tiny_models):
    from safetensors.torch import save_file

    root, _ = tiny_models
    save_file({"foo": torch.zeros(2)}, str(root / "imagpose" / "random.safetensors"))
    with pytest.raises(ValueError, match="^IMAGPose Model Loader: input 'checkpoint': .*random.safetensors: not an IMAGPose checkpoint part"):
        run_node(comfy_nodes, "IMAGPoseModelLoader", "random.safetensors", "none", "auto", "auto")


def test_unpack_returns_targets_in_pose_order_and_checks_size(parts):
    nodes = parts[0]
    grid = pack_module(nodes, "imagpose.grid")
    SequenceLayout, make_layout = grid.SequenceLayout, grid.make_layout
    layout = SequenceLayout((make_layout(1, 3, 32, 32),), (1,))
    decoded = torch.zeros(1, 64, 64, 3)
    decoded[:, :32, 32:] = 0.25  # TR = target 0
    decoded[:, 32:, :32] = 0.5   # BL = target 1
    decoded[:, 32:, 32:] = 0.75  # BR = target 2
    out = run_node(nodes, "IMAGPoseGridUnpack", [decoded], [layout], ["targets"])[0]
    assert out.shape == (3, 32, 32, 3)
    assert [round(v, 2) for v in out.mean(dim=(1, 2, 3)).tolist()] == [0.25, 0.5, 0.75]
    assert run_node(nodes, "IMAGPoseGridUnpack", [decoded], [layout], ["all"])[0].shape == (4, 32, 32, 3)
    # a batch of variations of one grid (e.g. a repeated latent) unpacks grid by grid, as before
    assert run_node(nodes, "IMAGPoseGridUnpack", [decoded.repeat(2, 1, 1, 1)], [layout], ["targets"])[0].shape[0] == 6
    with pytest.raises(ValueError, match="^IMAGPose Grid Unpack: input 'images': expected decoded grids of 64x64"):
        run_node(nodes, "IMAGPoseGridUnpack", [torch.zeros(1, 128, 64, 3)], [layout], ["targets"])
    with pytest.raises(ValueError, match="^IMAGPose Grid Unpack: input 'which': expected one of targets, all"):
        run_node(nodes, "IMAGPoseGridUnpack", [decoded], [layout], ["everything"])
    two = SequenceLayout((make_layout(1, 3, 32, 32), make_layout(1, 1, 32, 32)), (2,))
    with pytest.raises(ValueError, match="^IMAGPose Grid Unpack: input 'images': expected 2 decoded grids"):
        run_node(nodes, "IMAGPoseGridUnpack", [decoded.repeat(3, 1, 1, 1)], [two], ["targets"])


def astronaut(height=128, width=128):
    from skimage import data

    image = torch.from_numpy(data.astronaut()).float().div(255)[None]
    return torch.nn.functional.interpolate(image.movedim(-1, 1), size=(height, width), mode="bilinear").movedim(1, -1)


def test_ilc_pack_extracts_source_poses_when_not_connected(parts):
    pytest.importorskip("mediapipe", reason="the MediaPipe pose backend is a test requirement")
    nodes, vae, _, _, positive, negative = parts
    source = astronaut(256, 256)
    packed = run_node(nodes, "IMAGPoseILCPack", positive, negative, vae, source, images(1), 64, 64, "pad",
                      "mediapipe", source_poses=None)
    pose_grid = packed[0][0][0][1]["model_conds"]["imagpose_pose"].cond
    source_cell = pose_grid[0, :, :64, :64]
    assert source_cell.max() > 0.5, "no skeleton drawn in the source cell"
    assert (source_cell > 0.1).float().mean() < 0.5, "the source pose cell is not a skeleton on black"


def test_ilc_pack_reports_no_person_found(parts):
    pytest.importorskip("mediapipe", reason="the MediaPipe pose backend is a test requirement")
    nodes, vae, _, _, positive, negative = parts
    with pytest.raises(ValueError, match="^IMAGPose ILC Pack: input 'source_poses': .*not connected, and extracting"):
        run_node(nodes, "IMAGPoseILCPack", positive, negative, vae, torch.zeros(1, 128, 128, 3), images(1),
                 64, 64, "pad", "mediapipe", source_poses=None)


def test_image_encoder_loads_from_single_safetensors_in_clip_vision(comfy_nodes, tiny_models):
    from safetensors.torch import load_file, save_file

    root, paths = tiny_models
    (root / "clip_vision").mkdir(exist_ok=True)
    state = load_file(str(paths["dinov2"] / "model.safetensors"))
    save_file(state, str(root / "clip_vision" / "dinov2-single.safetensors"))
    from_folder = run_node(comfy_nodes, "IMAGPoseImageEncoderLoader", "tiny-dinov2")[0]
    from_file = run_node(comfy_nodes, "IMAGPoseImageEncoderLoader", "dinov2-single.safetensors")[0]
    pixels = torch.rand(1, 3, 100, 80)
    assert torch.equal(from_folder.encode(pixels), from_file.encode(pixels))
    assert from_file.encode(pixels).shape == (1, 257, 64)


def test_model_sampling_matches_training_schedule(comfy_nodes):
    """v-prediction, zero terminal SNR, scaled-linear 0.00085-0.012: the schedule diffusers trains with."""
    import comfy.model_sampling
    from diffusers import DDPMScheduler

    model = run_node(comfy_nodes, "IMAGPoseModelLoader", "tiny-imagpose.safetensors", "none", "auto", "auto")[0]
    sampling = model.get_model_object("model_sampling")
    assert isinstance(sampling, comfy.model_sampling.V_PREDICTION)
    training = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                             beta_schedule="scaled_linear", rescale_betas_zero_snr=True,
                             prediction_type="v_prediction", timestep_spacing="trailing")
    alphas = training.alphas_cumprod.double()
    sigmas = ((1 - alphas) / alphas).sqrt()
    # ComfyUI clamps the last alpha_cumprod away from 0 (infinite sigma); every other sigma must agree
    assert torch.allclose(sampling.sigmas[:-1].double(), sigmas[:-1], rtol=1e-4)
    assert sampling.sigmas[-1] > 1000


def test_models_linked_in_from_elsewhere_load(comfy_nodes, tiny_models, tmp_path):
    root, paths = tiny_models
    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes(paths["pack"].read_bytes())
    link = root / "imagpose" / "linked.safetensors"
    link.symlink_to(outside)
    model = run_node(comfy_nodes, "IMAGPoseModelLoader", "linked.safetensors", "none", "auto", "auto")[0]
    assert model.model.diffusion_model is not None
    with pytest.raises(ValueError, match="not found"):
        run_node(comfy_nodes, "IMAGPoseModelLoader", "../imagpose/linked.safetensors/../../vae/tiny-vae.safetensors",
                 "none", "auto", "auto")


def test_extra_model_paths_key_adds_to_the_default_folder(comfy_nodes, tiny_models):
    import folder_paths

    root, _ = tiny_models
    paths = folder_paths.get_folder_paths("imagpose")
    assert str(root / "imagpose") in paths  # added before the pack loaded, as extra_model_paths.yaml does
    assert str(Path(folder_paths.models_dir) / "imagpose") in paths


def test_pack_file_works_as_motion_module(comfy_nodes, tiny_models):
    """The loader takes CVA weights from a pack file as the trainer does: only the CVA changes."""
    from imagpose.checkpoints import save_pack
    from imagpose.comfyui.model_patch import KEY
    from imagpose.testing import make_tiny_model

    root, _ = tiny_models
    other = make_tiny_model(seed=5)
    save_pack(other, root / "imagpose" / "other-cva.safetensors")

    def extras(motion_module):
        model = run_node(comfy_nodes, "IMAGPoseModelLoader", "tiny-authors", motion_module, "auto", "auto")[0]
        return model.additional_models[KEY][0].model

    plain, swapped = extras("none"), extras("other-cva.safetensors")
    wanted = [m.state_dict() for m in other.unet.cva_modules()]
    for module, before, want in zip(swapped.cva, plain.cva, wanted):
        got = module.state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want)
        assert not all(torch.equal(got[k], before.state_dict()[k]) for k in want)
    assert all(torch.equal(a, b) for a, b in zip(swapped.pose_guider.state_dict().values(),
                                                 plain.pose_guider.state_dict().values()))


def test_image_encoder_is_a_model_comfyui_manages(parts, tiny_models):
    """DINOv2 behind a ModelPatcher: counted among the loaded models, unloaded with them, in the dtype ComfyUI
    picks for a UNet here (fp32 on the CPU), computing what the trainer's DINOv2 computes."""
    import comfy.model_management

    from imagpose.image_encoder import encode, load_dinov2

    _, paths = tiny_models
    encoder = parts[3]
    images = torch.rand(2, 3, 100, 80)
    tokens = encoder.encode(images)
    loaded = [m.model for m in comfy.model_management.current_loaded_models]
    assert encoder.patcher in loaded
    weights = list(encoder.encoder.parameters())
    assert encoder.patcher.model_size() == sum(p.numel() * p.element_size() for p in weights) > 0
    assert encoder.dtype == torch.float32 and {p.dtype for p in weights} == {torch.float32}
    comfy.model_management.unload_all_models()
    assert encoder.patcher not in [m.model for m in comfy.model_management.current_loaded_models]
    assert torch.equal(tokens, encode(load_dinov2(paths["dinov2"]), images))
    assert torch.equal(encoder.encode(images), tokens)  # loaded again on demand


def test_flc_uses_the_dinov2_positions_the_pack_was_trained_with(parts, tiny_models):
    from imagpose.checkpoints import POSITIONS_KEY, save_pack
    from imagpose.image_encoder import AUTHORS_POSITIONS, encode, load_dinov2
    from imagpose.imaging import PHOTO_PAD, fit_to_cell
    from imagpose.testing import make_tiny_model

    nodes, vae, _, encoder, _, _ = parts
    root, paths = tiny_models
    save_pack(make_tiny_model(), root / "imagpose" / "size-positions.safetensors", {POSITIONS_KEY: "bicubic-size"})
    _, bundle = run_node(nodes, "IMAGPoseModelLoader", "size-positions.safetensors", "none", "auto", "auto")
    assert bundle.image_encoder_positions == "bicubic-size"
    source = torch.rand(1, 80, 64, 3)
    positive = run_node(nodes, "IMAGPoseFLCEncode", encoder, bundle, vae, source, 0, False, 64, 64, "pad")[0]
    cell = fit_to_cell(source.movedim(-1, 1), 64, 64, "pad", PHOTO_PAD)
    tokens = positive[0][0][:, : 1 + (224 // 14) ** 2]
    assert torch.allclose(tokens, encode(load_dinov2(paths["dinov2"], "bicubic-size"), cell), atol=1e-6)
    assert not torch.allclose(tokens, encode(load_dinov2(paths["dinov2"], AUTHORS_POSITIONS), cell), atol=1e-3)


@pytest.fixture(scope="module")
def imagpose_model(comfy_nodes):
    return run_node(comfy_nodes, "IMAGPoseModelLoader", "tiny-imagpose.safetensors", "none", "auto", "auto")[0]


@pytest.mark.parametrize("steps", [1, 7, 20, 30, 50, 1000])
def test_trailing_sigmas_are_diffusers_ddim_trailing_timesteps(comfy_nodes, imagpose_model, steps):
    from diffusers import DDIMScheduler

    sigmas = run_node(comfy_nodes, "IMAGPoseTrailingSigmas", imagpose_model, steps)[0]
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", timestep_spacing="trailing", rescale_betas_zero_snr=True,
                              prediction_type="v_prediction")
    scheduler.set_timesteps(steps)
    sampling = imagpose_model.get_model_object("model_sampling")
    assert sigmas.shape == (steps + 1,) and sigmas[-1] == 0 and bool((sigmas[:-1] > sigmas[1:]).all())
    assert sampling.timestep(sigmas[:-1]).round().long().tolist() == scheduler.timesteps.tolist()
    assert torch.equal(sigmas[:-1], sampling.sigmas[scheduler.timesteps].float())


def test_simple_scheduler_is_trailing_only_when_the_steps_divide_1000(comfy_nodes, imagpose_model):
    """The paper's 20 steps: `simple` is exactly trailing; 30: one timestep higher on every third step."""
    import comfy.samplers

    sampling = imagpose_model.get_model_object("model_sampling")
    for steps in (20, 30):
        simple = comfy.samplers.calculate_sigmas(sampling, "simple", steps)
        trailing = run_node(comfy_nodes, "IMAGPoseTrailingSigmas", imagpose_model, steps)[0]
        off = (sampling.timestep(simple[:-1]) - sampling.timestep(trailing[:-1])).round().long()
        expected = torch.zeros(steps, dtype=torch.long)
        if steps == 30:
            expected[2::3] = 1  # steps 3, 6, ..., 30: 933 instead of 932, ..., 33 instead of 32
        assert torch.equal(off, expected), (steps, off.tolist())


def test_trailing_sigmas_drive_sampler_custom(parts, imagpose_model):
    import comfy.sample
    import comfy.samplers

    nodes, vae, _, _, positive, negative = parts
    (positive,), (negative,), (latent,), *_ = run_node(nodes, "IMAGPoseILCPack", positive, negative, vae, images(1),
                                                       images(1), 64, 64, "pad", "auto", source_poses=images(1))
    sigmas = run_node(nodes, "IMAGPoseTrailingSigmas", imagpose_model, 2)[0]
    noise = comfy.sample.prepare_noise(latent["samples"], 0)
    out = comfy.sample.sample_custom(imagpose_model, noise, 2.0, comfy.samplers.sampler_object("ddim"), sigmas,
                                     positive, negative, latent["samples"], seed=0, disable_pbar=True)
    assert out.shape == latent["samples"].shape and torch.isfinite(out).all() and out.std() > 0
    with pytest.raises(ValueError, match="^IMAGPose Trailing Sigmas: input 'steps': expected a value from 1 to 1000; got 0"):
        run_node(nodes, "IMAGPoseTrailingSigmas", imagpose_model, 0)


def test_image_encoder_runs_in_the_dtype_comfyui_computes_a_unet_in(comfy_nodes, monkeypatch):
    """--bf16-unet on a CPU: ComfyUI stores the UNet in bf16 but computes in fp32, and so runs DINOv2."""
    import comfy.model_management

    from imagpose.comfyui.image_encoder import encoder_dtype

    cpu = torch.device("cpu")
    assert encoder_dtype(cpu, 10**6) == torch.float32
    monkeypatch.setattr(comfy.model_management.args, "bf16_unet", True)
    assert comfy.model_management.unet_dtype(device=cpu) == torch.bfloat16
    assert encoder_dtype(cpu, 10**6) == torch.float32
    monkeypatch.setattr(comfy.model_management.args, "bf16_unet", False)
    monkeypatch.setattr(comfy.model_management.args, "fp8_e4m3fn_unet", True)  # a UNet dtype DINOv2 cannot run in
    assert encoder_dtype(cpu, 10**6) == torch.float32
