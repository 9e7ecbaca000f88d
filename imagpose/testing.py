"""Small random-weight models written in the real file formats, for tests and the random-weight demo.

    python -m imagpose.testing make-models MODELS_ROOT

writes imagpose/tiny-imagpose.safetensors (pack format), imagpose/tiny-authors/ (authors' .pth files),
imagpose/tiny-dinov2/ (transformers folder) and vae/tiny-vae.safetensors (SD VAE shape, random weights).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .checkpoints import save_authors_format, save_pack
from .model import IMAGPoseModel
from .patch_embed import PatchEmbedding
from .pose_guider import PoseGuider
from .unet import IMAGPoseUNet

TINY_UNET = {
    "sample_size": 16,
    "in_channels": 9,
    "out_channels": 4,
    "block_out_channels": [32, 64, 64, 64],
    "layers_per_block": 1,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 64,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
TINY_POSE_GUIDER = {"embedding_channels": 32, "block_out_channels": [16, 16, 32, 32]}
TINY_PATCH = {"patch_size": 4, "in_channels": 4, "embed_dim": 64}
TINY_DINOV2 = {
    "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 1,  # head width 64, as every DINOv2
    "mlp_ratio": 2,
    "patch_size": 14, "image_size": 518,  # DINOv2's real 37x37 position table, resampled for 224 px inputs
}
SD_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
    "block_out_channels": [128, 256, 512, 512], "sample_size": 512,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
}


def make_tiny_model(seed: int = 0, layers_per_block: int = 1, block_out_channels: list[int] | None = None) -> IMAGPoseModel:
    """Random weights everywhere, zero-initialised outputs included, so every part changes the result.

    `block_out_channels` multiples of 64 give a UNet that SD1.5-format add-ons (ControlNets) can be made for:
    ComfyUI builds those with 64-channel attention heads."""
    torch.manual_seed(seed)
    channels = list(block_out_channels or TINY_UNET["block_out_channels"])
    unet = IMAGPoseUNet(**{**TINY_UNET, "layers_per_block": layers_per_block, "block_out_channels": channels})
    pose_guider = PoseGuider(**{**TINY_POSE_GUIDER, "embedding_channels": channels[0]})
    model = IMAGPoseModel(unet, pose_guider, PatchEmbedding(**TINY_PATCH))
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if torch.count_nonzero(param) == 0 and name.endswith("weight"):
                param.normal_(0.0, 0.2, generator=generator)
    return model.eval()


def write_tiny_dinov2(folder: Path, seed: int = 0) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    Dinov2Model(Dinov2Config(**TINY_DINOV2)).save_pretrained(folder, safe_serialization=True)
    return folder


def write_random_sd_vae(path: Path, seed: int = 0) -> Path:
    """diffusers-format SD VAE with random weights (ComfyUI's VAELoader fixes the SD VAE's width)."""
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    vae = AutoencoderKL(**SD_VAE)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half().contiguous() for k, v in vae.state_dict().items()}, str(path))
    return path


def make_models(root: Path, seed: int = 0) -> dict[str, Path]:
    model = make_tiny_model(seed)
    paths = {
        "pack": save_pack(model, root / "imagpose" / "tiny-imagpose.safetensors", {"note": "random weights"}),
        "authors": root / "imagpose" / "tiny-authors",
        "dinov2": write_tiny_dinov2(root / "imagpose" / "tiny-dinov2", seed),
        "vae": write_random_sd_vae(root / "vae" / "tiny-vae.safetensors", seed),
    }
    save_authors_format(model, paths["authors"])
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imagpose.testing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make-models", help="write random-weight test models under MODELS_ROOT")
    make.add_argument("models_root", type=Path)
    make.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name, path in make_models(args.models_root, args.seed).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
