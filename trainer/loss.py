"""One training loss evaluation: dataset sample -> grid inputs -> v-prediction MSE with min-SNR weights.

Conditioning is built exactly as the ComfyUI nodes build it at inference:
- masked grid: source cells shown, target cells black, VAE posterior MEAN x 0.18215 (the nodes' encode);
- flag map: 1 on source cells, 0 on targets; pose grid: every cell's pose, [0, 1];
- FLC: DINOv2 tokens of the reference cell (CLIP-style preprocessing) + patch tokens of its cell-size latent;
- the denoised latent is the full image grid, a posterior SAMPLE x 0.18215 (usual latent-diffusion training).
Condition dropout for classifier-free guidance (`train.condition_dropout`, see imagpose.training.condition_dropout):
'context' zeroes the whole FLC context of a sample (the nodes' negative); 'authors' zeroes the DINOv2 pixels and/or
the reference latents as the authors' training scripts did.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from imagpose import image_encoder as image_encoder_lib
from imagpose.grid import assemble, pack_grid
from imagpose.model import LATENT_SCALE
from imagpose.training import condition_dropout, layout_from_roles, min_snr_weights


def make_noise_scheduler(config: dict):
    """DDPM, zero-terminal-SNR rescaled betas, v-prediction, trailing spacing (the authors' training schedule)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=config["num_train_timesteps"],
        beta_start=config["beta_start"],
        beta_end=config["beta_end"],
        beta_schedule=config["beta_schedule"],
        rescale_betas_zero_snr=True,
        prediction_type="v_prediction",
        timestep_spacing="trailing",
        clip_sample=False,
    )


def grid_inputs(images: torch.Tensor, poses: torch.Tensor, roles: torch.Tensor, downscale: int):
    """(B, 4, 3, H, W) cells + (B, 4) roles -> image grid, masked grid, pose grid (B, 3, 2H, 2W), flags (B, 1, 2h, 2w)."""
    height, width = images.shape[-2:]
    layouts = [layout_from_roles(r.tolist(), height, width) for r in roles]
    return pack_grid(list(images.unbind(1))), *assemble(layouts, images, poses, downscale)


@torch.no_grad()
def vae_latents(vae, images: torch.Tensor, sample: bool) -> torch.Tensor:
    """Scaled latents of (B, 3, H, W) images in [0, 1]: a posterior sample or its mean, in float32."""
    parameter = next(vae.parameters())
    posterior = vae.encode((images * 2 - 1).to(parameter.device, parameter.dtype)).latent_dist
    latent = posterior.sample() if sample else posterior.mean
    return latent.float() * LATENT_SCALE


def training_loss(net, batch: dict, vae, encoder, scheduler, train: dict, downscale: int, stage: str,
                  model_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, dict]:
    """Weighted v-prediction MSE for one batch; `net` is a (possibly accelerate-wrapped) trainer.models.TrainingNet."""
    images, poses, roles = batch["images"], batch["poses"], batch["roles"]
    device = images.device
    batch_size = images.shape[0]
    image_grid, masked_grid, pose_grid, flags = grid_inputs(images, poses, roles, downscale)
    reference = images[torch.arange(batch_size, device=device), batch["reference"].to(device)]
    keep = condition_dropout(train["condition_dropout"], stage, batch_size, train["uncond_ratio"])

    latents = vae_latents(vae, image_grid, sample=True)
    masked_latents = vae_latents(vae, masked_grid, sample=False)
    reference_latents = vae_latents(vae, reference, sample=False) * keep.reference.to(device).view(-1, 1, 1, 1)
    image_embeds = image_encoder_lib.encode(encoder, reference, keep=keep.pixels).float()

    noise = torch.randn_like(latents)
    if train["noise_offset"]:
        noise = noise + train["noise_offset"] * torch.randn(batch_size, latents.shape[1], 1, 1, device=device)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), device=device).long()
    noisy = scheduler.add_noise(latents, noise, timesteps)
    target = scheduler.get_velocity(latents, noise, timesteps)

    sample = torch.cat([noisy, flags.to(noisy.dtype), masked_latents], dim=1)
    prediction = net(sample.to(model_dtype), timesteps, image_embeds.to(model_dtype), reference_latents.to(model_dtype),
                     pose_grid.to(device, model_dtype), keep.context.to(device, model_dtype))
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if train["snr_gamma"]:
        weights = min_snr_weights(scheduler.alphas_cumprod, timesteps, train["snr_gamma"])
        loss = (per_sample * weights).mean()
    else:
        loss = per_sample.mean()
    return loss, {"timesteps": timesteps, "keep": keep, "per_sample": per_sample.detach()}
