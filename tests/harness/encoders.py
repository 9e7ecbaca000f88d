"""Wrong image encoders for the loaders' refusal tests (unit and end-to-end)."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WIDTH = 64  # imagpose.testing.TINY_DINOV2's width: a CLIP of the same width loads without shape errors


def write_clip_vision(folder: Path) -> Path:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=WIDTH, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=1, image_size=224, patch_size=14)
    CLIPVisionModel(config).save_pretrained(folder, safe_serialization=True)
    return folder


def write_wrong_encoders(root: Path, dinov2: Path) -> dict[str, tuple[Path, str]]:
    """Image encoders that are not a DINOv2, written under `root` from the DINOv2 folder `dinov2`: name -> (path,
    what the refusal must say). Issue #8 class 1: a CLIP vision model of the same width (folder and bare file),
    a folder with only config.json, a DINOv2 config with CLIP weights, a truncated file, missing and
    unexpected tensors."""
    clip = write_clip_vision(root / "clip-vision")
    state = load_file(str(dinov2 / "model.safetensors"))
    save_file(load_file(str(clip / "model.safetensors")), str(root / "clip-vision.safetensors"))
    config_only = root / "config-only"
    config_only.mkdir()
    (config_only / "config.json").write_text((dinov2 / "config.json").read_text())
    mixed = root / "dinov2-config-clip-weights"
    mixed.mkdir()
    (mixed / "config.json").write_text((dinov2 / "config.json").read_text())
    (mixed / "model.safetensors").write_bytes((clip / "model.safetensors").read_bytes())
    data = (dinov2 / "model.safetensors").read_bytes()
    (root / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    save_file({k: v for k, v in state.items() if ".layer.1.mlp.fc1." not in k}, str(root / "missing.safetensors"))
    save_file({**state, "head.weight": torch.zeros(3, 64)}, str(root / "unexpected.safetensors"))
    return {
        "clip_folder": (clip, "clip-vision/config.json describes model_type 'clip_vision_model' (CLIPVisionModel), "
                              "not DINOv2"),
        "clip_file": (root / "clip-vision.safetensors", "clip-vision.safetensors is a CLIP/SigLIP-style vision model"),
        "config_only": (config_only, "folder config-only holds a config.json but no weights"),
        "clip_weights": (mixed, "dinov2-config-clip-weights: its tensors do not cover a DINOv2 ("),
        "truncated": (root / "truncated.safetensors", "truncated.safetensors is not a readable safetensors file"),
        "missing": (root / "missing.safetensors", "missing.safetensors: its tensors do not cover a DINOv2 (2 missing"),
        "unexpected": (root / "unexpected.safetensors", "unexpected.safetensors: its tensors do not cover a DINOv2 "
                                                        "(1 unexpected, e.g. head.weight)"),
    }
