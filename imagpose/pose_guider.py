"""Pose guider: a small conv net that turns the 2x2 pose grid into features added after conv_in."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_BLOCK_OUT_CHANNELS = (16, 32, 96, 256)


class PoseGuider(nn.Module):
    """conv_in, then per channel step a [conv3x3, conv3x3 stride 2] pair (SiLU after each), then conv_out.

    The output has `embedding_channels` channels at 1/2**(len(block_out_channels)-1) of the pose image size,
    i.e. the latent resolution for the default four steps. conv_out starts at zero so a fresh guider adds nothing.
    """

    def __init__(
        self,
        embedding_channels: int = 320,
        conditioning_channels: int = 3,
        block_out_channels: tuple[int, ...] = DEFAULT_BLOCK_OUT_CHANNELS,
    ):
        super().__init__()
        self.config = {
            "embedding_channels": embedding_channels,
            "conditioning_channels": conditioning_channels,
            "block_out_channels": list(block_out_channels),
        }
        self.conv_in = nn.Conv2d(conditioning_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.blocks = nn.ModuleList()
        for channels_in, channels_out in zip(block_out_channels[:-1], block_out_channels[1:]):
            self.blocks.append(nn.Conv2d(channels_in, channels_in, kernel_size=3, padding=1))
            self.blocks.append(nn.Conv2d(channels_in, channels_out, kernel_size=3, padding=1, stride=2))
        self.conv_out = nn.Conv2d(block_out_channels[-1], embedding_channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.blocks) // 2)

    def forward(self, pose_grid: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv_in(pose_grid))
        for block in self.blocks:
            h = F.silu(block(h))
        return self.conv_out(h)

    @classmethod
    def config_from_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> dict:
        conv_in = state_dict["conv_in.weight"]
        channels = [conv_in.shape[0]]
        index = 1
        while f"blocks.{index}.weight" in state_dict:
            channels.append(state_dict[f"blocks.{index}.weight"].shape[0])
            index += 2
        return {
            "embedding_channels": state_dict["conv_out.weight"].shape[0],
            "conditioning_channels": conv_in.shape[1],
            "block_out_channels": channels,
        }
