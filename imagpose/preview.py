"""What ILC Pack packed, drawn for a person to check before sampling: per grid, the masked image grid (what the VAE
encodes: sources shown, targets black) and the pose grid side by side, every cell labelled with its role (S1..S3 the
source it shows, T1..TN the target pose it generates, numbered in pose order) and every target cell framed."""
from __future__ import annotations

import numpy as np
import torch

from .grid import CELLS, SequenceLayout, split_grid

GRID_SIDE = 512  # the preview shows each grid at most this long a side: enough to check roles and poses
FRAME = (255, 255, 255)  # target cells are black in both halves; a white frame shows on either
LABEL_TEXT = (255, 255, 255)
LABEL_BOX = (40, 40, 40)


def shrink(grids: torch.Tensor, max_side: int = GRID_SIDE) -> torch.Tensor:
    """(G, 3, 2H, 2W) grids scaled down (aspect kept, cells staying whole) so the longer side is at most max_side."""
    height, width = grids.shape[-2:]
    scale = min(1.0, max_side / max(height, width))
    if scale == 1.0:
        return grids
    size = (max(2, round(height * scale / 2) * 2), max(2, round(width * scale / 2) * 2))
    return torch.nn.functional.interpolate(grids, size=size, mode="bilinear", antialias=True, align_corners=False)


def cell_labels(layout: SequenceLayout) -> list[list[str]]:
    """Per grid, the four cells' labels: 'S<source number>' or 'T<target pose number>' (1-based)."""
    labels = []
    for grid_layout, first in zip(layout.grids, layout.first_targets()):
        row = []
        for cell, source in enumerate(grid_layout.cell_sources):
            row.append(f"S{source + 1}" if source is not None else f"T{first + grid_layout.target_cells.index(cell) + 1}")
        labels.append(row)
    return labels


def _mark_cell(canvas: np.ndarray, top: int, left: int, height: int, width: int, label: str, framed: bool) -> None:
    import cv2

    thickness = max(1, round(min(height, width) / 48))
    if framed:
        cv2.rectangle(canvas, (left + thickness // 2, top + thickness // 2),
                      (left + width - 1 - thickness // 2, top + height - 1 - thickness // 2), FRAME, thickness)
    scale = max(0.3, min(height, width) / 160)
    (text_w, text_h), baseline = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, thickness // 2))
    pad = max(2, thickness)
    x0, y0 = left + thickness + 1, top + thickness + 1
    cv2.rectangle(canvas, (x0, y0), (x0 + text_w + 2 * pad, y0 + text_h + baseline + 2 * pad), LABEL_BOX, -1)
    cv2.putText(canvas, label, (x0 + pad, y0 + pad + text_h), cv2.FONT_HERSHEY_SIMPLEX, scale, LABEL_TEXT,
                max(1, thickness // 2), cv2.LINE_AA)


def packed_preview(layout: SequenceLayout, masked: torch.Tensor, pose_grids: torch.Tensor) -> torch.Tensor:
    """(G, 3, 2H, 2W) masked grids and pose grids in [0, 1] (any size, e.g. `shrink`) -> (G, 3, 2H, 4W): masked |
    poses, cells labelled."""
    if masked.shape != pose_grids.shape or masked.shape[0] != len(layout.grids):
        raise ValueError(f"masked grids {tuple(masked.shape)} and pose grids {tuple(pose_grids.shape)} for "
                         f"{len(layout.grids)} grids")
    side_by_side = torch.cat([masked, pose_grids], dim=-1).clamp(0, 1)
    pictures = (side_by_side.movedim(1, -1) * 255).round().to(torch.uint8).cpu().numpy().copy()
    height, width = split_grid(masked[:1])[0].shape[-2:]
    for picture, labels, grid_layout in zip(pictures, cell_labels(layout), layout.grids):
        for half in range(2):
            for cell in range(CELLS):
                top, left = (cell // 2) * height, half * 2 * width + (cell % 2) * width
                framed = grid_layout.cell_sources[cell] is None
                _mark_cell(picture, top, left, height, width, labels[cell], framed)
    return torch.from_numpy(pictures).float().div(255).movedim(-1, 1)
