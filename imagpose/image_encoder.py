"""DINOv2 image encoder for the FLC, the same for trainer and nodes: strict loading, a position table fixed once
for 224 px inputs by a named method, and CLIP-style preprocessing.

Loading: a transformers Dinov2Model folder (config.json + model.safetensors or pytorch_model.bin) or one bare
weights file. The weights must cover a DINOv2 exactly (no missing, unexpected or mis-shaped tensors) and a
folder's config.json must describe a DINOv2: anything else is refused with a message naming the file and
what it looks like. Loading goes through transformers' own key mapping, in memory.

Position table: DINOv2-base holds a 37x37 table (518 px), resampled to the 16x16 patch grid of a 224 px input.
transformers changed that resampling in 4.45, so the same weights gave other features under other versions.
Here the table is resampled ONCE, at load, by a named method (POSITION_METHODS), so transformers never
resamples and every version computes the same features. The trainer records the method in the pack file.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoints import CheckpointError, classify, read_state_dict

ENCODER_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # transformers CLIPImageProcessor() defaults, as in training
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

POSITION_METHODS = {
    "bicubic-scale-factor": "bicubic with scale factor (grid + 0.1) / table side: transformers up to 4.44 and the "
                            "DINO reference code; the authors trained with transformers 4.40",
    "bicubic-size": "bicubic to exactly the grid size: transformers 4.45 and later",
}
AUTHORS_POSITIONS = "bicubic-scale-factor"

DINOV2_KEYS = ("embeddings.cls_token", "embeddings.mask_token", "encoder.layer.0.layer_scale1.lambda1")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# names transformers >= 5 gives the same tensors in memory (its files keep the first names): files written
# from a state_dict() in memory use them; transformers maps the first names itself in every version
IN_MEMORY_NAMES = (
    ("attention.attention.query.", "attention.q_proj."),
    ("attention.attention.key.", "attention.k_proj."),
    ("attention.attention.value.", "attention.v_proj."),
    ("attention.output.dense.", "attention.o_proj."),
    ("mlp.weights_out.", "mlp.down_proj."),
)


class ImageEncoderError(ValueError):
    """A file or folder that is not a usable DINOv2; the message names it and says what it is."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = Path(path) if path is not None else None


# ---------------------------------------------------------------------------------------------------------
# the position table


def resample_positions(table: torch.Tensor, grid: int, method: str = AUTHORS_POSITIONS) -> torch.Tensor:
    """(1, 1 + side^2, dim) position table (class token first) -> (1, 1 + grid^2, dim), computed in float32.

    A table already of the grid's size is returned unchanged, as transformers does in every version.
    """
    if method not in POSITION_METHODS:
        raise ValueError(f"position method must be one of {', '.join(POSITION_METHODS)}, got {method!r}")
    positions = table.shape[1] - 1
    side = math.isqrt(positions)
    if side * side != positions:
        raise ValueError(f"a position table of {positions} patches is not a square grid")
    if side == grid:
        return table.clone()
    dim = table.shape[-1]
    patches = table[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2).float()
    if method == "bicubic-scale-factor":
        factor = (grid + 0.1) / math.sqrt(positions)  # the +0.1 avoids a floor to grid - 1 (facebookresearch/dino#8)
        patches = F.interpolate(patches, scale_factor=(factor, factor), mode="bicubic", align_corners=False)
    else:
        patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    patches = patches.to(table.dtype).permute(0, 2, 3, 1).reshape(1, grid * grid, dim)
    return torch.cat([table[:, :1], patches], dim=1)


class DINOv2Encoder(nn.Module):
    """A transformers Dinov2Model for ENCODER_SIZE px inputs, its position table resampled once by a named method.

    The file's own table is kept (on the CPU) so another method can be chosen later (`use_positions`), e.g. the
    one a pack file was trained with.
    """

    def __init__(self, model, positions: str = AUTHORS_POSITIONS):
        super().__init__()
        self.model = model
        self._source_positions = model.embeddings.position_embeddings.detach().float().cpu().clone()
        self.positions: str | None = None
        self.use_positions(positions)

    @property
    def config(self):
        return self.model.config

    @property
    def grid(self) -> int:
        return ENCODER_SIZE // self.model.config.patch_size

    @torch.no_grad()
    def use_positions(self, method: str) -> None:
        if method not in POSITION_METHODS:
            raise ImageEncoderError(f"unknown position method {method!r}; known: {', '.join(POSITION_METHODS)}")
        if method == self.positions:
            return
        table = self.model.embeddings.position_embeddings
        table.data = resample_positions(self._source_positions, self.grid, method).to(table.device, table.dtype)
        self.model.config.image_size = ENCODER_SIZE  # now the table's own size: transformers never resamples it
        self.positions = method

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if tuple(pixels.shape[-2:]) != (ENCODER_SIZE, ENCODER_SIZE):
            raise ValueError(f"DINOv2 input must be {ENCODER_SIZE}x{ENCODER_SIZE} (see preprocess), got {tuple(pixels.shape)}")
        return self.model(pixel_values=pixels).last_hidden_state


# ---------------------------------------------------------------------------------------------------------
# loading


def _in_file_names(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys as transformers' files name them (in-memory names of transformers >= 5 mapped back)."""
    out = {}
    for key, tensor in state_dict.items():
        for saved, in_memory in IN_MEMORY_NAMES:
            key = key.replace(in_memory, saved)
        if ".mlp.gate_proj." in key or ".mlp.up_proj." in key:
            continue  # joined below into the SwiGLU weights_in
        out[key] = tensor
    for key in [k for k in state_dict if ".mlp.gate_proj." in k]:
        up = key.replace(".mlp.gate_proj.", ".mlp.up_proj.")
        if up in state_dict:
            out[key.replace(".mlp.gate_proj.", ".mlp.weights_in.")] = torch.cat([state_dict[key], state_dict[up]])
    return {k.removeprefix("dinov2."): v for k, v in out.items()}


def describe_weights(state_dict: dict[str, torch.Tensor]) -> str:
    """What a set of tensors that is not a DINOv2 looks like: 'a CLIP ... model, not DINOv2'."""
    keys = list(state_dict)
    if any(k.startswith(("vision_model.", "visual.", "vision_tower.")) or k.endswith("embeddings.class_embedding")
           or ".pre_layrnorm." in k for k in keys):
        return "a CLIP/SigLIP-style vision model (its class_embedding / vision_model keys), not DINOv2"
    try:
        kind = classify(state_dict)
    except CheckpointError:
        kind = None
    if kind is not None:
        return f"an IMAGPose {kind.replace('_', ' ')} file, not DINOv2"
    if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.", "encoder.down.")) for k in keys):
        return "a VAE, not DINOv2"
    if "embeddings.cls_token" in keys and not any(".layer_scale1." in k for k in keys):
        return "a ViT-style vision model without DINOv2's layer scale, not DINOv2"
    sample = ", ".join(sorted(keys)[:3]) or "no tensors"
    return f"not DINOv2 weights (its keys look like {sample}, ...)"


def swiglu_width(hidden: int, mlp_ratio: float) -> int:
    """transformers' Dinov2SwiGLUFFN hidden width: int(hidden * ratio) * 2 / 3, rounded up to a multiple of 8."""
    return (int(int(hidden * mlp_ratio) * 2 / 3) + 7) // 8 * 8


def is_dinov2(keys) -> bool:
    """Whether tensor names are a transformers Dinov2Model's (names only: a safetensors header is enough).
    Layer scale tells DINOv2 from ViT/CLIP vision models of the same layout."""
    return set(DINOV2_KEYS) <= set(keys)


def is_dinov2_config(config: dict) -> bool:
    return config.get("model_type") == "dinov2"


def dinov2_config_from_state_dict(state_dict: dict[str, torch.Tensor]) -> dict:
    """transformers Dinov2Config values derived from DINOv2 tensors (file key names)."""
    try:
        hidden = state_dict["embeddings.cls_token"].shape[-1]
        projection = state_dict["embeddings.patch_embeddings.projection.weight"]
        positions = state_dict["embeddings.position_embeddings"].shape[1] - 1
        layers = len({k.split(".")[2] for k in state_dict if k.startswith("encoder.layer.")})
        swiglu = "encoder.layer.0.mlp.weights_in.weight" in state_dict
        if swiglu:
            width = state_dict["encoder.layer.0.mlp.weights_in.weight"].shape[0] // 2
            ratio = next((r / 2 for r in range(2, 33) if swiglu_width(hidden, r / 2) == width), None)
        else:
            width = state_dict["encoder.layer.0.mlp.fc1.weight"].shape[0]
            ratio = width / hidden
    except KeyError as error:
        raise ImageEncoderError(f"incomplete DINOv2 weights: {error} is missing") from error
    if ratio is None:
        raise ImageEncoderError(f"a SwiGLU MLP {width} wide for {hidden}-wide tokens fits no DINOv2 mlp_ratio")
    if ratio == int(ratio):
        ratio = int(ratio)  # newer transformers type-check it as an int
    return {
        "model_type": "dinov2",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, hidden // 64),  # every DINOv2 size has 64-wide heads
        "mlp_ratio": ratio,
        "use_swiglu_ffn": swiglu,
        "qkv_bias": "encoder.layer.0.attention.attention.query.bias" in state_dict,
        "num_channels": projection.shape[1],
        "patch_size": projection.shape[-1],
        "image_size": math.isqrt(positions) * projection.shape[-1],
    }


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        state_dict, _ = read_state_dict(path)
    except CheckpointError as error:
        raise ImageEncoderError(str(error), path) from error
    return _in_file_names(state_dict)


def _folder_weights(folder: Path) -> dict[str, torch.Tensor]:
    for name in SHARD_INDEXES:
        index = folder / name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError, AttributeError) as error:
                raise ImageEncoderError(f"{folder.name}/{name} is not a readable shard index: {error}", index) from error
            state_dict = {}
            for shard in shards:
                state_dict.update(_read_tensors(folder / shard))
            return state_dict
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return _read_tensors(folder / name)
    raise ImageEncoderError(f"folder {folder.name} holds a config.json but no weights ({' or '.join(WEIGHT_FILES)})",
                            folder)


def read_dinov2(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(Dinov2Config values, tensors in file key names) of a transformers folder or a bare weights file."""
    path = Path(path)
    if path.is_dir():
        config_path = path / "config.json"
        if not config_path.is_file():
            raise ImageEncoderError(f"folder {path.name} has no config.json: expected a transformers Dinov2Model folder",
                                    path)
        try:
            config = json.loads(config_path.read_text())
        except ValueError as error:
            raise ImageEncoderError(f"{path.name}/config.json is not valid JSON: {error}", config_path) from error
        if not isinstance(config, dict) or not is_dinov2_config(config):
            kind = config.get("model_type") if isinstance(config, dict) else None
            architectures = ", ".join(config.get("architectures") or []) if isinstance(config, dict) else ""
            raise ImageEncoderError(f"{path.name}/config.json describes model_type {kind!r}"
                                    f"{f' ({architectures})' if architectures else ''}, not DINOv2 (model_type 'dinov2')",
                                    config_path)
        return config, _folder_weights(path)
    state_dict = _read_tensors(path)
    if not is_dinov2(state_dict):
        raise ImageEncoderError(f"{path.name} is {describe_weights(state_dict)}", path)
    try:
        return dinov2_config_from_state_dict(state_dict), state_dict
    except ImageEncoderError as error:
        raise ImageEncoderError(f"{path.name}: {error}", path) from error


def load_dinov2(path: str | os.PathLike, positions: str = AUTHORS_POSITIONS) -> DINOv2Encoder:
    """A DINOv2Encoder (float32, eval) from a folder or a bare file; refused unless the weights cover it exactly."""
    from transformers import Dinov2Config, Dinov2Model

    path = Path(path)
    config, state_dict = read_dinov2(path)
    config = Dinov2Config.from_dict({k: v for k, v in config.items() if k not in ("torch_dtype", "dtype")})
    try:
        # transformers maps its own key layouts; eager attention: the same arithmetic in every version
        model, info = Dinov2Model.from_pretrained(None, config=config, state_dict=state_dict,
                                                  output_loading_info=True, attn_implementation="eager")
    except (RuntimeError, ValueError, TypeError) as error:
        raise ImageEncoderError(f"{path.name}: its tensors do not fit a DINOv2 of its config "
                                f"({str(error).splitlines()[0][:300]})", path) from error
    missing = sorted(info["missing_keys"])
    unexpected = sorted(info["unexpected_keys"])
    mismatched = sorted(str(k) for k in info.get("mismatched_keys") or [])
    if missing or unexpected or mismatched:
        found = "; ".join(f"{len(keys)} {what}, e.g. {', '.join(keys[:2])}" for what, keys in
                          (("missing", missing), ("unexpected", unexpected), ("of the wrong shape", mismatched)) if keys)
        what = "" if is_dinov2(state_dict) else f"; the weights are {describe_weights(state_dict)}"
        raise ImageEncoderError(f"{path.name}: its tensors do not cover a DINOv2 ({found}){what}", path)
    return DINOv2Encoder(model.float().eval().requires_grad_(False), positions)


# ---------------------------------------------------------------------------------------------------------
# preprocessing and encoding


def preprocess(images: torch.Tensor, size: int = ENCODER_SIZE) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> DINOv2 input: shortest side to `size` (bicubic, antialiased), centre crop, 8-bit
    rounding, CLIP mean/std.

    Equal to ComfyUI's clip_preprocess, and to the authors' CLIPImageProcessor on an 8-bit PIL photo within
    0.015 (the 8-bit rounding after the crop is what brings the float path there: without it up to 0.11).
    """
    height, width = images.shape[-2:]
    if (height, width) != (size, size):
        scale = size / min(height, width)
        new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
        images = F.interpolate(images, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        images = images[..., top : top + size, left : left + size]
    images = (images * 255.0).clamp(0, 255).round() / 255.0
    mean = torch.tensor(CLIP_MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean) / std


@torch.no_grad()
def encode(encoder: DINOv2Encoder, images: torch.Tensor, keep: torch.Tensor | None = None,
           device: torch.device | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> last_hidden_state (B, tokens, hidden).

    keep (B,): 0 replaces a sample's preprocessed pixels by zeros (the authors' condition dropout). device and
    dtype default to the encoder's first parameter's.
    """
    parameter = next(encoder.parameters())
    device, dtype = device or parameter.device, dtype or parameter.dtype
    pixels = preprocess(images.to(device, torch.float32))
    if keep is not None:
        pixels = pixels * keep.to(pixels).view(-1, 1, 1, 1)
    return encoder(pixels.to(dtype))
