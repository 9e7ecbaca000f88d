"""ComfyUI's `simple` scheduler vs the authors' trailing DDIM timesteps, and what each does to a whole sample.

    python benchmarks/steps_schedule.py [--steps 20 30] [--cfg 2.0]

For each step count prints the sampling steps where `simple` picks another training timestep than trailing
spacing (imagpose.sampling.trailing_timesteps, = diffusers' DDIMScheduler), then the final latent of
(a) the stock KSampler (ddim, simple), (b) SamplerCustom (ddim) with IMAGPose Trailing Sigmas, each against
(c) the authors' loop: diffusers' DDIMScheduler (trailing, v-prediction, zero terminal SNR, eta 0) stepping the
same plain IMAGPoseModel with the same conditioning and noise. Numbers: max |a - c| / max |c|.

The model is the tiny random one with its output layer scaled by 0.03: sampling the raw random model is chaotic
(float rounding alone moves its sample by percents), a trained denoiser is far tamer. CPU, in-process ComfyUI.
"""
import argparse
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
CALM = 0.03


def write_models(root: Path) -> Path:
    from imagpose.checkpoints import save_pack
    from imagpose.testing import make_tiny_model, write_random_sd_vae, write_tiny_dinov2

    model = make_tiny_model(seed=4)
    with torch.no_grad():
        model.unet.conv_out.weight.mul_(CALM)
        model.unet.conv_out.bias.mul_(CALM)
    pack = save_pack(model, root / "imagpose" / "calm.safetensors")
    write_tiny_dinov2(root / "imagpose" / "tiny-dinov2")
    write_random_sd_vae(root / "vae" / "tiny-vae.safetensors")
    return pack


@torch.no_grad()
def authors_ddim(model, steps, cfg, noise, flags, masked, pose, context):
    """diffusers' DDIMScheduler loop as the authors' pipeline runs it: CFG on v, zero-context negative."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", timestep_spacing="trailing", rescale_betas_zero_snr=True,
                              prediction_type="v_prediction", clip_sample=False, steps_offset=1)
    scheduler.set_timesteps(steps)
    x = noise * scheduler.init_noise_sigma
    flags, masked, pose = (torch.cat([t, t]) for t in (flags, masked, pose))
    context = torch.cat([context, torch.zeros_like(context)])
    for t in scheduler.timesteps:
        v = model(torch.cat([torch.cat([x, x]), flags, masked], dim=1), t.float().expand(2), context, pose)
        positive, negative = v.chunk(2)
        x = scheduler.step(negative + cfg * (positive - negative), t, x, eta=0.0).prev_sample
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 30])
    parser.add_argument("--cfg", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from harness.inprocess import load

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        pack = write_models(root / "models")
        (root / "custom_nodes").mkdir()
        nodes = load(root / "custom_nodes", root / "models")
        run(nodes, pack, args)


def run(nodes, pack, args) -> None:
    import comfy.sample
    import comfy.samplers
    from harness.imagpose_sampling import imagpose_conditioning

    from imagpose.checkpoints import build_model, load_weights
    from imagpose.model import LATENT_SCALE
    from imagpose.sampling import trailing_timesteps

    model, _, positive, negative, latent, _ = imagpose_conditioning(nodes, pack.name)
    context, options = positive[0]
    plain = build_model(load_weights(pack))
    conditioning = (options["concat_mask"], options["concat_latent_image"] * LATENT_SCALE,
                    options["model_conds"]["imagpose_pose"].cond, context)
    sampling = model.get_model_object("model_sampling")
    noise = comfy.sample.prepare_noise(latent["samples"], args.seed)
    for steps in args.steps:
        simple = comfy.samplers.calculate_sigmas(sampling, "simple", steps)
        chosen = sampling.timestep(simple[:-1]).round().long().tolist()
        trailing = trailing_timesteps(steps)
        off = [f"step {i + 1}: {a} instead of {b}" for i, (a, b) in enumerate(zip(chosen, trailing)) if a != b]
        print(f"{steps} steps: simple differs from trailing on {len(off)} of {steps} steps"
              + (f" ({'; '.join(off)})" if off else ""))
        ksampler = comfy.sample.sample(model, noise, steps, args.cfg, "ddim", "simple", positive, negative,
                                       latent["samples"], seed=args.seed, disable_pbar=True)
        sigmas = nodes.NODE_CLASS_MAPPINGS["IMAGPoseTrailingSigmas"].execute(model, steps).result[0]
        custom = comfy.sample.sample_custom(model, noise, args.cfg, comfy.samplers.sampler_object("ddim"), sigmas,
                                            positive, negative, latent["samples"], seed=args.seed, disable_pbar=True)
        reference = authors_ddim(plain, steps, args.cfg, noise, *conditioning)
        scale = reference.abs().max()
        for name, result in (("KSampler ddim/simple", ksampler), ("SamplerCustom ddim + Trailing Sigmas", custom)):
            difference = float((result * LATENT_SCALE - reference).abs().max() / scale)
            print(f"  {name:38s} vs the authors' DDIM loop: {difference:.2e}")


if __name__ == "__main__":
    main()
