"""Sampling IMAGPose without ComfyUI, computing what the nodes + ComfyUI's sampler compute.

IMAGPose is trained with v-prediction on SD1.5's scaled-linear betas (0.00085 -> 0.012) rescaled to zero
terminal SNR, and sampled with DDIM (eta 0), trailing timestep spacing. This module has
- `trailing_timesteps(steps)`: the timesteps diffusers' DDIMScheduler(timestep_spacing="trailing") visits;
- `schedule_sigmas()`: the sigma table of ComfyUI's ModelSamplingDiscrete(zsnr=True), which the pack's loader
  sets (ComfyUI keeps the last step's alpha_bar at 4.9e-8 instead of 0, so its largest sigma is finite);
- `sampling_sigmas(steps)`: those trailing timesteps as ComfyUI SIGMAS (ending in 0), for SamplerCustom;
- `sample(...)`: ComfyUI's `euler` / `ddim` sampler (Euler steps on sigma, which is DDIM with eta 0) with
  classifier-free guidance against a zero FLC context, the nodes' negative.
tests/test_sampling.py proves it equal to a diffusers DDIMScheduler loop and to ComfyUI's own sampling.
Latents here are scaled (x 0.18215), as the model sees them; ComfyUI's LATENT holds them unscaled.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 0.00085  # SD1.5 scaled-linear betas (ComfyUI calls this schedule "linear")
BETA_END = 0.012
TERMINAL_ALPHA_BAR = 4.8973451890853435e-08  # ComfyUI's rescale_zero_terminal_snr_sigmas keeps this, not 0


def trailing_timesteps(steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> list[int]:
    """Descending timesteps of `steps`-step trailing spacing: round(arange(T, 0, -T/steps)) - 1, as diffusers."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be 1..{num_train_timesteps}, got {steps}")
    ratio = num_train_timesteps / steps
    return (np.round(np.arange(num_train_timesteps, 0, -ratio)).astype(np.int64) - 1).tolist()


def schedule_sigmas(num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, beta_start: float = BETA_START,
                    beta_end: float = BETA_END) -> torch.Tensor:
    """Sigma per training timestep, float32, as ComfyUI's ModelSamplingDiscrete(zsnr=True) builds it (in float64)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
    # zero terminal SNR: shift sqrt(alpha_bar) so the last is 0 and rescale so the first is unchanged
    root = (1 / ((sigmas * sigmas) + 1)).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    alpha_bar = root**2
    alpha_bar[-1] = TERMINAL_ALPHA_BAR
    return (((1 - alpha_bar) / alpha_bar) ** 0.5).float()


def sampling_sigmas(steps: int, table: torch.Tensor | None = None) -> torch.Tensor:
    """(steps + 1,) sigmas at the trailing timesteps, then 0: a SIGMAS input for ComfyUI's SamplerCustom."""
    table = schedule_sigmas() if table is None else table
    return torch.cat([table[trailing_timesteps(steps, len(table))], table.new_zeros(1)])


def sigma_to_timestep(sigma: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """The training timestep nearest in log sigma (ComfyUI's ModelSamplingDiscrete.timestep), as float."""
    distance = sigma.log().reshape(-1, 1) - table.log().to(sigma.device).reshape(1, -1)
    return distance.abs().argmin(dim=1).reshape(sigma.shape).float()


def denoised_from_v(x: torch.Tensor, sigma: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """x0 estimate from a v-prediction at noise level sigma (ComfyUI's V_PREDICTION.calculate_denoised, sigma_data 1)."""
    return x / (sigma**2 + 1) - v * sigma / (sigma**2 + 1) ** 0.5


@torch.no_grad()
def sample(model, noise: torch.Tensor, flags: torch.Tensor, masked_latent: torch.Tensor, pose_grid: torch.Tensor,
           context: torch.Tensor, steps: int = 30, cfg: float = 2.0, sigmas: torch.Tensor | None = None,
           callback: Callable[[int, torch.Tensor], None] | None = None, **model_kwargs) -> torch.Tensor:
    """Generate the grid latent (scaled) with an `imagpose.model.IMAGPoseModel`.

    noise (B, 4, 2h, 2w) standard normal; flags (B, 1, 2h, 2w); masked_latent (B, 4, 2h, 2w), scaled;
    pose_grid (B, 3, 2H, 2W) in [0, 1]; context (B, tokens, width), the FLC tokens. The negative is a zero
    context with the same image-level conditioning; cfg 1 skips it (as ComfyUI does). `sigmas` defaults to
    sampling_sigmas(steps); model_kwargs go to the model (e.g. use_cva=False for a stage-1 check).
    """
    table = schedule_sigmas()
    sigmas = sampling_sigmas(steps, table) if sigmas is None else sigmas.float().cpu()
    device = noise.device
    batch = noise.shape[0]
    flags, masked_latent = flags.expand(batch, -1, -1, -1), masked_latent.expand(batch, -1, -1, -1)
    pose_grid, context = pose_grid.expand(batch, -1, -1, -1), context.expand(batch, -1, -1)
    guided = not math.isclose(cfg, 1.0)
    if guided:  # one batch holds the positive and the negative, as ComfyUI batches them
        flags, masked_latent, pose_grid = (torch.cat([t, t]) for t in (flags, masked_latent, pose_grid))
        context = torch.cat([context, torch.zeros_like(context)])

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        x_in = torch.cat([x, x]) if guided else x
        scaled = x_in / (sigma**2 + 1) ** 0.5
        timestep = sigma_to_timestep(sigma, table).to(device).expand(x_in.shape[0])
        v = model(torch.cat([scaled, flags, masked_latent], dim=1), timestep, context, pose_grid, **model_kwargs)
        denoised = denoised_from_v(x_in, sigma, v.float())
        if not guided:
            return denoised
        positive, negative = denoised.chunk(2)
        return negative + (positive - negative) * cfg

    # ComfyUI's noise scaling: starting at the largest sigma, the latent is noise * sqrt(1 + sigma^2)
    first = sigmas[0]
    at_max = math.isclose(float(first), float(table[-1]), rel_tol=1e-5) or float(first) > float(table[-1])
    x = noise.float() * (torch.sqrt(1.0 + first**2) if at_max else first).to(device)
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i].to(device)
        denoised = denoise(x, sigma)
        if callback is not None:
            callback(i, denoised)
        x = x + (x - denoised) / sigma * (sigmas[i + 1].to(device) - sigma)  # Euler on sigma = DDIM, eta 0
    return x
