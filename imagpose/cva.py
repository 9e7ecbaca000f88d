"""Cross-view attention (CVA), local part: the four grid cells attend to each other like frames of a clip.

The module layout and parameter names follow AnimateDiff's "Vanilla" temporal module, which the authors
initialise from, so their `*.motion_modules.*` weights load unchanged. The global part of CVA is the UNet's
own spatial self-attention over the whole grid and needs no extra module.
"""
from __future__ import annotations

import math
from typing import Protocol

import torch
from diffusers.models.attention import FeedForward
from torch import nn

from .grid import cells_to_frames, frames_to_cells

CELLS = 4


class AttentionFunction(Protocol):
    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor: ...


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, heads*dim) tensors -> (B, L, heads*dim), PyTorch's scaled dot-product attention."""
    batch, length, inner = q.shape
    q, k, v = (t.view(batch, -1, heads, inner // heads).transpose(1, 2) for t in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(batch, length, inner)


class CellPositionEncoding(nn.Module):
    """Sinusoidal encoding of the cell index, added to each attention's normed input."""

    def __init__(self, dim: int, max_len: int = 32):
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
        pe = torch.zeros(1, max_len, dim)
        pe[0, :, 0::2] = torch.sin(position * div_term)
        pe[0, :, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe[:, : x.shape[1]].to(x.dtype)


class CellSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, max_len: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])
        self.pos_encoder = CellPositionEncoding(dim, max_len)

    def forward(self, x: torch.Tensor, attention: AttentionFunction) -> torch.Tensor:
        """x: (B*positions, cells, dim)."""
        x = self.pos_encoder(x)
        out = attention(self.to_q(x), self.to_k(x), self.to_v(x), self.heads)
        return self.to_out[0](out)


class CellTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, attentions: int, max_len: int):
        super().__init__()
        self.attention_blocks = nn.ModuleList([CellSelfAttention(dim, heads, max_len) for _ in range(attentions)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(attentions)])
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, attention: AttentionFunction) -> torch.Tensor:
        """x: (B*positions, cells, dim)."""
        for block, norm in zip(self.attention_blocks, self.norms):
            x = block(norm(x), attention) + x
        return self.ff(self.ff_norm(x)) + x


class CellTransformer(nn.Module):
    def __init__(self, channels: int, heads: int, blocks: int, attentions: int, max_len: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            [CellTransformerBlock(channels, heads, attentions, max_len) for _ in range(blocks)]
        )
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, grid: torch.Tensor, attention: AttentionFunction) -> torch.Tensor:
        batch, channels, height, width = grid.shape
        frames = cells_to_frames(grid).flatten(0, 1)  # (B*4, C, h, w): each cell normed on its own
        residual = frames
        h = self.norm(frames).permute(0, 2, 3, 1).reshape(batch, CELLS, -1, channels)
        h = self.proj_in(h)
        positions = h.shape[2]
        h = h.transpose(1, 2).reshape(batch * positions, CELLS, channels)  # attend across cells per position
        for block in self.transformer_blocks:
            h = block(h, attention)
        h = self.proj_out(h)
        h = h.reshape(batch, positions, CELLS, channels).transpose(1, 2)
        h = h.reshape(batch * CELLS, height // 2, width // 2, channels).permute(0, 3, 1, 2)
        frames = h + residual
        return frames_to_cells(frames.reshape(batch, CELLS, channels, height // 2, width // 2))


class CrossViewAttention(nn.Module):
    """One local CVA module; the output projection starts at zero so a fresh module is the identity."""

    def __init__(
        self,
        channels: int,
        heads: int = 8,
        blocks: int = 1,
        attentions: int = 2,
        max_len: int = 32,
        groups: int = 32,
    ):
        super().__init__()
        self.config = {
            "channels": channels, "heads": heads, "blocks": blocks,
            "attentions": attentions, "max_len": max_len, "groups": groups,
        }
        self.temporal_transformer = CellTransformer(channels, heads, blocks, attentions, max_len, groups)
        nn.init.zeros_(self.temporal_transformer.proj_out.weight)
        nn.init.zeros_(self.temporal_transformer.proj_out.bias)

    def forward(self, grid: torch.Tensor, attention: AttentionFunction = sdpa_attention) -> torch.Tensor:
        return self.temporal_transformer(grid, attention)

    @classmethod
    def config_from_state_dict(cls, state_dict: dict[str, torch.Tensor], heads: int = 8, groups: int = 32) -> dict:
        """Sizes from one module's weights (keys relative to the module)."""
        prefix = "temporal_transformer."
        blocks = len({k.split(".")[2] for k in state_dict if k.startswith(prefix + "transformer_blocks.")})
        attentions = len(
            {k.split(".")[4] for k in state_dict if k.startswith(prefix + "transformer_blocks.0.attention_blocks.")}
        )
        pe = state_dict[prefix + "transformer_blocks.0.attention_blocks.0.pos_encoder.pe"]
        return {
            "channels": state_dict[prefix + "proj_in.weight"].shape[1],
            "heads": heads,
            "blocks": blocks,
            "attentions": attentions,
            "max_len": pe.shape[1],
            "groups": groups,
        }

