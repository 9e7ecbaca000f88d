"""The pure sampler (imagpose.sampling) is the sampling the nodes get in ComfyUI and the DDIM the authors use.

(a) its timesteps are diffusers' DDIMScheduler trailing timesteps; (b) its latent equals a diffusers DDIMScheduler
(eta 0) loop on the same model; (c) its latent equals ComfyUI's own sampling (the pack's nodes for the
conditioning, comfy.sample.sample_custom with sampler `ddim` / `euler`) on the tiny random models.
"""
import pytest
import torch

from imagpose import sampling
from imagpose.model import LATENT_SCALE
from imagpose.testing import make_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

EXACT = 1e-4  # relative to the largest |latent|: float32 rounding over a whole sampling run
CALM = 0.03  # output-layer scale of the "calm" test model (see calm_model)


def ddim_scheduler(comfy_terminal: bool = True):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", timestep_spacing="trailing", rescale_betas_zero_snr=True,
                              prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=True)
    if comfy_terminal:  # diffusers makes the last alpha_bar exactly 0, ComfyUI 4.9e-8
        scheduler.alphas_cumprod[-1] = sampling.TERMINAL_ALPHA_BAR
    return scheduler


@pytest.mark.parametrize("steps", [20, 30, 50, 7, 1, 1000])
def test_trailing_timesteps_are_diffusers_ddim(steps):
    scheduler = ddim_scheduler()
    scheduler.set_timesteps(steps)
    assert sampling.trailing_timesteps(steps) == scheduler.timesteps.tolist()
    sigmas = sampling.sampling_sigmas(steps)
    assert sigmas.shape == (steps + 1,) and sigmas[-1] == 0 and bool((sigmas[:-1] > sigmas[1:]).all())


def test_bad_step_counts_are_refused():
    for steps in (0, -3, 1001):
        with pytest.raises(ValueError, match="steps must be"):
            sampling.trailing_timesteps(steps)


def test_sigma_table_is_the_zero_snr_schedule():
    """Same alpha_bar as diffusers' rescaled schedule, except ComfyUI's non-zero last value."""
    scheduler = ddim_scheduler()
    alpha_bar = 1 / (sampling.schedule_sigmas().double() ** 2 + 1)
    assert torch.allclose(alpha_bar, scheduler.alphas_cumprod.double(), rtol=1e-5, atol=1e-9)
    table = sampling.schedule_sigmas()
    timesteps = torch.tensor([0.0, 1, 500, 998, 999])
    assert torch.equal(sampling.sigma_to_timestep(table[timesteps.long()], table), timesteps)


def calm_model(seed: int = 4):
    """The tiny random model with its output layer scaled down.

    Sampling the plain random model is chaotic: a 1e-6 relative change of the noise changes its 20-step cfg-2
    sample by ~3e-2 (a trained denoiser is far tamer), so float32 rounding (different matmul paths, ComfyUI's
    UNet code vs diffusers') would hide any sampler difference. Scaled down, the same change moves the sample by
    ~1e-5 (test_calm_model_does_not_amplify_rounding), and every input still reaches the output.
    """
    model = make_tiny_model(seed=seed)
    with torch.no_grad():
        model.unet.conv_out.weight.mul_(CALM)
        model.unet.conv_out.bias.mul_(CALM)
    return model


def conditioning(seed: int, batch: int = 1):
    """Random grid conditioning at 16x16 latent (64 px cells) for the tiny model, 1 source -> 3 targets."""
    from imagpose import grid

    generator = torch.Generator().manual_seed(seed)
    layout = grid.make_layout(1, 3, 64, 64)
    flags = grid.flag_map(layout, batch, 8, 8)
    masked = torch.randn(batch, 4, 16, 16, generator=generator) * flags
    pose = (torch.rand(batch, 3, 128, 128, generator=generator) > 0.85).float()
    context = torch.randn(batch, 261, 64, generator=generator)
    noise = torch.randn(batch, 4, 16, 16, generator=generator)
    return noise, flags, masked, pose, context


@torch.no_grad()
def diffusers_ddim(model, scheduler, steps, cfg, noise, flags, masked, pose, context):
    """The authors' sampling loop: DDIMScheduler.step (eta 0) on a CFG-combined v-prediction, positive and
    zero-context negative in one batch (as diffusers pipelines batch them)."""
    scheduler.set_timesteps(steps)
    x = noise * scheduler.init_noise_sigma
    guided = cfg != 1.0
    if guided:
        flags, masked, pose = (torch.cat([t, t]) for t in (flags, masked, pose))
        context = torch.cat([context, torch.zeros_like(context)])
    for t in scheduler.timesteps:
        x_in = torch.cat([x, x]) if guided else x
        v = model(torch.cat([x_in, flags, masked], dim=1), t.float().expand(x_in.shape[0]), context, pose)
        if guided:
            positive, negative = v.chunk(2)
            v = negative + cfg * (positive - negative)
        x = scheduler.step(v, t, x, eta=0.0).prev_sample
    return x


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_calm_model_does_not_amplify_rounding():
    inputs = conditioning(seed=1)
    for model, bound in ((make_tiny_model(seed=4), None), (calm_model(), 1e-4)):
        base = sampling.sample(model, *inputs, steps=20, cfg=2.0)
        nudged = sampling.sample(model, inputs[0] * (1 + 1e-6), *inputs[1:], steps=20, cfg=2.0)
        print(f"{'calm' if bound else 'plain'} random model: 1e-6 on the noise -> {relative(nudged, base):.1e} on the sample")
        if bound is not None:
            assert relative(nudged, base) <= bound


@pytest.mark.parametrize("steps,cfg", [(20, 2.0), (50, 1.0), (10, 3.0)])
def test_pure_sampler_equals_diffusers_ddim(steps, cfg):
    model = calm_model()
    inputs = conditioning(seed=steps)
    ours = sampling.sample(model, *inputs, steps=steps, cfg=cfg)
    same_schedule = diffusers_ddim(model, ddim_scheduler(), steps, cfg, *inputs)
    diffusers_default = diffusers_ddim(model, ddim_scheduler(comfy_terminal=False), steps, cfg, *inputs)
    exact, default = relative(ours, same_schedule), relative(ours, diffusers_default)
    print(f"{steps} steps, cfg {cfg}: max |ours - DDIM| / max |DDIM| = {exact:.2e} (same schedule), "
          f"{default:.2e} (diffusers' alpha_bar_T = 0)")
    assert exact <= EXACT
    assert default <= 1e-3  # only the first sigma differs (4519 vs infinite): O(1 / 4519) at most
    assert float(ours.std()) > 0.1  # a real sample, not a collapsed one


def test_non_divisor_step_counts_differ_from_diffusers_only_by_its_off_by_one():
    """diffusers' DDIM steps to t - 1000 // steps, which for 30 steps is not always the next trailing timestep
    (999 -> 966 -> 933, but the model is then run at 932): the pure sampler follows ComfyUI (the sample is at
    the noise level of the timestep the model sees), so the two differ slightly there and only there."""
    model = calm_model()
    inputs = conditioning(seed=30)
    ours = sampling.sample(model, *inputs, steps=30, cfg=2.0)
    theirs = diffusers_ddim(model, ddim_scheduler(), 30, 2.0, *inputs)
    difference = relative(ours, theirs)
    print(f"30 steps: max |ours - DDIM| / max |DDIM| = {difference:.2e}")
    assert EXACT < difference <= 5e-2


# ---- (c) the ComfyUI path ------------------------------------------------------------------------------

LAYOUTS = {"1->3": (1, 3), "2->2": (2, 2), "3->1": (3, 1)}
CALM_PACK = "tiny-imagpose-calm.safetensors"


@pytest.fixture(scope="module")
def comfy_setup(comfy_nodes, tiny_models):
    import comfy.sd
    import comfy.utils

    from imagpose.checkpoints import build_model, load_weights, save_pack
    from imagpose.image_encoder import load_dinov2

    root, paths = tiny_models
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(paths["vae"])))
    pack = save_pack(calm_model(), root / "imagpose" / CALM_PACK)
    return comfy_nodes, vae, build_model(load_weights(pack)), load_dinov2(paths["dinov2"])


def comfy_sample(nodes, vae, sources, source_poses, targets, sigmas, sampler, cfg, seed):
    """The nodes' conditioning and ComfyUI's SamplerCustom path; returns (scaled latent, noise, model patcher)."""
    import comfy.sample
    import comfy.samplers
    from test_fidelity import CELL

    def run(name, *args, **kwargs):
        return nodes.NODE_CLASS_MAPPINGS[name].execute(*args, **kwargs).result

    model, bundle = run("IMAGPoseModelLoader", CALM_PACK, "none", "auto", "auto")
    encoder = run("IMAGPoseImageEncoderLoader", "tiny-dinov2")[0]
    positive, negative = run("IMAGPoseFLCEncode", encoder, bundle, vae, sources, 0, False, CELL, CELL, "pad")
    (positive,), (negative,), (latent,), *_ = run("IMAGPoseILCPack", positive, negative, vae, sources, targets, CELL,
                                                  CELL, "pad", "auto", source_poses=source_poses)
    noise = torch.randn(latent["samples"].shape, generator=torch.Generator().manual_seed(seed))
    out = comfy.sample.sample_custom(model, noise, cfg, comfy.samplers.sampler_object(sampler), sigmas, positive,
                                     negative, latent["samples"], disable_pbar=True, seed=seed)
    return out * LATENT_SCALE, noise, model


@pytest.mark.parametrize("name,sampler,steps,cfg", [("1->3", "ddim", 20, 2.0), ("2->2", "euler", 30, 2.0),
                                                    ("3->1", "ddim", 7, 1.0)])
def test_pure_sampler_equals_comfyui(comfy_setup, name, sampler, steps, cfg):
    from test_fidelity import photo, pose_image, reference_inputs

    nodes, vae, model, dino = comfy_setup
    n_sources, n_targets = LAYOUTS[name]
    sources = torch.cat([photo(i, 96, 80) for i in range(n_sources)])
    source_poses = torch.cat([pose_image(10 + i, 96, 80) for i in range(n_sources)])
    targets = torch.cat([pose_image(20 + i, 80, 64) for i in range(n_targets)])
    sigmas = sampling.sampling_sigmas(steps)

    theirs, noise, patcher = comfy_sample(nodes, vae, sources, source_poses, targets, sigmas, sampler, cfg, seed=5)
    assert torch.equal(patcher.get_model_object("model_sampling").sigmas, sampling.schedule_sigmas())
    masked_latent, flags, pose_grid, context = reference_inputs(vae, dino, model, sources, source_poses, targets)
    ours = sampling.sample(model, noise, flags, masked_latent, pose_grid, context, cfg=cfg, sigmas=sigmas)
    difference = relative(ours, theirs)
    print(f"{name}, {sampler}, {steps} steps, cfg {cfg}: max |pure - ComfyUI| / max |ComfyUI| = {difference:.2e} "
          f"(max |latent| {theirs.abs().max():.2f})")
    assert difference <= EXACT
    # the comparison can fail: another noise, no pose guider or no FLC context gives a clearly other latent
    changes = {
        "noise": sampling.sample(model, torch.randn_like(noise), flags, masked_latent, pose_grid, context, cfg=cfg,
                                 sigmas=sigmas),
        "pose": sampling.sample(model, noise, flags, masked_latent, pose_grid, context, cfg=cfg, sigmas=sigmas,
                                use_pose=False),
        "context": sampling.sample(model, noise, flags, masked_latent, pose_grid, context * 0.5, cfg=cfg, sigmas=sigmas),
    }
    for what, other in changes.items():
        print(f"  another {what}: {relative(other, theirs):.1e}")
        assert relative(other, theirs) > 10 * EXACT, what
