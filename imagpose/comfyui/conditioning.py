"""Feature-level (FLC) and image-level (ILC) conditioning in ComfyUI's CONDITIONING / LATENT forms.

The tensors are made by the library functions the trainer uses too (`imagpose.grid.assemble`,
`imagpose.model.flc_context`), so inference conditioning cannot drift from training conditioning.

Many target poses become a sequence of grids (`imagpose.grid.plan_grids`) sampled as one latent batch, or in
chunks: ILC Pack's positive, negative and latent are output lists (one entry per chunk), so ComfyUI runs the stock
KSampler (and VAE Decode) once per chunk; Grid Unpack takes the lists back (is_input_list). With several grids every
latent carries ComfyUI's `batch_index` (grid numbers), so grid g gets the g-th noise of the seed however the grids
are chunked.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import comfy.model_management
import node_helpers

from .. import grid
from ..image_encoder import AUTHORS_POSITIONS
from ..imaging import PHOTO_PAD, POSE_PAD, fit_to_cell, resize_to, resized_size
from ..model import LATENT_SCALE, flc_context
from ..patch_embed import PatchEmbedding
from ..preview import GRID_SIDE, packed_preview, shrink
from . import memory
from .errors import InputError
from .model_patch import POSE_COND, PoseGridCond
from .pose import render_target_sequence

CELL_KEY = "imagpose_cell"  # (height, width, fit) the FLC was made for, checked by the ILC node
FLC_MULTIPLE = 8  # the reference is VAE-encoded at cell size
ILC_MULTIPLE = 64  # the grid latent must split evenly down to the UNet's lowest resolution
UNPACK_CHOICES = ("targets", "all")
BATCHING = ("one_batch", "chunks")
DEFAULT_GRIDS_PER_BATCH = 8
MAX_GRIDS_PER_BATCH = 64
EXTRA_SOURCES = ("source_2", "source_3")


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


def source_groups(source_images: torch.Tensor | None, source_2: torch.Tensor | None = None,
                  source_3: torch.Tensor | None = None) -> list[tuple[str, torch.Tensor]]:
    """The source photos by input, each input kept at its own size: photos of different sizes connected to
    source_2/source_3 reach the cell fit undistorted (ComfyUI's Batch Images would stretch them to one size)."""
    groups = [("source_images", check_images("source_images", source_images, 1, grid.MAX_SOURCES))]
    for name, images in zip(EXTRA_SOURCES, (source_2, source_3)):
        if images is not None:
            groups.append((name, check_images(name, images, 1, grid.MAX_SOURCES)))
    total = sum(images.shape[0] for _, images in groups)
    if total > grid.MAX_SOURCES:
        names = " + ".join(name for name, _ in groups)
        raise InputError(names, f"1 to {grid.MAX_SOURCES} source images in all",
                         " + ".join(str(images.shape[0]) for _, images in groups) + f" = {total}")
    return groups


def fit_groups(groups: list[tuple[str, torch.Tensor]], height: int, width: int, fit: str, pad: float) -> torch.Tensor:
    """(S, 3, height, width): every input's images fitted to the cell on their own (`fit_cells`), in input order."""
    return torch.cat([fit_cells(name, images, height, width, fit, pad) for name, images in groups])


def flc_conditioning(encoder, bundle: IMAGPoseBundle, vae, sources: torch.Tensor, reference_index: int,
                     use_all_sources: bool, height: int, width: int, fit: str,
                     source_2: torch.Tensor | None = None, source_3: torch.Tensor | None = None) -> tuple[list, list]:
    """Positive: [DINOv2 tokens, patch tokens of the cell-size reference latent]; negative: zeros like it."""
    groups = source_groups(sources, source_2, source_3)
    count = sum(images.shape[0] for _, images in groups)
    check_cell(height, width, FLC_MULTIPLE)
    if not use_all_sources and reference_index >= count:
        raise InputError("reference_index", f"0..{count - 1} for {count} source image(s)", str(reference_index))
    check_vae(vae)
    check_vae_memory(vae, count if use_all_sources else 1, height, width, "cells the VAE can encode")
    cells = fit_groups(groups, height, width, fit, PHOTO_PAD)
    if not use_all_sources:
        cells = cells[reference_index : reference_index + 1]
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


def target_pose_images(target_poses: torch.Tensor | None, target_keypoints) -> tuple[str, torch.Tensor]:
    """(input name, rendered target poses (N, H, W, C)) from whichever of the two inputs is connected."""
    if target_poses is not None and target_keypoints is not None:
        raise InputError("target_poses/target_keypoints", "target poses on one of the two inputs", "both connected")
    if target_keypoints is not None:
        return "target_keypoints", render_target_sequence("target_keypoints", target_keypoints, grid.MAX_TARGET_POSES)
    if target_poses is None:
        raise InputError("target_poses", f"1 to {grid.MAX_TARGET_POSES} rendered target poses (or POSE_KEYPOINT frames "
                         "on target_keypoints)", "nothing connected")
    return "target_poses", check_images("target_poses", target_poses, 1, grid.MAX_TARGET_POSES)


def batch_sizes(num_grids: int, num_sources: int, batching: str, grids_per_batch: int, targets_input: str,
                num_targets: int) -> tuple[int, ...]:
    """Grids per sampler batch: all in one (at most grids_per_batch), or chunks of at most grids_per_batch."""
    if batching == "one_batch" and num_grids > grids_per_batch:
        per_grid = grid.CELLS - num_sources
        raise InputError(targets_input, f"at most {grids_per_batch * per_grid} target poses for one batch of at most "
                         f"{grids_per_batch} grids (grids_per_batch) of {per_grid} targets each with {num_sources} "
                         "source(s); set batching to 'chunks' to sample them grids_per_batch grids at a time, or "
                         "raise grids_per_batch", f"{num_targets} target poses, which need {num_grids} grids")
    return grid.chunk_sizes(num_grids, grids_per_batch)


def source_pose_cells(groups: list[tuple[str, torch.Tensor]], source_poses: torch.Tensor | None, extract_poses,
                      height: int, width: int, fit: str) -> torch.Tensor:
    """(S, 3, H, W) pose cells of the sources: connected, or extracted from each source input at its own size."""
    count = sum(images.shape[0] for _, images in groups)
    if source_poses is None:
        if extract_poses is None:
            raise InputError("source_poses", "rendered source poses, or a pose detector to extract them",
                             "not connected, and no pose detector available")
        extracted = [(name, extract_poses(images)) for name, images in groups]
        return fit_groups(extracted, height, width, fit, POSE_PAD)
    source_poses = check_images("source_poses", source_poses, 1, grid.MAX_SOURCES)
    if source_poses.shape[0] != count:
        raise InputError("source_poses", f"one pose per source image ({count})", str(source_poses.shape[0]))
    if len(groups) == 1:
        return fit_cells("source_poses", source_poses, height, width, fit, POSE_PAD)
    # photos of several sizes: a pose batch made with Batch Images was stretched to the first photo's size; each
    # pose goes back to its own photo's size, then into the cell like the photo
    sizes = [images.shape[1:3] for _, images in groups for _ in range(images.shape[0])]
    return torch.cat([fit_cells("source_poses", resize_to(to_channels_first(source_poses[i : i + 1]), *size)
                                .movedim(1, -1), height, width, fit, POSE_PAD) for i, size in enumerate(sizes)])


def ilc_conditioning(positive: list, negative: list, vae, sources: torch.Tensor, target_poses: torch.Tensor | None,
                     source_poses: torch.Tensor | None, height: int, width: int, fit: str, extract_poses=None, *,
                     source_2: torch.Tensor | None = None, source_3: torch.Tensor | None = None, target_keypoints=None,
                     batching: str = "one_batch", grids_per_batch: int = DEFAULT_GRIDS_PER_BATCH,
                     ) -> tuple[list, list, list, grid.SequenceLayout, torch.Tensor]:
    """Per sampler batch (chunk) of grids: both conditionings with the flag maps, masked grid latents and pose grids
    attached, and the empty grid latent; the sequence layout; the preview IMAGE (masked | pose grid per grid)."""
    groups = source_groups(sources, source_2, source_3)
    num_sources = sum(images.shape[0] for _, images in groups)
    targets_input, targets = target_pose_images(target_poses, target_keypoints)
    check_cell(height, width, ILC_MULTIPLE)
    check_same_cell("positive", positive, height, width, fit)
    check_same_cell("negative", negative, height, width, fit)
    check_vae(vae)
    layouts = grid.plan_grids(num_sources, targets.shape[0], height, width)
    layout = grid.SequenceLayout(layouts, batch_sizes(len(layouts), num_sources, batching, grids_per_batch,
                                                      targets_input, targets.shape[0]))
    source_cells = fit_groups(groups, height, width, fit, PHOTO_PAD)
    source_poses = source_pose_cells(groups, source_poses, extract_poses, height, width, fit)
    check_vae_memory(vae, grid.CELLS, height, width, "a cell whose 2x2 grid the VAE can encode")
    # kept for every grid: its pose grid (in the conditioning) and its preview (at most GRID_SIDE a side, twice wide)
    preview_pixels = 2 * min(GRID_SIDE, 2 * max(height, width)) ** 2
    memory.require(targets_input, "grids whose conditioning and preview fit in memory",
                   memory.image_bytes(len(layouts), 2 * height, 2 * width) + 2 * len(layouts) * preview_pixels * 3 * 4,
                   f"{targets.shape[0]} target poses in {len(layouts)} grids of {2 * width}x{2 * height}")

    positives, negatives, latents, previews = [], [], [], []
    first_targets = layout.first_targets() + (targets.shape[0],)
    for start, end in layout.chunk_bounds():
        chunk_targets = fit_cells(targets_input, targets[first_targets[start] : first_targets[end]],
                                  height, width, fit, POSE_PAD)
        images, poses = grid.sequence_cells(layouts[start:end], source_cells, source_poses, chunk_targets)
        masked, pose_grid, flags = grid.assemble(list(layouts[start:end]), images, poses,
                                                 vae.spacial_compression_encode())
        # grid by grid: the memory checked above is one grid's, and a grid's latent does not depend on its chunk
        masked_latent = torch.cat([encode_latent(vae, one) for one in masked.split(1)])
        values = {"concat_mask": flags, "concat_latent_image": masked_latent,
                  "model_conds": {POSE_COND: PoseGridCond(pose_grid)}}
        positives.append(node_helpers.conditioning_set_values(positive, values))
        negatives.append(node_helpers.conditioning_set_values(negative, values))
        latent = torch.zeros_like(masked_latent, device=comfy.model_management.intermediate_device())
        # several grids: batch_index numbers them for KSampler's noise; one grid keeps the latent it always had
        latents.append({"samples": latent, "batch_index": list(range(start, end))} if len(layouts) > 1
                       else {"samples": latent})
        previews.append((shrink(masked), shrink(pose_grid)))
    masked_all, poses_all = (torch.cat(parts) for parts in zip(*previews))
    preview = to_channels_last(packed_preview(layout, masked_all, poses_all))
    return positives, negatives, latents, layout, preview


def single(name: str, values: list):
    """The one value of a list input (Grid Unpack takes its inputs as lists)."""
    if len(values) != 1:
        raise InputError(name, "one value", f"a list of {len(values)}")
    return values[0]


def unpack_images(images: list[torch.Tensor], layouts: list, which: list) -> torch.Tensor:
    """Decoded grids (one IMAGE per sampler batch, in order) -> one image per target pose in pose order, or with
    which='all' the four cells of every grid."""
    layout, cells = single("layout", layouts), single("which", which)
    if not isinstance(layout, grid.SequenceLayout):
        raise InputError("layout", "the layout output of IMAGPose ILC Pack", type(layout).__name__)
    expected = (layout.cell_height * 2, layout.cell_width * 2)
    for batch in images:
        if batch.ndim != 4:
            raise InputError("images", "an IMAGE batch (B, H, W, C)", f"shape {tuple(batch.shape)}")
        if tuple(batch.shape[1:3]) != expected:
            raise InputError("images", f"decoded grids of {expected[1]}x{expected[0]} px for this layout",
                             f"{batch.shape[2]}x{batch.shape[1]}")
    count = sum(batch.shape[0] for batch in images)
    if count != len(layout.grids):
        if len(layout.grids) != 1:
            raise InputError("images", f"{len(layout.grids)} decoded grids, in the order IMAGPose ILC Pack made them",
                             str(count))
        layout = grid.SequenceLayout(layout.grids * count, (count,))  # variations of one grid (a repeated latent)
    kept = layout.num_targets if cells == "targets" else grid.CELLS * count
    memory.require("images", "cells to cut out", 2 * memory.image_bytes(kept, layout.cell_height, layout.cell_width,
                   images[0].shape[-1]), f"{count} grid(s) of {expected[1]}x{expected[0]}")
    grids = torch.cat(list(images)).movedim(-1, 1)
    return grid.unpack_cells(layout, grids, cells).movedim(1, -1)
