"""Small random-weight files for the stock-node compatibility tests, in the formats users download.

- an SD1.5-format LoRA for the tiny IMAGPose UNet, with the key styles ComfyUI's `comfy/lora.py` maps for SD1.5
  (kohya on diffusers names, kohya on ldm names, diffusers attention processors, PEFT `lora_A`/`lora_B`);
- the same LoRA merged into a copy of the IMAGPose checkpoint by plain arithmetic (the reference);
- an SD1.5 ControlNet in the original (lllyasviel, ldm) format: `control_model.*` keys, built for the tiny
  UNet's sizes with a 4-channel input (a ControlNet sees the noisy latent, not IMAGPose's 9-channel input).
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

RANK = 4

# (key prefix in the LoRA file, its key style, the diffusers UNet parameter it changes)
LORA_TARGETS = [
    ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", "kohya",
     "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"),
    ("lora_unet_up_blocks_1_resnets_0_conv1", "kohya",  # a 3x3 convolution (LoCon)
     "up_blocks.1.resnets.0.conv1.weight"),
    ("lora_unet_input_blocks_3_1_proj_in", "kohya",  # ldm names: input block 3 = level 1's attention
     "down_blocks.1.attentions.0.proj_in.weight"),
    ("unet.mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_k", "diffusers",
     "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"),
    ("unet.up_blocks.2.attentions.0.transformer_blocks.0.ff.net.2", "peft",
     "up_blocks.2.attentions.0.transformer_blocks.0.ff.net.2.weight"),
]
DOWN_UP = {"kohya": (".lora_down.weight", ".lora_up.weight"), "diffusers": ("_lora.down.weight", "_lora.up.weight"),
           "peft": (".lora_A.weight", ".lora_B.weight")}


def lora_factors(unet_state_dict: dict[str, torch.Tensor], seed: int = 0):
    """prefix -> (down, up, alpha or None, target parameter name), random, sized for the given UNet."""
    generator = torch.Generator().manual_seed(seed)
    factors = {}
    for prefix, style, target in LORA_TARGETS:
        weight = unet_state_dict[target]
        out_channels, in_channels = weight.shape[:2]
        kernel = tuple(weight.shape[2:])
        down = torch.randn((RANK, in_channels, *kernel), generator=generator) * 0.3
        up = torch.randn((out_channels, RANK, *([1] * len(kernel))), generator=generator) * 0.3
        alpha = torch.tensor(2.0) if style == "kohya" else None
        factors[prefix] = (down, up, alpha, target, style)
    return factors


def write_lora(path: Path, unet_state_dict: dict[str, torch.Tensor], seed: int = 0) -> dict:
    factors = lora_factors(unet_state_dict, seed)
    tensors = {}
    for prefix, (down, up, alpha, _, style) in factors.items():
        down_key, up_key = DOWN_UP[style]
        tensors[prefix + down_key] = down.contiguous()
        tensors[prefix + up_key] = up.contiguous()
        if alpha is not None:
            tensors[prefix + ".alpha"] = alpha
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return factors


def merged_delta(weight: torch.Tensor, down: torch.Tensor, up: torch.Tensor, alpha, strength: float) -> torch.Tensor:
    """W' = W + strength * alpha / rank * up @ down (alpha absent: scale 1), the LoRA maths of every trainer."""
    scale = strength * (float(alpha) / RANK if alpha is not None else 1.0)
    return weight + (scale * (up.flatten(1) @ down.flatten(1))).reshape(weight.shape).to(weight.dtype)


def write_merged_checkpoint(source: Path, target: Path, factors: dict, strength: float = 1.0) -> Path:
    from imagpose.checkpoints import build_model, load_weights, save_pack

    model = build_model(load_weights(source))
    with torch.no_grad():
        for down, up, alpha, name, _ in factors.values():
            parameter = model.unet.get_parameter(name)
            parameter.copy_(merged_delta(parameter, down, up, alpha, strength))
    return save_pack(model, target, {"note": "random weights with a LoRA merged in"})


def write_controlnet(path: Path, unet_config: dict, seed: int = 0) -> Path:
    """ldm-format SD1.5 ControlNet with the tiny UNet's sizes, random weights (zero convolutions included)."""
    import comfy.cldm.cldm

    config = {k: v for k, v in unet_config.items() if k != "out_channels"}
    config.update(in_channels=4, hint_channels=3, dtype=torch.float32, device="cpu")
    control = comfy.cldm.cldm.ControlNet(**config)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, value in control.state_dict().items():
        tensors["control_model." + name] = (torch.randn(value.shape, generator=generator) * 0.1).contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path
