"""DINOv2 image encoder for the FLC: loading (transformers folder or one safetensors file) and preprocessing."""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F

ENCODER_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # transformers CLIPImageProcessor() defaults, as in training
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageEncoderError(ValueError):
    pass


DINOV2_KEYS = ("embeddings.cls_token", "embeddings.mask_token", "encoder.layer.0.layer_scale1.lambda1")


def is_dinov2(keys) -> bool:
    """Whether tensor names are a transformers Dinov2Model's (names only: a safetensors header is enough).
    Layer scale tells DINOv2 from ViT/CLIP vision models of the same layout."""
    return set(DINOV2_KEYS) <= set(keys)


def is_dinov2_config(config: dict) -> bool:
    return config.get("model_type") == "dinov2"


def dinov2_config_from_state_dict(state_dict: dict[str, torch.Tensor]) -> dict:
    prefix = "embeddings."
    if prefix + "cls_token" not in state_dict:
        raise ImageEncoderError("not a DINOv2 model (transformers Dinov2Model keys such as embeddings.cls_token missing)")
    hidden = state_dict["embeddings.cls_token"].shape[-1]
    patch = state_dict["embeddings.patch_embeddings.projection.weight"].shape[-1]
    positions = state_dict["embeddings.position_embeddings"].shape[1] - 1
    layers = len({k.split(".")[2] for k in state_dict if k.startswith("encoder.layer.")})
    return {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, hidden // 64),
        "intermediate_size": state_dict["encoder.layer.0.mlp.fc1.weight"].shape[0],
        "patch_size": patch,
        "image_size": int(math.isqrt(positions)) * patch,
    }


def load_dinov2(path: str | os.PathLike):
    """A transformers Dinov2Model from a folder (config.json + weights) or a bare safetensors file."""
    from transformers import Dinov2Config, Dinov2Model

    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ImageEncoderError(f"{path} has no config.json: expected a transformers Dinov2Model folder")
        model = Dinov2Model.from_pretrained(str(path), local_files_only=True)
        return model.eval()
    if path.suffix != ".safetensors":
        raise ImageEncoderError(f"{path.name}: expected a folder or a .safetensors file")
    import tempfile

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        shapes = {k: handle.get_slice(k).get_shape() for k in handle.keys()}
    config = Dinov2Config(**dinov2_config_from_state_dict({k: torch.empty(v, device="meta") for k, v in shapes.items()}))
    # transformers maps the file's key layout (which differs between its versions) when loading a folder
    with tempfile.TemporaryDirectory() as folder:
        config.save_pretrained(folder)
        os.symlink(path.resolve(), os.path.join(folder, "model.safetensors"))
        model = Dinov2Model.from_pretrained(folder, local_files_only=True)
    return model.eval()


def preprocess(images: torch.Tensor, size: int = ENCODER_SIZE) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> CLIPImageProcessor-style input: shortest side to `size` (bicubic), centre crop, CLIP norm."""
    height, width = images.shape[-2:]
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    images = F.interpolate(images, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    images = images[..., top : top + size, left : left + size]
    mean = torch.tensor(CLIP_MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean) / std


@torch.no_grad()
def encode(encoder, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> last_hidden_state (B, tokens, hidden)."""
    parameter = next(encoder.parameters())
    pixels = preprocess(images.to(parameter.device, torch.float32)).to(parameter.dtype)
    return encoder(pixel_values=pixels).last_hidden_state
