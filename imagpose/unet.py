"""The IMAGPose denoising UNet: a 9-channel SD1.5-family UNet with local CVA modules after every block layer.

It is diffusers' UNet2DConditionModel (same parameter names as the authors' checkpoints) plus
`motion_modules` lists on each down, mid and up block. Its forward is the plain-PyTorch reference of the
method; the ComfyUI integration must compute the same thing.
"""
from __future__ import annotations

from typing import Any

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from .cva import AttentionFunction, CrossViewAttention, sdpa_attention

IN_CHANNELS = 9  # noisy latent (4) + flag (1) + masked grid latent (4)
DEFAULT_HEADS = 8  # SD1.5 uses 8 heads at every level; head count is not visible in the weights
MOTION_KEY = ".motion_modules."  # in every CVA weight's name (AnimateDiff's, which the authors kept)


def unet_config_from_state_dict(state_dict: dict[str, torch.Tensor], heads: int = DEFAULT_HEADS) -> dict[str, Any]:
    """diffusers UNet2DConditionModel config derived from tensor shapes (no file names, no presets)."""
    def count(prefix: str) -> int:
        return len({k[len(prefix):].split(".")[0] for k in state_dict if k.startswith(prefix)})

    num_down = count("down_blocks.")
    num_up = count("up_blocks.")
    if num_down == 0 or num_down != num_up:
        raise ValueError("not a UNet: down_blocks/up_blocks missing or unbalanced")
    block_out_channels = [state_dict[f"down_blocks.{i}.resnets.0.conv2.weight"].shape[0] for i in range(num_down)]
    has_attention = [f"down_blocks.{i}.attentions.0.proj_in.weight" in state_dict for i in range(num_down)]
    up_has_attention = [f"up_blocks.{i}.attentions.0.proj_in.weight" in state_dict for i in range(num_up)]
    first_attention = next(
        (f"down_blocks.{i}.attentions.0" for i in range(num_down) if has_attention[i]), "mid_block.attentions.0"
    )
    proj_in = state_dict[f"{first_attention}.proj_in.weight"]
    return {
        "sample_size": 64,
        "in_channels": state_dict["conv_in.weight"].shape[1],
        "out_channels": state_dict["conv_out.weight"].shape[0],
        "block_out_channels": block_out_channels,
        "layers_per_block": count("down_blocks.0.resnets."),
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in has_attention],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in up_has_attention],
        "cross_attention_dim": state_dict[f"{first_attention}.transformer_blocks.0.attn2.to_k.weight"].shape[1],
        "transformer_layers_per_block": count(f"{first_attention}.transformer_blocks."),
        "attention_head_dim": heads,  # diffusers' historical name: this is the head count for SD1.5
        "use_linear_projection": proj_in.ndim == 2,
        "norm_num_groups": 32,  # not visible in the weights either; SD1.5 value
    }


class IMAGPoseUNet(UNet2DConditionModel):
    """UNet2DConditionModel + local CVA (`motion_modules`) after each resnet[/attention] pair."""

    def __init__(self, *args, cva_config: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.gradient_checkpointing = False  # set by diffusers' enable_gradient_checkpointing()
        cva_config = dict(cva_config or {})
        cva_config.setdefault("groups", self.config.norm_num_groups)
        self.cva_config = cva_config

        def modules(channels: int, count: int) -> nn.ModuleList:
            return nn.ModuleList([CrossViewAttention(channels, **cva_config) for _ in range(count)])

        for block in self.down_blocks:
            block.motion_modules = modules(block.resnets[0].out_channels, len(block.resnets))
        self.mid_block.motion_modules = modules(self.mid_block.resnets[0].out_channels, 1)
        for block in self.up_blocks:
            block.motion_modules = modules(block.resnets[0].out_channels, len(block.resnets))

    def cva_modules(self) -> list[CrossViewAttention]:
        """All CVA modules in execution order (down, mid, up)."""
        blocks = [*self.down_blocks, self.mid_block, *self.up_blocks]
        return [m for block in blocks for m in block.motion_modules]

    def forward(  # type: ignore[override]
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        pose_features: torch.Tensor | None = None,
        attention: AttentionFunction = sdpa_attention,
        use_cva: bool = True,
    ) -> torch.Tensor:
        """sample: (B, 9, 2h, 2w) grid latent input; returns the model output (v-prediction), (B, 4, 2h, 2w)."""
        timesteps = timestep
        if not torch.is_tensor(timesteps):
            timesteps = torch.tensor([timesteps], device=sample.device)
        timesteps = timesteps.to(sample.device).flatten().expand(sample.shape[0])
        emb = self.time_embedding(self.time_proj(timesteps).to(sample.dtype))
        context = encoder_hidden_states

        def run(module, *args):
            # this forward calls the block layers itself, so it honours the checkpointing flag itself
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                return self._gradient_checkpointing_func(module, *args)
            return module(*args)

        def cva(module: CrossViewAttention, h: torch.Tensor) -> torch.Tensor:
            return run(module, h, attention) if use_cva else h

        def attend(attn, h: torch.Tensor) -> torch.Tensor:  # checkpoints its own transformer blocks when enabled
            return attn(h, encoder_hidden_states=context, return_dict=False)[0]

        h = self.conv_in(sample)
        if pose_features is not None:
            h = h + pose_features
        skips = [h]
        for block in self.down_blocks:
            attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
            for resnet, attn, module in zip(block.resnets, attentions, block.motion_modules):
                h = run(resnet, h, emb)
                if attn is not None:
                    h = attend(attn, h)
                h = cva(module, h)
                skips.append(h)
            for downsampler in block.downsamplers or []:
                h = downsampler(h)
                skips.append(h)

        mid = self.mid_block
        h = run(mid.resnets[0], h, emb)
        h = attend(mid.attentions[0], h)
        h = cva(mid.motion_modules[0], h)
        for resnet in mid.resnets[1:]:
            h = run(resnet, h, emb)

        for block in self.up_blocks:
            attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
            for resnet, attn, module in zip(block.resnets, attentions, block.motion_modules):
                h = run(resnet, torch.cat([h, skips.pop()], dim=1), emb)
                if attn is not None:
                    h = attend(attn, h)
                h = cva(module, h)
            for upsampler in block.upsamplers or []:
                h = upsampler(h)

        h = self.conv_act(self.conv_norm_out(h))
        return self.conv_out(h)
