"""Feature-level (FLC) and image-level (ILC) conditioning in ComfyUI's CONDITIONING / LATENT forms.

The tensors are made by the library functions the trainer uses too (`imagpose.grid.assemble`,
`imagpose.model.flc_context`), so inference conditioning cannot drift from training conditioning.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import comfy.model_management
import node_helpers

from .. import grid
from ..image_encoder import AUTHORS_POSITIONS
from ..imaging import PHOTO_PAD, POSE_PAD, fit_to_cell, resized_size
from ..model import LATENT_SCALE, flc_context
from ..patch_embed import PatchEmbedding
from . import memory
from .errors import InputError
from .model_patch import POSE_COND, PoseGridCond

CELL_KEY = "imagpose_cell"  # (height, width, fit) the FLC was made for, checked by the ILC node
FLC_MULTIPLE = 8  # the reference is VAE-encoded at cell size
ILC_MULTIPLE = 64  # the grid latent must split evenly down to the UNet's lowest resolution


@dataclass
class IMAGPoseBundle:
    """What the loader hands to the FLC node besides the MODEL: the patch embedder of the loaded model and the
    DINOv2 position resampling it was trained with."""

    patch_embed: PatchEmbedding
    image_encoder_positions: str = AUTHORS_POSITIONS

    @torch.no_grad()
    def context(self, image_embeds: torch.Tensor, reference_latents: torch.Tensor) -> torch.Tensor:
        """`IMAGPoseModel.context` of the loaded model, on the patch embedder's device and dtype; float32 on the CPU."""
        parameter = next(self.patch_embed.parameters())
        inputs = (t.to(parameter.device, parameter.dtype) for t in (image_embeds, reference_latents))
        return flc_context(self.patch_embed, *inputs).float().cpu()


def to_channels_first(images: torch.Tensor) -> torch.Tensor:
    return images[..., :3].movedim(-1, 1).float()


def to_channels_last(images: torch.Tensor) -> torch.Tensor:
    return images.movedim(1, -1).clamp(0.0, 1.0)


def check_images(name: str, images: torch.Tensor | None, low: int, high: int) -> torch.Tensor:
    expected = f"{low} to {high} images"
    if images is None:
        raise InputError(name, expected, "none")
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise InputError(name, "an IMAGE batch (B, H, W, C)", f"shape {tuple(images.shape)}")
    if not low <= images.shape[0] <= high:
        raise InputError(name, expected, str(images.shape[0]))
    if images.shape[-1] == 1:
        images = images.expand(*images.shape[:-1], 3)
    return images


def check_cell(height: int | None, width: int | None, multiple: int) -> None:
    """Cell sides the UNet can split (None: not known yet, a value linked from another node)."""
    if height is None or width is None:
        return
    if height % multiple or width % multiple or height < multiple or width < multiple:
        raise InputError("width/height", f"a cell whose sides are a multiple of {multiple} px, so the UNet can split "
                         "it down to its lowest resolution", f"{width}x{height}")


def check_vae(vae) -> None:
    """The SD1.5 latent space IMAGPose works in: 4 channels, 8x smaller than the image."""
    channels, scale = getattr(vae, "latent_channels", None), vae.spacial_compression_encode()
    if channels != 4 or scale != 8:
        raise InputError("vae", "an SD1.5-family VAE (4 latent channels, 8x smaller than the image), e.g. "
                         "sd-vae-ft-mse", f"a VAE with {channels} latent channels and {scale}x downscaling")


def fit_cells(name: str, images: torch.Tensor, height: int, width: int, fit: str, pad: float) -> torch.Tensor:
    """IMAGE batch -> (B, 3, height, width) cells (`fit_to_cell`), refused when the resized images would not fit in
    memory (crop enlarges an image of another aspect ratio: a 2048x8 strip cropped into a 2048x2048 cell is 524288 px
    wide before the crop)."""
    count, src_h, src_w = images.shape[:3]
    new_h, new_w = resized_size(src_h, src_w, height, width, fit)
    needed = 2 * memory.image_bytes(count, new_h, new_w) + memory.image_bytes(count, height, width)
    memory.require(name, f"images that can be fitted ({fit}) into {width}x{height} cells", needed,
                   f"{count} image(s) of {src_w}x{src_h}, resized to {new_w}x{new_h} first")
    return fit_to_cell(to_channels_first(images), height, width, fit, pad)


def check_vae_memory(vae, cells: int, height: int, width: int, what: str) -> None:
    """VAE-encoding `cells` cells of height x width px (see memory.vae_encode_bytes), refused when it would not fit."""
    needed = memory.vae_encode_bytes(vae, cells * height * width)
    if needed:
        memory.require("width/height", what, needed, f"{width}x{height} cells ({cells * height * width / 1e6:.1f} "
                       f"megapixels to VAE-encode on {vae.device})", device=vae.device)


def encode_latent(vae, images_bchw: torch.Tensor) -> torch.Tensor:
    """Raw (unscaled) VAE latent of (B, 3, H, W) images in [0, 1]."""
    return vae.encode(to_channels_last(images_bchw)).float()


def flc_conditioning(encoder, bundle: IMAGPoseBundle, vae, sources: torch.Tensor, reference_index: int,
                     use_all_sources: bool, height: int, width: int, fit: str) -> tuple[list, list]:
    """Positive: [DINOv2 tokens, patch tokens of the cell-size reference latent]; negative: zeros like it."""
    sources = check_images("source_images", sources, 1, grid.MAX_SOURCES)
    check_cell(height, width, FLC_MULTIPLE)
    if not use_all_sources and reference_index >= sources.shape[0]:
        raise InputError("reference_index", f"0..{sources.shape[0] - 1} for {sources.shape[0]} source image(s)",
                         str(reference_index))
    picked = sources if use_all_sources else sources[reference_index : reference_index + 1]
    check_vae(vae)
    check_vae_memory(vae, picked.shape[0], height, width, "cells the VAE can encode")
    cells = fit_cells("source_images", picked, height, width, fit, PHOTO_PAD)
    width_expected = bundle.patch_embed.config["embed_dim"]
    if encoder.width != width_expected:
        raise InputError("image_encoder", f"tokens {width_expected} wide, as this IMAGPose model takes (e.g. "
                         "DINOv2-base for the released setting)", f"an encoder whose tokens are {encoder.width} wide")
    tokens = encoder.encode(cells, bundle.image_encoder_positions)
    per_source = bundle.context(tokens, encode_latent(vae, cells) * LATENT_SCALE)  # (N, tokens, width)
    context = per_source.reshape(1, -1, per_source.shape[-1])  # all sources' tokens side by side
    options = {CELL_KEY: (height, width, fit)}
    return [[context, dict(options)]], [[torch.zeros_like(context), dict(options)]]


def check_same_cell(name: str, conditioning: list, height: int, width: int, fit: str) -> None:
    for _, options in conditioning:
        made_for = options.get(CELL_KEY)
        if made_for is not None and tuple(made_for) != (height, width, fit):
            raise InputError(name, f"conditioning made by IMAGPose FLC Encode for this node's cell {width}x{height} "
                             f"({fit}); set the same width, height and fit on both nodes",
                             f"conditioning made for cell {made_for[1]}x{made_for[0]} ({made_for[2]})")


def ilc_conditioning(positive: list, negative: list, vae, sources: torch.Tensor, target_poses: torch.Tensor,
                     source_poses: torch.Tensor | None, height: int, width: int, fit: str,
                     extract_poses=None) -> tuple[list, list, dict, grid.GridLayout]:
    """Attach the flag map, masked grid latent and pose grid to both conditionings; empty grid latent; layout."""
    sources = check_images("source_images", sources, 1, grid.MAX_SOURCES)
    target_poses = check_images("target_poses", target_poses, 1, grid.MAX_TARGETS)
    if sources.shape[0] + target_poses.shape[0] > grid.CELLS:
        raise InputError("source_images + target_poses", f"at most {grid.CELLS} cells in the grid",
                         f"{sources.shape[0]} sources and {target_poses.shape[0]} targets, which need "
                         f"{sources.shape[0] + target_poses.shape[0]} cells")
    if source_poses is None:
        if extract_poses is None:
            raise InputError("source_poses", "rendered source poses, or a pose detector to extract them",
                             "not connected, and no pose detector available")
        source_poses = extract_poses(sources)
    source_poses = check_images("source_poses", source_poses, 1, grid.MAX_SOURCES)
    if source_poses.shape[0] != sources.shape[0]:
        raise InputError("source_poses", f"one pose per source image ({sources.shape[0]})", str(source_poses.shape[0]))
    check_cell(height, width, ILC_MULTIPLE)
    check_same_cell("positive", positive, height, width, fit)
    check_same_cell("negative", negative, height, width, fit)
    check_vae(vae)
    check_vae_memory(vae, grid.CELLS, height, width, "a cell whose 2x2 grid the VAE can encode")

    layout = grid.make_layout(sources.shape[0], target_poses.shape[0], height, width)
    images, poses = grid.layout_cells(layout,
                                      fit_cells("source_images", sources, height, width, fit, PHOTO_PAD),
                                      fit_cells("source_poses", source_poses, height, width, fit, POSE_PAD),
                                      fit_cells("target_poses", target_poses, height, width, fit, POSE_PAD))
    masked, pose_grid, flags = grid.assemble([layout], images[None], poses[None], vae.spacial_compression_encode())
    masked_latent = encode_latent(vae, masked)
    values = {"concat_mask": flags, "concat_latent_image": masked_latent,
              "model_conds": {POSE_COND: PoseGridCond(pose_grid)}}
    latent = torch.zeros_like(masked_latent, device=comfy.model_management.intermediate_device())
    return (node_helpers.conditioning_set_values(positive, values), node_helpers.conditioning_set_values(negative, values),
            {"samples": latent}, layout)


def unpack_images(images: torch.Tensor, layout: grid.GridLayout, cells: str) -> torch.Tensor:
    """Decoded grid IMAGE batch -> target cells (pose order) or all four cells, per grid in the batch."""
    expected = (layout.cell_height * 2, layout.cell_width * 2)
    if images.ndim != 4:
        raise InputError("images", "an IMAGE batch (B, H, W, C)", f"shape {tuple(images.shape)}")
    if tuple(images.shape[1:3]) != expected:
        raise InputError("images", f"decoded grids of {expected[1]}x{expected[0]} px for this layout",
                         f"{images.shape[2]}x{images.shape[1]}")
    order = layout.target_cells if cells == "targets" else range(grid.CELLS)
    memory.require("images", "cells to cut out", memory.image_bytes(images.shape[0] * len(order), layout.cell_height,
                   layout.cell_width, images.shape[-1]), f"{images.shape[0]} grid(s) of {expected[1]}x{expected[0]}")
    split = grid.split_grid(images.movedim(-1, 1))
    return torch.stack([split[i] for i in order], dim=1).flatten(0, 1).movedim(1, -1)
