"""What a model file or folder holds, told from its content, and which files a loader reads.

The loaders' lists show only files of their own kind, and their cache keys change when a file they read changes.
Both must be cheap, as ComfyUI asks for them on every /object_info and every prompt: a file is read only as far
as its tensor names and shapes (a safetensors header, a memory-mapped zip pickle) or its config.json, and the
answer is kept until the file's size or modification time changes.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .checkpoints import CheckpointError, candidate_files, classify, peek
from .image_encoder import WEIGHT_FILES as DINOV2_WEIGHTS
from .image_encoder import is_dinov2, is_dinov2_config
from .unet import MOTION_KEY

PACK, UNET, POSE_GUIDER, PATCH_EMBED = "pack", "unet", "pose_guider", "patch_embed"
MOTION_MODULE = "motion_module"  # CVA weights only (AnimateDiff-style motion-module files)
DINOV2 = "dinov2"
MODEL_KINDS = (PACK, UNET)  # what the Model Loader's checkpoint loads


@dataclass(frozen=True)
class Contents:
    kind: str | None  # one of the kinds above, None for anything else (or unreadable)
    has_cva: bool = False  # holds *.motion_modules.* tensors: usable as the Model Loader's motion_module

    def serves(self, widget: str) -> bool:
        """Whether the Model Loader's widget of that name can take this file."""
        if widget == "checkpoint":
            return self.kind in MODEL_KINDS
        if widget == "motion_module":
            return self.has_cva
        return self.kind in (PACK, widget)  # pose_guider / patch_embed: the part itself, or a pack holding it


_cache: dict[str, tuple[tuple[int, int], Contents]] = {}


def stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def contents(path: str | os.PathLike) -> Contents:
    """The kind of one file, cached by path, size and modification time."""
    path = Path(path)
    try:
        key = stamp(path)
    except OSError:
        return Contents(None)
    cached = _cache.get(str(path))
    if cached is not None and cached[0] == key:
        return cached[1]
    found = _inspect(path)
    _cache[str(path)] = (key, found)
    return found


def _inspect(path: Path) -> Contents:
    try:
        state_dict, metadata = peek(path)
    except (CheckpointError, OSError, ValueError, RuntimeError):
        return Contents(None)
    has_cva = any(MOTION_KEY in k for k in state_dict)
    try:
        return Contents(classify(state_dict, metadata), has_cva)
    except CheckpointError:
        pass
    if is_dinov2(state_dict):
        return Contents(DINOV2)
    return Contents(MOTION_MODULE if has_cva else None, has_cva)


def model_file(folder: str | os.PathLike) -> Path | None:
    """The one UNet or pack file in a folder (what the Model Loader loads when given the folder), else None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    models = [p for p in candidate_files(folder) if contents(p).kind in MODEL_KINDS]
    return models[0] if len(models) == 1 else None


def is_dinov2_folder(folder: str | os.PathLike) -> bool:
    """A transformers DINOv2 folder: config.json naming the dinov2 architecture, and its weights."""
    folder = Path(folder)
    config = folder / "config.json"
    if not config.is_file() or not any((folder / name).is_file() for name in DINOV2_WEIGHTS):
        return False
    try:
        return is_dinov2_config(json.loads(config.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return False


def model_loader_files(checkpoint: Path, motion_module: Path | None = None, pose_guider: Path | None = None,
                       patch_embed: Path | None = None) -> list[Path]:
    """Every file `checkpoints.load_weights` may read for these choices (None: none/auto): a folder's or a UNet's
    sibling files are surveyed for the parts, a pack file holds them all."""
    if checkpoint.is_dir():
        read = candidate_files(checkpoint)
    elif contents(checkpoint).kind == PACK or (pose_guider and patch_embed):
        read = [checkpoint]
    else:
        read = candidate_files(checkpoint.parent) if checkpoint.parent.is_dir() else [checkpoint]
    chosen = {p for p in (motion_module, pose_guider, patch_embed) if p is not None}
    return sorted(set(read) | chosen)


def image_encoder_files(path: Path) -> list[Path]:
    """Every file the Image Encoder Loader may read: a folder's files (config, weights), or the one file."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    return [path]


def fingerprint(files: list[Path]) -> tuple:
    """(path, size, modification time) of each file: changes whenever one of them is replaced or edited."""
    prints = []
    for path in files:
        try:
            prints.append((str(path), *stamp(path)))
        except OSError:
            prints.append((str(path), "missing"))
    return tuple(prints)
