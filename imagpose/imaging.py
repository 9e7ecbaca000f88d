"""Fitting photos and pose images into a grid cell without stretching them."""
from __future__ import annotations

import torch
import torch.nn.functional as F

FIT_MODES = ("pad", "crop")
PHOTO_PAD = 1.0  # white, like the studio backgrounds of the training photos
POSE_PAD = 0.0  # black, the background of rendered skeletons


def resized_size(src_h: int, src_w: int, height: int, width: int, mode: str = "pad") -> tuple[int, int]:
    """(height, width) an image is resized to before it is padded or cropped to the cell (crop: larger than the cell,
    by as much as the aspect ratios differ)."""
    if mode not in FIT_MODES:
        raise ValueError(f"fit must be one of {FIT_MODES}, got {mode!r}")
    scale = (min if mode == "pad" else max)(height / src_h, width / src_w)
    new_h, new_w = max(1, round(src_h * scale)), max(1, round(src_w * scale))
    if mode == "pad":
        return min(new_h, height), min(new_w, width)
    return max(new_h, height), max(new_w, width)


def content_box(src_h: int, src_w: int, height: int, width: int, mode: str) -> tuple[int, int, int, int]:
    """(top, left, h, w) of the cell that shows the image (the whole cell for 'crop', inside the bars for 'pad')."""
    new_h, new_w = resized_size(src_h, src_w, height, width, mode)
    if mode == "crop":
        return 0, 0, height, width
    return (height - new_h) // 2, (width - new_w) // 2, new_h, new_w


def fit_to_cell(images: torch.Tensor, height: int, width: int, mode: str = "pad", pad_value: float = 0.0) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, height, width), aspect kept: 'pad' letterboxes, 'crop' fills and centre-crops."""
    new_h, new_w = resized_size(*images.shape[-2:], height, width, mode)
    resized = F.interpolate(images, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    if mode == "crop":
        top, left = (new_h - height) // 2, (new_w - width) // 2
        return resized[..., top : top + height, left : left + width]
    top, left, _, _ = content_box(*images.shape[-2:], height, width, mode)
    return F.pad(resized, (left, width - new_w - left, top, height - new_h - top), value=pad_value)


def resize_to(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, height, width), aspect NOT kept: only to undo a stretch done elsewhere."""
    if images.shape[-2:] == (height, width):
        return images
    return F.interpolate(images, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
