"""The ComfyUI path computes what the plain-PyTorch model computes.

The ComfyUI side goes through the pack's own nodes (loader, image-encoder loader, FLC Encode, ILC Pack) and
ComfyUI's sampler machinery (CFGGuider, model sampling, conditioning batching, ModelPatcher injections). The
reference side builds its inputs by hand from the pure library and calls IMAGPoseModel directly.
"""
import numpy as np
import pytest
import torch

from imagpose import grid
from imagpose.checkpoints import build_model, load_weights
from imagpose.image_encoder import encode, load_dinov2
from imagpose.imaging import fit_to_cell
from imagpose.model import LATENT_SCALE

CELL = 64
TOLERANCE = 1e-4


def photo(index: int, height: int, width: int) -> torch.Tensor:
    from skimage import data

    image = [data.astronaut, data.coffee, data.chelsea][index % 3]()
    t = torch.from_numpy(np.ascontiguousarray(image)).float().div(255).movedim(-1, 0)[None]
    return torch.nn.functional.interpolate(t, size=(height, width), mode="bilinear").movedim(1, -1)


def pose_image(seed: int, height: int, width: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(1, height, width, 3, generator=generator) > 0.8).float()


def run_comfy(comfy_nodes, pack, vae, sources, source_poses, targets, cfg):
    """One model evaluation through ComfyUI's sampler stack; returns (x, sigma, denoised)."""
    import comfy.samplers

    loader = comfy_nodes.NODE_CLASS_MAPPINGS["IMAGPoseModelLoader"]
    model, bundle = loader.execute(pack, "none", "auto", "auto").result
    encoder = comfy_nodes.NODE_CLASS_MAPPINGS["IMAGPoseImageEncoderLoader"].execute("tiny-dinov2").result[0]
    positive, negative = comfy_nodes.NODE_CLASS_MAPPINGS["IMAGPoseFLCEncode"].execute(
        encoder, bundle, vae, sources, 0, False, CELL, CELL, "pad").result
    positives, negatives, latents, layout, _ = comfy_nodes.NODE_CLASS_MAPPINGS["IMAGPoseILCPack"].execute(
        positive, negative, vae, sources, targets, CELL, CELL, "pad", "auto", source_poses=source_poses).result
    (positive,), (negative,), (latent,) = positives, negatives, latents  # one grid: one chunk

    captured = {}

    def one_step(model_fn, x, sigmas, extra_args=None, callback=None, disable=None):
        captured["x"] = x.clone()
        captured["denoised"] = model_fn(x, sigmas[0] * x.new_ones([x.shape[0]]), **(extra_args or {}))
        return captured["denoised"]

    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    sampling = model.get_model_object("model_sampling")
    sigma = sampling.sigmas[400].reshape(1)
    noise = torch.randn(latent["samples"].shape, generator=torch.Generator().manual_seed(3))
    sigmas = torch.cat([sigma, torch.zeros(1)])
    guider.sample(noise, latent["samples"], comfy.samplers.KSAMPLER(one_step), sigmas, seed=3)
    return captured["x"], sigma, captured["denoised"], sampling, layout


def reference_inputs(vae, dino, model, sources, source_poses, targets):
    """Inputs built by hand: hand-made layout, masked grid, flag, pose grid and FLC context."""
    def chw(images, pad):
        return fit_to_cell(images[..., :3].movedim(-1, 1), CELL, CELL, "pad", pad)

    layout = grid.make_layout(sources.shape[0], targets.shape[0], CELL, CELL)
    src, spose, tpose = chw(sources, 1.0), chw(source_poses, 0.0), chw(targets, 0.0)
    cells = [torch.zeros_like(src[:1]) if s is None else src[s : s + 1] for s in layout.cell_sources]
    # contiguous like ILC Pack's grid: ComfyUI's VAE convolutions round differently on a channels-last layout
    # (2e-5 in the latent, which some conditionings amplify to 1e-4 in v)
    masked = grid.pack_grid(cells).contiguous()
    poses = grid.pack_grid(grid.pose_cells(layout, spose, tpose))
    masked_latent = vae.encode(masked.movedim(1, -1)).float() * LATENT_SCALE
    h, w = masked_latent.shape[-2] // 2, masked_latent.shape[-1] // 2
    flag = grid.flag_map(layout, 1, h, w)
    ref_latent = vae.encode(src[:1].movedim(1, -1)).float() * LATENT_SCALE
    context = model.context(encode(dino, src[:1]), ref_latent)
    return masked_latent, flag, poses, context


def reference_v(model, sampling, x, sigma, masked_latent, flag, poses, context, **ablate):
    xc = sampling.calculate_input(sigma, x)
    t = sampling.timestep(sigma).float()
    sample = torch.cat([xc, flag.expand(x.shape[0], -1, -1, -1), masked_latent.expand(x.shape[0], -1, -1, -1)], 1)
    with torch.no_grad():
        return model(sample, t, context.expand(x.shape[0], -1, -1), poses.expand(x.shape[0], -1, -1, -1), **ablate)


def v_from_denoised(x, sigma, denoised):
    """Invert ComfyUI's V_PREDICTION.calculate_denoised (sigma_data = 1)."""
    s = sigma.view(-1, 1, 1, 1)
    return (x / (s**2 + 1) - denoised) * torch.sqrt(s**2 + 1) / s


LAYOUTS = {"1->3": (1, 3), "3->1": (3, 1), "2->2": (2, 2), "1->1": (1, 1)}


@pytest.fixture(scope="module")
def setup(comfy_nodes, tiny_models):
    import comfy.sd
    import comfy.utils

    root, paths = tiny_models
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(paths["vae"])))
    model = build_model(load_weights(paths["pack"]))
    dino = load_dinov2(paths["dinov2"])
    return comfy_nodes, vae, model, dino


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_comfy_path_matches_plain_model(setup, name):
    comfy_nodes, vae, model, dino = setup
    n_sources, n_targets = LAYOUTS[name]
    sources = torch.cat([photo(i, 96, 80) for i in range(n_sources)])
    source_poses = torch.cat([pose_image(10 + i, 96, 80) for i in range(n_sources)])
    targets = torch.cat([pose_image(20 + i, 80, 64) for i in range(n_targets)])

    x, sigma, denoised, sampling, layout = run_comfy(comfy_nodes, "tiny-imagpose.safetensors", vae, sources,
                                                     source_poses, targets, cfg=1.0)
    (grid_layout,) = layout.grids
    assert grid_layout.target_cells == tuple(range(4 - n_targets, 4))
    inputs = reference_inputs(vae, dino, model, sources, source_poses, targets)
    v_comfy = v_from_denoised(x, sigma, denoised)
    v_plain = reference_v(model, sampling, x, sigma, *inputs)
    diff = (v_comfy - v_plain).abs().max().item()
    print(f"{name}: max |v_comfy - v_plain| = {diff:.2e}, |v| max {v_plain.abs().max():.2f}")
    assert diff <= TOLERANCE

    # Each part matters: the ComfyUI output differs clearly from the model with that part switched off.
    for ablation in ({"use_cva": False}, {"use_pose": False}):
        v_ablated = reference_v(model, sampling, x, sigma, *inputs, **ablation)
        assert (v_comfy - v_ablated).abs().max().item() > 100 * TOLERANCE, ablation


def test_cfg_combines_positive_and_zero_negative(setup):
    comfy_nodes, vae, model, dino = setup
    sources, source_poses = photo(0, 96, 80), pose_image(1, 96, 80)
    targets = torch.cat([pose_image(2, 96, 80), pose_image(3, 96, 80)])
    x, sigma, denoised, sampling, _ = run_comfy(comfy_nodes, "tiny-authors", vae, sources, source_poses, targets, cfg=2.0)
    masked_latent, flag, poses, context = reference_inputs(vae, dino, model, sources, source_poses, targets)
    v_pos = reference_v(model, sampling, x, sigma, masked_latent, flag, poses, context)
    v_neg = reference_v(model, sampling, x, sigma, masked_latent, flag, poses, torch.zeros_like(context))
    expected = v_neg + 2.0 * (v_pos - v_neg)
    diff = (v_from_denoised(x, sigma, denoised) - expected).abs().max().item()
    print(f"cfg 2.0: max diff {diff:.2e}")
    assert diff <= TOLERANCE


def test_two_layers_per_block_like_sd15(setup, tiny_models):
    """SD1.5's block layout (2 resnets per down block, 3 per up block): 21 CVA modules at SD1.5 size."""
    from imagpose.checkpoints import save_pack
    from imagpose.testing import make_tiny_model

    comfy_nodes, vae, _, dino = setup
    root, _ = tiny_models
    model = make_tiny_model(seed=11, layers_per_block=2)
    assert len(model.unet.cva_modules()) == 4 * 2 + 1 + 4 * 3
    save_pack(model, root / "imagpose" / "tiny-imagpose-2layers.safetensors")
    sources, source_poses = photo(1, 64, 64), pose_image(5, 64, 64)
    targets = torch.cat([pose_image(6 + i, 64, 64) for i in range(3)])
    x, sigma, denoised, sampling, _ = run_comfy(comfy_nodes, "tiny-imagpose-2layers.safetensors", vae, sources,
                                                source_poses, targets, cfg=1.0)
    inputs = reference_inputs(vae, dino, model, sources, source_poses, targets)
    diff = (v_from_denoised(x, sigma, denoised) - reference_v(model, sampling, x, sigma, *inputs)).abs().max().item()
    print(f"2 layers per block, 1->3: max diff {diff:.2e}")
    assert diff <= TOLERANCE


@pytest.mark.parametrize("name,roles", [("1->3", (True, False, False, False)), ("2->2", (True, True, False, False))])
def test_training_conditioning_equals_inference_conditioning(setup, tiny_models, name, roles):
    """The trainer's grid inputs and FLC context equal what FLC Encode + ILC Pack attach, on the same cells."""
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file

    from imagpose.testing import SD_VAE
    from trainer.loss import grid_inputs, vae_latents

    comfy_nodes, vae, model, dino = setup
    _, paths = tiny_models
    diffusers_vae = AutoencoderKL(**SD_VAE)
    diffusers_vae.load_state_dict({k: v.float() for k, v in load_file(str(paths["vae"])).items()})
    n_sources = sum(roles)
    cells = torch.cat([photo(i, CELL, CELL) for i in range(4)])  # (4, H, W, 3), already cell-sized
    poses = torch.cat([pose_image(30 + i, CELL, CELL) for i in range(4)])
    sources, targets = cells[:n_sources], poses[n_sources:]

    run = lambda node, *args, **kw: comfy_nodes.NODE_CLASS_MAPPINGS[node].execute(*args, **kw).result  # noqa: E731
    _, bundle = run("IMAGPoseModelLoader", "tiny-imagpose.safetensors", "none", "auto", "auto")
    encoder = run("IMAGPoseImageEncoderLoader", "tiny-dinov2")[0]
    positive, _ = run("IMAGPoseFLCEncode", encoder, bundle, vae, sources, 0, False, CELL, CELL, "pad")
    (positive,), *_ = run("IMAGPoseILCPack", positive, positive, vae, sources, targets, CELL, CELL, "pad", "auto",
                          source_poses=poses[:n_sources])
    context, options = positive[0]

    chw = cells.movedim(-1, 1)[None]
    _, masked, pose_grid, flags = grid_inputs(chw, poses.movedim(-1, 1)[None], torch.tensor([roles]), 8)
    with torch.no_grad():
        masked_latent = vae_latents(diffusers_vae, masked, sample=False)
        training_context = model.context(encode(dino, chw[:, 0]), vae_latents(diffusers_vae, chw[:, 0], sample=False))
    assert torch.equal(flags, options["concat_mask"])
    assert torch.equal(pose_grid, options["model_conds"]["imagpose_pose"].cond)
    latent_diff = (masked_latent - options["concat_latent_image"] * LATENT_SCALE).abs().max().item()
    context_diff = (training_context - context).abs().max().item()
    print(f"{name}: masked latent {latent_diff:.2e}, FLC context {context_diff:.2e}")
    assert latent_diff <= TOLERANCE and context_diff <= TOLERANCE
