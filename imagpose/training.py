"""Model-level pieces of IMAGPose training: the loss weighting, random cell roles, conv_in widening.

Pure functions (no file access, no global state) so the trainer and its tests share one definition.
"""
from __future__ import annotations

import torch

from .grid import CELLS, GridLayout
from .unet import IN_CHANNELS


def snr(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at each timestep (0 at a zero-terminal-SNR last step)."""
    alpha_bar = alphas_cumprod.to(timesteps.device, torch.float64)[timesteps]
    return (alpha_bar / (1.0 - alpha_bar)).float()


def min_snr_weights(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample loss weights for a v-prediction MSE: min(snr + 1, gamma) / (snr + 1).

    The authors' form (Min-SNR weighting with the v-objective's snr + 1). At the zero-terminal-SNR step
    (snr = 0, the first step of trailing sampling) the weight is 1; the paper's min(snr, gamma) / (snr + 1)
    would give that step weight 0 and leave it untrained.
    """
    if gamma <= 0:
        raise ValueError(f"snr_gamma must be > 0 (or disable min-SNR weighting), got {gamma}")
    shifted = snr(alphas_cumprod, timesteps) + 1.0
    return torch.clamp(shifted, max=gamma) / shifted


def random_cell_roles(generator: torch.Generator | None = None) -> tuple[bool, ...]:
    """One True (source) / False (target) per cell, uniformly among the 14 mixes with >= 1 of each."""
    while True:
        roles = tuple(bool(b) for b in torch.randint(0, 2, (CELLS,), generator=generator).tolist())
        if any(roles) and not all(roles):
            return roles


def layout_from_roles(roles: tuple[bool, ...] | list[bool], cell_height: int, cell_width: int) -> GridLayout:
    """Layout where every source cell shows its own image (source index = cell index); targets in cell order."""
    if len(roles) != CELLS:
        raise ValueError(f"expected {CELLS} cell roles, got {len(roles)}")
    if not any(roles) or all(roles):
        raise ValueError(f"cell roles need at least one source and one target, got {tuple(roles)}")
    cell_sources = tuple(i if source else None for i, source in enumerate(roles))
    target_cells = tuple(i for i, source in enumerate(roles) if not source)
    return GridLayout(cell_sources, target_cells, cell_height, cell_width)


def widen_conv_in(weight: torch.Tensor, in_channels: int = IN_CHANNELS) -> torch.Tensor:
    """SD conv_in weight (out, 4, k, k) -> (out, in_channels, k, k): original channels kept, new ones zero.

    With zero new channels the widened UNet computes exactly what the base UNet did on the noisy latent.
    """
    if weight.ndim != 4:
        raise ValueError(f"conv_in weight must be 4-D, got shape {tuple(weight.shape)}")
    if weight.shape[1] > in_channels:
        raise ValueError(f"conv_in already has {weight.shape[1]} input channels (> {in_channels})")
    widened = weight.new_zeros(weight.shape[0], in_channels, *weight.shape[2:])
    widened[:, : weight.shape[1]] = weight
    return widened
