"""The whole IMAGPose network: UNet with CVA, pose guider and patch embedder. Shared by trainer and nodes."""
from __future__ import annotations

import torch
from torch import nn

from .cva import AttentionFunction, sdpa_attention
from .patch_embed import PatchEmbedding
from .pose_guider import PoseGuider
from .unet import IMAGPoseUNet

LATENT_SCALE = 0.18215  # SD1.5 VAE scaling factor


def flc_context(patch_embed: PatchEmbedding, image_embeds: torch.Tensor, reference_latents: torch.Tensor) -> torch.Tensor:
    """FLC tokens: image-encoder tokens followed by patch-embedded (scaled) reference latents."""
    return torch.cat([image_embeds, patch_embed(reference_latents)], dim=1)


class IMAGPoseModel(nn.Module):
    def __init__(self, unet: IMAGPoseUNet, pose_guider: PoseGuider, patch_embed: PatchEmbedding):
        super().__init__()
        self.unet = unet
        self.pose_guider = pose_guider
        self.patch_embed = patch_embed

    def context(self, image_embeds: torch.Tensor, reference_latents: torch.Tensor) -> torch.Tensor:
        return flc_context(self.patch_embed, image_embeds, reference_latents)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        context: torch.Tensor,
        pose_grid: torch.Tensor,
        attention: AttentionFunction = sdpa_attention,
        use_cva: bool = True,
        use_pose: bool = True,
    ) -> torch.Tensor:
        """sample: (B, 9, 2h, 2w) = [noisy latent, flag, masked grid latent]; pose_grid: (B, 3, 2H, 2W) pixel-size pose grid in [0, 1]."""
        pose_features = self.pose_guider(pose_grid) if use_pose else None
        return self.unet(sample, timestep, context, pose_features, attention=attention, use_cva=use_cva)
