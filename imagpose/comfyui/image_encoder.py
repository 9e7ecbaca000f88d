"""DINOv2 under ComfyUI's memory management: a ModelPatcher over the library's DINOv2Encoder.

ComfyUI counts it with the other loaded models, offloads it when they need the memory, and places it where it
places its own image encoders (CLIP vision): `text_encoder_device()`, i.e. the GPU normally, the CPU under
--lowvram / --novram, and always the GPU under --gpu-only. It is stored and run in the dtype ComfyUI computes a
UNet in on that device (fp16 / bf16 on GPUs, fp32 on the CPU; --force-fp32 and --fp16-unet / --bf16-unet apply
where the device computes in them).
"""
from __future__ import annotations

import torch

import comfy.model_management
import comfy.model_patcher

from .. import image_encoder

SAFE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # fp8 / fp64 UNet settings do not apply to DINOv2


def encoder_dtype(device: torch.device, parameters: int) -> torch.dtype:
    """The dtype ComfyUI computes a UNet in on `device`: the UNet's storage dtype, or its manual-cast compute dtype
    where the device cannot compute in that one (e.g. --bf16-unet on a CPU computes in float32)."""
    stored = comfy.model_management.unet_dtype(device=device, model_params=parameters,
                                               supported_dtypes=list(SAFE_DTYPES))
    if stored not in SAFE_DTYPES:
        return torch.float16 if comfy.model_management.should_use_fp16(device) else torch.float32
    return comfy.model_management.unet_manual_cast(stored, device, list(SAFE_DTYPES)) or stored


class ImageEncoder:
    """What the IMAGPose Image Encoder Loader outputs: the encoder and the ModelPatcher ComfyUI manages it by."""

    def __init__(self, encoder: image_encoder.DINOv2Encoder):
        load_device = comfy.model_management.text_encoder_device()
        offload_device = comfy.model_management.text_encoder_offload_device()
        self.dtype = encoder_dtype(load_device, sum(p.numel() for p in encoder.parameters()))
        self.encoder = encoder.to(device=offload_device, dtype=self.dtype)
        self.patcher = comfy.model_patcher.ModelPatcher(self.encoder, load_device=load_device,
                                                        offload_device=offload_device)

    @property
    def width(self) -> int:
        return self.encoder.config.hidden_size

    def encode(self, images: torch.Tensor, positions: str = image_encoder.AUTHORS_POSITIONS) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> float32 tokens; the position table as the IMAGPose model was trained with."""
        comfy.model_management.load_models_gpu([self.patcher], force_full_load=True)
        self.encoder.use_positions(positions)
        return image_encoder.encode(self.encoder, images, device=self.patcher.load_device, dtype=self.dtype).float()
