"""Sigmas for ComfyUI's custom samplers at the authors' DDIM (trailing) timesteps, from the MODEL's own table."""
from __future__ import annotations

import torch

from ..sampling import sampling_sigmas
from .errors import InputError


def trailing_sigmas(model, steps: int) -> torch.Tensor:
    """(steps + 1,) SIGMAS: the MODEL's own sigma at each trailing timestep (diffusers' DDIMScheduler
    timestep_spacing="trailing"), then 0. ComfyUI's `simple` scheduler equals them only when steps divides 1000."""
    table = model.get_model_object("model_sampling").sigmas.float().cpu()
    try:
        return sampling_sigmas(steps, table)
    except ValueError as error:
        raise InputError("steps", f"1 to {len(table)} steps", str(steps)) from error
