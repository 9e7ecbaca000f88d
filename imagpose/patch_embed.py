"""Patch embedder: the reference's VAE latent as cross-attention tokens (the second half of the FLC)."""
from __future__ import annotations

import torch
from torch import nn


class PatchEmbedding(nn.Module):
    """Conv2d(latent channels -> token width, kernel = stride = patch size), flattened to (B, N, width)."""

    def __init__(self, patch_size: int = 16, in_channels: int = 4, embed_dim: int = 768):
        super().__init__()
        self.config = {"patch_size": patch_size, "in_channels": in_channels, "embed_dim": embed_dim}
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.proj(latent).flatten(2).transpose(1, 2)

    @classmethod
    def config_from_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> dict:
        weight = state_dict["proj.weight"]
        return {"patch_size": weight.shape[-1], "in_channels": weight.shape[1], "embed_dim": weight.shape[0]}
