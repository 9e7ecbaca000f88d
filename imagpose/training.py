"""Model-level pieces of IMAGPose training: the loss weighting, random cell roles, conv_in widening, condition dropout.

Pure functions (no file access, no global state) so the trainer and its tests share one definition.
"""
from __future__ import annotations

from dataclasses import dataclass

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


CONDITION_DROPOUTS = ("context", "authors")


@dataclass
class ConditionKeep:
    """Per-sample keep flags (1 keep, 0 drop) of one training batch, as float tensors of shape (B,)."""

    context: torch.Tensor  # 0: the whole FLC context (DINOv2 and patch tokens) zeroed, the nodes' negative
    pixels: torch.Tensor  # 0: the DINOv2 input pixels zeroed after normalisation (the authors' dropout)
    reference: torch.Tensor  # 0: the reference latents zeroed before the patch embedder (the authors' dropout)


def condition_dropout(mode: str, stage: str, batch_size: int, ratio: float,
                      generator: torch.Generator | None = None) -> ConditionKeep:
    """Which conditions of a batch are dropped for classifier-free guidance.

    'context' (every stage): each sample's whole FLC context with probability `ratio`, i.e. exactly the zero
    context the nodes use as negative. 'authors', as their training scripts: in stage 1 the DINOv2 pixels of the
    whole batch on a `ratio` share of the steps; in stage 2 and end-to-end, per sample, the DINOv2 pixels, the
    reference latents or both, each with probability ratio / 2 (5 / 5 / 5 % at the default 0.1).
    """
    if mode not in CONDITION_DROPOUTS:
        raise ValueError(f"condition dropout must be one of {CONDITION_DROPOUTS}, got {mode!r}")
    ones = torch.ones(batch_size)
    if mode == "context":
        return ConditionKeep((torch.rand(batch_size, generator=generator) >= ratio).float(), ones, ones)
    if stage == "stage1":
        keep = float(torch.rand(1, generator=generator).item() >= ratio)
        return ConditionKeep(ones, ones * keep, ones)
    draw = torch.rand(batch_size, generator=generator)
    pixels_only, reference_only = draw < ratio / 2, (draw >= ratio / 2) & (draw < ratio)
    both = (draw >= ratio) & (draw < 1.5 * ratio)
    return ConditionKeep(ones, (~(pixels_only | both)).float(), (~(reference_only | both)).float())
