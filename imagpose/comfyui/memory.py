"""How big the nodes let things get: documented maximum sizes, and a memory check before each large allocation.

On the CPU (and Apple's MPS, which shares the RAM), an allocation that does not fit is not caught: the operating
system swaps or kills the server. So every node checks the memory its work needs against what ComfyUI reports free
(`comfy.model_management.get_free_memory`, psutil's available RAM on the CPU) before allocating, and refuses with the
sizes involved. On CUDA, ComfyUI catches running out of memory in VAE work itself (it retries tiled), so VAE work there
is left to ComfyUI.
"""
from __future__ import annotations

import torch

import comfy.model_management

from .errors import InputError

MAX_POSE_SIDE = 8192  # pose images drawn by Pose Render / Retarget (ComfyUI's own widgets allow 16384)
MAX_CELL_SIDE = 2048  # a grid cell; the 2x2 grid is twice as wide and tall
FLOAT_BYTES = 4
GIB = 1024**3
RAM_DEVICES = ("cpu", "mps")
# Peak bytes per image pixel of ComfyUI's SD VAE encoding in float32 on the CPU, measured with
# benchmarks/vae_memory.py (ComfyUI 0.3.75, torch 2.14, 256x256 to 512x512): 8.7-12.6 KB; the upper end, rounded up.
CPU_VAE_ENCODE_BYTES_PER_PIXEL = 13_000


def gib(size: float) -> str:
    return f"{size / GIB:.1f} GiB"


def free_bytes(device=None) -> int:
    """What ComfyUI reports free on a device (the CPU: psutil's available RAM)."""
    return int(comfy.model_management.get_free_memory(torch.device("cpu") if device is None else device))


def require(input_name: str, what: str, needed: int, got: str, device=None) -> None:
    """Refuse work whose estimated peak memory is more than is free, before anything is allocated."""
    free = free_bytes(device)
    if needed > free:
        where = "free RAM" if device is None or torch.device(device).type == "cpu" else f"free on {device}"
        raise InputError(input_name, f"{what}, within the memory available now ({gib(free)} {where})",
                         f"{got}, which needs about {gib(needed)}")


def image_bytes(count: int, height: int, width: int, channels: int = 3) -> int:
    """A float32 IMAGE batch (ComfyUI's image type)."""
    return count * height * width * channels * FLOAT_BYTES


def check_side(input_name: str, width: int, height: int, maximum: int, got: str) -> None:
    if not (0 < width <= maximum and 0 < height <= maximum):
        raise InputError(input_name, f"a size of at most {maximum}x{maximum} px", got)


def vae_encode_bytes(vae, pixels: int) -> int:
    """Peak memory of VAE-encoding `pixels` image pixels with `vae` where ComfyUI cannot recover from running out
    (see the module note); 0 where it can."""
    device = torch.device(getattr(vae, "device", "cpu"))
    if device.type not in RAM_DEVICES:
        return 0
    scale = comfy.model_management.dtype_size(getattr(vae, "vae_dtype", torch.float32)) / FLOAT_BYTES
    return int(pixels * CPU_VAE_ENCODE_BYTES_PER_PIXEL * scale)
