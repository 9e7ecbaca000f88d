"""The 2x2 image-level conditioning (ILC) grid: cell roles, packing and unpacking.

Cells are ordered top-left, top-right, bottom-left, bottom-right. A source cell holds a known view of
the person (flag 1); a target cell is black in the masked grid (flag 0) and is generated.

Any number of target poses is a sequence of grids (`plan_grids`): every grid holds all sources and the
next 4 - S targets, so all grids share the sources (and the FLC context) and only the target cells change.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

CELLS = 4
MAX_SOURCES = 3
MAX_TARGETS = 3  # per grid
MAX_TARGET_POSES = 256  # per sequence: its conditioning (a pose grid per grid) is held in memory


@dataclass(frozen=True)
class GridLayout:
    """Which cell holds what.

    `cell_sources[i]` is the index of the source image shown in cell i, or None for a target cell.
    `target_cells[j]` is the cell generated for the j-th target pose, in the order the poses were given.
    """

    cell_sources: tuple[int | None, ...]
    target_cells: tuple[int, ...]
    cell_height: int
    cell_width: int

    @property
    def flags(self) -> tuple[int, ...]:
        return tuple(0 if s is None else 1 for s in self.cell_sources)


def make_layout(num_sources: int, num_targets: int, cell_height: int, cell_width: int) -> GridLayout:
    """Sources fill the first cells, targets the last ones.

    When sources + targets < 4 the spare cells repeat the sources in turn, as the authors do
    (1 source -> 1 target uses the source three times).
    """
    if num_sources < 1:
        raise ValueError("at least one source image is needed")
    if num_targets < 1:
        raise ValueError("at least one target pose is needed")
    if num_sources > MAX_SOURCES or num_targets > MAX_TARGETS:
        raise ValueError(f"at most {MAX_SOURCES} sources and {MAX_TARGETS} targets fit a 2x2 grid")
    if num_sources + num_targets > CELLS:
        raise ValueError(f"{num_sources} sources + {num_targets} targets is more than {CELLS} cells")
    source_cells = CELLS - num_targets
    cell_sources = tuple([i % num_sources for i in range(source_cells)] + [None] * num_targets)
    target_cells = tuple(range(source_cells, CELLS))
    return GridLayout(cell_sources, target_cells, cell_height, cell_width)


def plan_grids(num_sources: int, num_targets: int, cell_height: int, cell_width: int) -> tuple[GridLayout, ...]:
    """ceil(N / (4 - S)) grids for N target poses: each holds all S sources and the next 4 - S targets in pose
    order; the last grid may hold fewer, its spare cells repeating the sources as `make_layout` does."""
    if not 1 <= num_sources <= MAX_SOURCES:
        raise ValueError(f"1 to {MAX_SOURCES} source images are needed, got {num_sources}")
    if not 1 <= num_targets <= MAX_TARGET_POSES:
        raise ValueError(f"1 to {MAX_TARGET_POSES} target poses are needed, got {num_targets}")
    per_grid = CELLS - num_sources
    counts = [min(per_grid, num_targets - first) for first in range(0, num_targets, per_grid)]
    return tuple(make_layout(num_sources, count, cell_height, cell_width) for count in counts)


def chunk_sizes(num_grids: int, grids_per_batch: int) -> tuple[int, ...]:
    """How many grids each sampler batch gets, in order: full batches of `grids_per_batch`, then the rest."""
    if num_grids < 1 or grids_per_batch < 1:
        raise ValueError(f"need at least one grid and one grid per batch, got {num_grids} and {grids_per_batch}")
    return tuple(min(grids_per_batch, num_grids - first) for first in range(0, num_grids, grids_per_batch))


@dataclass(frozen=True)
class SequenceLayout:
    """The grids one ILC Pack made, in order, and how they were split into sampler batches (`chunks`: grids per
    batch). What Grid Unpack needs to give back exactly one image per target pose, in pose order."""

    grids: tuple[GridLayout, ...]
    chunks: tuple[int, ...]

    def __post_init__(self):
        if not self.grids or sum(self.chunks) != len(self.grids):
            raise ValueError(f"{len(self.grids)} grids do not split into batches of {self.chunks}")

    @property
    def cell_height(self) -> int:
        return self.grids[0].cell_height

    @property
    def cell_width(self) -> int:
        return self.grids[0].cell_width

    @property
    def num_targets(self) -> int:
        return sum(len(g.target_cells) for g in self.grids)

    def first_targets(self) -> tuple[int, ...]:
        """Index (in pose order) of the first target pose of each grid."""
        counts = [len(g.target_cells) for g in self.grids]
        return tuple(sum(counts[:i]) for i in range(len(counts)))

    def chunk_bounds(self) -> list[tuple[int, int]]:
        """[first grid, end grid) of every sampler batch."""
        ends = [sum(self.chunks[: i + 1]) for i in range(len(self.chunks))]
        return [(end - size, end) for size, end in zip(self.chunks, ends)]


def pack_grid(cells: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """Four (B, C, H, W) cells -> one (B, C, 2H, 2W) grid."""
    tl, tr, bl, br = cells
    return torch.cat([torch.cat([tl, tr], dim=-1), torch.cat([bl, br], dim=-1)], dim=-2)


def split_grid(grid: torch.Tensor) -> list[torch.Tensor]:
    """(B, C, 2H, 2W) grid -> its four (B, C, H, W) cells in TL, TR, BL, BR order."""
    height, width = grid.shape[-2], grid.shape[-1]
    if height % 2 or width % 2:
        raise ValueError(f"a 2x2 grid needs even sides, got {height}x{width}")
    top, bottom = grid.split(height // 2, dim=-2)
    return [*top.split(width // 2, dim=-1), *bottom.split(width // 2, dim=-1)]


def cells_to_frames(grid: torch.Tensor) -> torch.Tensor:
    """(B, C, 2H, 2W) -> (B, 4, C, H, W): the cells as frames of a clip."""
    return torch.stack(split_grid(grid), dim=1)


def frames_to_cells(frames: torch.Tensor) -> torch.Tensor:
    """(B, 4, C, H, W) -> (B, C, 2H, 2W)."""
    return pack_grid(list(frames.unbind(dim=1)))


def flag_map(layout: GridLayout, batch: int, latent_height: int, latent_width: int) -> torch.Tensor:
    """(B, 1, 2h, 2w) channel: 1 on source cells, 0 on target cells (IMAGPose's polarity)."""
    cells = [torch.full((batch, 1, latent_height, latent_width), float(f)) for f in layout.flags]
    return pack_grid(cells)


def pose_cells(layout: GridLayout, source_poses: torch.Tensor, target_poses: torch.Tensor) -> list[torch.Tensor]:
    """Pose image per cell: each source cell shows its source's pose, each target cell its target pose."""
    cells: list[torch.Tensor] = []
    for cell, source in enumerate(layout.cell_sources):
        if source is None:
            cells.append(target_poses[layout.target_cells.index(cell)].unsqueeze(0))
        else:
            cells.append(source_poses[source].unsqueeze(0))
    return cells


def layout_cells(layout: GridLayout, sources: torch.Tensor, source_poses: torch.Tensor,
                 target_poses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What each cell of one grid shows: (4, C, H, W) images (a source, or black on a target cell) and
    (4, 3, H, W) poses. Inputs are (N, C, H, W) at cell size, sources/poses indexed as in the layout."""
    black = torch.zeros_like(sources[0])
    images = torch.stack([black if s is None else sources[s] for s in layout.cell_sources])
    return images, torch.cat(pose_cells(layout, source_poses, target_poses))


def sequence_cells(layouts: tuple[GridLayout, ...] | list[GridLayout], sources: torch.Tensor, source_poses: torch.Tensor,
                   target_poses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`layout_cells` for a sequence of grids: (G, 4, C, H, W) images and (G, 4, 3, H, W) poses, grid g taking the
    target poses that follow the previous grids' ones."""
    needed = sum(len(layout.target_cells) for layout in layouts)
    if needed != target_poses.shape[0]:
        raise ValueError(f"the layouts hold {needed} targets, but {target_poses.shape[0]} target poses were given")
    images, poses, first = [], [], 0
    for layout in layouts:
        count = len(layout.target_cells)
        grid_images, grid_poses = layout_cells(layout, sources, source_poses, target_poses[first : first + count])
        images.append(grid_images)
        poses.append(grid_poses)
        first += count
    return torch.stack(images), torch.stack(poses)


def unpack_cells(layout: SequenceLayout, grids: torch.Tensor, which: str = "targets") -> torch.Tensor:
    """(G, C, 2H, 2W) generated grids -> (N, C, H, W), one per target pose in pose order (the source and spare cells
    dropped), or with which="all" every cell of every grid (4G, TL, TR, BL, BR per grid)."""
    if grids.shape[0] != len(layout.grids):
        raise ValueError(f"{grids.shape[0]} grids for a layout of {len(layout.grids)}")
    cells = torch.stack(split_grid(grids), dim=1)  # (G, 4, C, H, W)
    if which == "all":
        return cells.flatten(0, 1)
    if which != "targets":
        raise ValueError(f"which must be 'targets' or 'all', got {which!r}")
    return torch.cat([cells[g, list(grid_layout.target_cells)] for g, grid_layout in enumerate(layout.grids)])


def assemble(layouts: list[GridLayout], cell_images: torch.Tensor, cell_poses: torch.Tensor,
             latent_downscale: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The image-level conditioning of a batch of grids, the same for training and inference.

    cell_images/cell_poses: (B, 4, C, H, W), one layout per grid. Returns the masked grid (B, C, 2H, 2W) with
    every target cell black, the pose grid (B, 3, 2H, 2W) and the flag map (B, 1, 2H/d, 2W/d).
    """
    if len(layouts) != cell_images.shape[0] or cell_images.shape[1] != CELLS:
        raise ValueError(f"expected {len(layouts)} grids of {CELLS} cells, got cells shaped {tuple(cell_images.shape)}")
    height, width = cell_images.shape[-2:]
    if height % latent_downscale or width % latent_downscale:
        raise ValueError(f"cells of {width}x{height} px do not split into latents of 1/{latent_downscale}")
    shown = torch.tensor([layout.flags for layout in layouts], dtype=cell_images.dtype, device=cell_images.device)
    masked = pack_grid(list((cell_images * shown.view(*shown.shape, 1, 1, 1)).unbind(1)))
    pose_grid = pack_grid(list(cell_poses.unbind(1)))
    flags = torch.cat([flag_map(layout, 1, height // latent_downscale, width // latent_downscale) for layout in layouts])
    return masked, pose_grid, flags.to(cell_images.device)
