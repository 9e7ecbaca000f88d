"""Generating target views from photos and poses as the ComfyUI nodes do, without ComfyUI (evaluation, validation).

The conditioning is built by the library functions the nodes call (`imagpose.imaging.fit_to_cell` with the nodes'
pad colours, `imagpose.grid.make_layout/layout_cells/assemble`, `imagpose.image_encoder.encode`,
`IMAGPoseModel.context`, the VAE posterior mean as the masked-grid latent) and sampled by `imagpose.sampling`
(ComfyUI's ddim/euler sampler on the trailing-DDIM sigmas, cfg against the zero context; tested equal to ComfyUI's
KSampler). The FLC reference is the first source, the nodes' default `reference_index`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from imagpose import grid, image_encoder, sampling
from imagpose.imaging import PHOTO_PAD, POSE_PAD, content_box, fit_to_cell
from imagpose.model import LATENT_SCALE

from .loss import vae_latents

STEPS = 20  # the paper's DDIM steps
CFG = 2.0
SEED = 42  # the authors' test scripts


@dataclass(frozen=True)
class Sampling:
    steps: int = STEPS
    cfg: float = CFG
    seed: int = SEED
    cell_height: int = 768
    cell_width: int = 512
    fit: str = "pad"

    def describe(self) -> dict:
        return {"sampler": "ddim (eta 0; Euler on ComfyUI's zero-terminal-SNR sigmas = DDIM), trailing timesteps, "
                           "v-prediction, cfg against a zero FLC context (the nodes' negative)",
                "steps": self.steps, "cfg": self.cfg, "seed": self.seed, "seed_rule": "the same seed for every grid",
                "cell": f"{self.cell_height}x{self.cell_width}", "fit": self.fit, "reference": "first source"}


def to_cells(images: torch.Tensor, settings: Sampling, pad: float) -> torch.Tensor:
    """(N, 3, H, W) photos or poses in [0, 1] -> (N, 3, cell_h, cell_w), fitted as the nodes fit them."""
    return fit_to_cell(images.float(), settings.cell_height, settings.cell_width, settings.fit, pad)


@torch.no_grad()
def grid_conditioning(model, vae, encoder, layout: grid.GridLayout, sources: torch.Tensor, source_poses: torch.Tensor,
                      target_poses: torch.Tensor, settings: Sampling, downscale: int) -> dict[str, torch.Tensor]:
    """Flag map, masked-grid latent, pose grid and FLC context of one grid (photos/poses (N, 3, H, W) in [0, 1])."""
    device = next(vae.parameters()).device
    source_cells = to_cells(sources, settings, PHOTO_PAD).to(device)
    images, poses = grid.layout_cells(layout, source_cells, to_cells(source_poses, settings, POSE_PAD).to(device),
                                      to_cells(target_poses, settings, POSE_PAD).to(device))
    masked, pose_grid, flags = grid.assemble([layout], images[None], poses[None], downscale)
    reference = source_cells[:1]
    tokens = image_encoder.encode(encoder, reference).float()
    model_param = next(model.parameters())
    context = model.context(tokens.to(model_param.device, model_param.dtype),
                            vae_latents(vae, reference, sample=False).to(model_param.device, model_param.dtype))
    return {"flags": flags.float(), "masked_latent": vae_latents(vae, masked, sample=False),
            "pose_grid": pose_grid.float(), "context": context.float()}


class CastingModel(torch.nn.Module):
    """Feeds the sampler's float32 tensors to a model held in another dtype (fp16/bf16) and returns float32."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, sample, timestep, context, pose_grid, **kwargs):
        dtype = next(self.model.parameters()).dtype
        return self.model(sample.to(dtype), timestep, context.to(dtype), pose_grid.to(dtype), **kwargs).float()


@torch.no_grad()
def sample_grids(model, vae, conditions: list[dict[str, torch.Tensor]], settings: Sampling,
                 use_cva: bool = True) -> torch.Tensor:
    """Decoded grids (B, 3, 2H, 2W) in [0, 1] for a batch of grid conditionings; each grid's noise from `seed`."""
    device = next(model.parameters()).device
    batch = {key: torch.cat([c[key] for c in conditions]).to(device) for key in conditions[0]}
    shape = batch["masked_latent"].shape[1:]
    noise = torch.cat([torch.randn((1, *shape), generator=torch.Generator().manual_seed(settings.seed))
                       for _ in conditions]).to(device)
    latent = sampling.sample(CastingModel(model), noise, batch["flags"], batch["masked_latent"], batch["pose_grid"],
                             batch["context"], steps=settings.steps, cfg=settings.cfg, use_cva=use_cva)
    vae_param = next(vae.parameters())
    decoded = vae.decode((latent / LATENT_SCALE).to(vae_param.dtype)).sample.float()
    return ((decoded + 1) / 2).clamp(0, 1)


def target_cells(grids: torch.Tensor, layout: grid.GridLayout) -> torch.Tensor:
    """(B, 3, 2H, 2W) grids -> (B, targets, 3, H, W) in the layout's target order."""
    cells = grid.split_grid(grids)
    return torch.stack([cells[i] for i in layout.target_cells], dim=1)


def compose_sheet(rows: list[list], height: int = 256):
    """PIL images side by side, one row per list, each scaled to `height` keeping its aspect; white background."""
    from PIL import Image

    scaled = [[im.resize((max(1, round(im.width * height / im.height)), height), Image.BICUBIC) for im in row]
              for row in rows]
    sheet = Image.new("RGB", (max(sum(im.width for im in row) for row in scaled), height * len(scaled)), (255, 255, 255))
    for r, row in enumerate(scaled):
        x = 0
        for image in row:
            sheet.paste(image, (x, r * height))
            x += image.width
    return sheet


def to_pil(image: torch.Tensor):
    """(3, H, W) in [0, 1] -> 8-bit PIL image."""
    from PIL import Image

    return Image.fromarray((image.detach().clamp(0, 1).permute(1, 2, 0).cpu().float().numpy() * 255).round()
                           .astype("uint8"))


def uncrop(cell: torch.Tensor, photo_hw: tuple[int, int], settings: Sampling) -> torch.Tensor:
    """The part of a generated cell (3, H, W) that shows the person's frame (inside the pad bars) at the cell's scale."""
    top, left, height, width = content_box(*photo_hw, settings.cell_height, settings.cell_width, settings.fit)
    return cell[:, top : top + height, left : left + width]
