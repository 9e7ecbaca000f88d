"""Feature-level (FLC) and image-level (ILC) conditioning in ComfyUI's CONDITIONING / LATENT forms."""
from __future__ import annotations

from dataclasses import dataclass

import torch

import comfy.conds
import comfy.model_management

from .. import grid
from ..imaging import fit_to_cell
from ..model import LATENT_SCALE
from ..patch_embed import PatchEmbedding
from .model_patch import POSE_COND

CELL_KEY = "imagpose_cell"  # (height, width, fit) the FLC was made for, checked by the ILC node
PHOTO_PAD = 1.0  # white, like the studio backgrounds of the training photos
POSE_PAD = 0.0  # black, the background of rendered skeletons


class InputError(ValueError):
    """Bad node input; the message names the input, what was expected and what came."""


@dataclass
class IMAGPoseBundle:
    """What the loader hands to the FLC node besides the MODEL."""

    patch_embed: PatchEmbedding
    name: str


def to_channels_first(images: torch.Tensor) -> torch.Tensor:
    return images[..., :3].movedim(-1, 1).float()


def to_channels_last(images: torch.Tensor) -> torch.Tensor:
    return images.movedim(1, -1).clamp(0.0, 1.0)


def check_images(name: str, images: torch.Tensor | None, low: int, high: int) -> torch.Tensor:
    if images is None:
        raise InputError(f"{name}: expected {low} to {high} images, got none")
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise InputError(f"{name}: expected an IMAGE batch (B, H, W, C), got shape {tuple(images.shape)}")
    if not low <= images.shape[0] <= high:
        raise InputError(f"{name}: expected {low} to {high} images, got {images.shape[0]}")
    if images.shape[-1] == 1:
        images = images.expand(*images.shape[:-1], 3)
    return images


def check_cell(height: int, width: int, multiple: int) -> None:
    if height % multiple or width % multiple or height < multiple or width < multiple:
        raise InputError(
            f"width/height: the cell must be a multiple of {multiple} px so the UNet can split it down to its "
            f"lowest resolution; got {width}x{height}"
        )


def encode_latent(vae, images_bchw: torch.Tensor) -> torch.Tensor:
    """Raw (unscaled) VAE latent of (B, 3, H, W) images in [0, 1]."""
    return vae.encode(to_channels_last(images_bchw)).float()


def flc_conditioning(encoder, bundle: IMAGPoseBundle, vae, sources: torch.Tensor, reference_index: int,
                     use_all_sources: bool, height: int, width: int, fit: str) -> tuple[list, list]:
    """Positive: [DINOv2 tokens, patch tokens of the cell-size reference latent]; negative: zeros like it."""
    sources = check_images("source_images", sources, 1, grid.MAX_SOURCES)
    check_cell(height, width, 8)
    if not use_all_sources and reference_index >= sources.shape[0]:
        raise InputError(
            f"reference_index: expected 0..{sources.shape[0] - 1} for {sources.shape[0]} source image(s), got {reference_index}"
        )
    picked = sources if use_all_sources else sources[reference_index : reference_index + 1]
    cells = fit_to_cell(to_channels_first(picked), height, width, fit, PHOTO_PAD)
    tokens = encoder.encode(cells)
    patch_embed = bundle.patch_embed
    latent = encode_latent(vae, cells) * LATENT_SCALE
    parameter = next(patch_embed.parameters())
    with torch.no_grad():
        patches = patch_embed(latent.to(parameter.device, parameter.dtype)).float()
    if tokens.shape[-1] != patches.shape[-1]:
        raise InputError(
            f"image_encoder: its tokens are {tokens.shape[-1]} wide but this IMAGPose model expects "
            f"{patches.shape[-1]} (e.g. DINOv2-base for the released setting)"
        )
    per_source = torch.cat([tokens.float().cpu(), patches.cpu()], dim=1)  # (N, tokens, width)
    context = per_source.reshape(1, -1, per_source.shape[-1])  # all sources' tokens side by side
    options = {CELL_KEY: (height, width, fit)}
    return [[context, dict(options)]], [[torch.zeros_like(context), dict(options)]]


def _with_values(conditioning: list, values: dict, model_conds: dict) -> list:
    out = []
    for context, options in conditioning:
        options = {**options, **values, "model_conds": {**options.get("model_conds", {}), **model_conds}}
        out.append([context, options])
    return out


def ilc_conditioning(positive: list, negative: list, vae, sources: torch.Tensor, target_poses: torch.Tensor,
                     source_poses: torch.Tensor | None, height: int, width: int, fit: str,
                     extract_poses=None) -> tuple[list, list, dict, grid.GridLayout]:
    """Attach the flag map, masked grid latent and pose grid to both conditionings; empty grid latent; layout."""
    sources = check_images("source_images", sources, 1, grid.MAX_SOURCES)
    target_poses = check_images("target_poses", target_poses, 1, grid.MAX_TARGETS)
    if sources.shape[0] + target_poses.shape[0] > grid.CELLS:
        raise InputError(
            f"source_images + target_poses: {sources.shape[0]} sources and {target_poses.shape[0]} targets need "
            f"{sources.shape[0] + target_poses.shape[0]} cells; the grid has {grid.CELLS}"
        )
    if source_poses is None:
        if extract_poses is None:
            raise InputError("source_poses: not connected and no pose detector available to extract them")
        source_poses = extract_poses(sources)
    source_poses = check_images("source_poses", source_poses, 1, grid.MAX_SOURCES)
    if source_poses.shape[0] != sources.shape[0]:
        raise InputError(
            f"source_poses: expected one pose per source image ({sources.shape[0]}), got {source_poses.shape[0]}"
        )
    check_cell(height, width, 64)
    for name, conditioning in (("positive", positive), ("negative", negative)):
        for _, options in conditioning:
            made_for = options.get(CELL_KEY)
            if made_for is not None and tuple(made_for) != (height, width, fit):
                raise InputError(
                    f"{name}: made by IMAGPose FLC Encode for cell {made_for[1]}x{made_for[0]} ({made_for[2]}), but "
                    f"this node packs {width}x{height} ({fit}); set the same width, height and fit on both nodes"
                )
    layout = grid.make_layout(sources.shape[0], target_poses.shape[0], height, width)
    source_cells = fit_to_cell(to_channels_first(sources), height, width, fit, PHOTO_PAD)
    source_pose_cells = fit_to_cell(to_channels_first(source_poses), height, width, fit, POSE_PAD)
    target_pose_cells = fit_to_cell(to_channels_first(target_poses), height, width, fit, POSE_PAD)

    masked = grid.pack_grid(grid.masked_cells(layout, source_cells))
    pose_grid = grid.pack_grid(grid.pose_cells(layout, source_pose_cells, target_pose_cells))
    masked_latent = encode_latent(vae, masked)
    latent_h, latent_w = masked_latent.shape[-2] // 2, masked_latent.shape[-1] // 2
    flags = grid.flag_map(layout, 1, latent_h, latent_w)
    values = {"concat_mask": flags, "concat_latent_image": masked_latent}
    model_conds = {POSE_COND: comfy.conds.CONDRegular(pose_grid)}
    latent = torch.zeros_like(masked_latent, device=comfy.model_management.intermediate_device())
    return (_with_values(positive, values, model_conds), _with_values(negative, values, model_conds),
            {"samples": latent}, layout)


def unpack_images(images: torch.Tensor, layout: grid.GridLayout, cells: str) -> torch.Tensor:
    """Decoded grid IMAGE batch -> target cells (pose order) or all four cells, per grid in the batch."""
    expected = (layout.cell_height * 2, layout.cell_width * 2)
    if tuple(images.shape[1:3]) != expected:
        raise InputError(
            f"images: expected decoded grids of {expected[1]}x{expected[0]} px for this layout, got "
            f"{images.shape[2]}x{images.shape[1]}"
        )
    split = grid.split_grid(images.movedim(-1, 1))
    order = layout.target_cells if cells == "targets" else range(grid.CELLS)
    return torch.stack([split[i] for i in order], dim=1).flatten(0, 1).movedim(1, -1)
