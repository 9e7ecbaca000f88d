"""The base weights a researcher already has, read without any download.

- Stage 1's UNet: a diffusers Stable Diffusion 1.5 folder (holding `unet/`, or that folder itself), or the single
  file ComfyUI users keep (`v1-5-pruned-emaonly.safetensors` / `.ckpt`: original ldm key names
  `model.diffusion_model.*`).
- The VAE: a diffusers `AutoencoderKL` folder (`sd-vae-ft-mse`), its weights file alone (diffusers key names, as the
  pack's README tells ComfyUI users to keep it), an ldm VAE file (`vae-ft-mse-840000-ema-pruned.safetensors`), or
  the VAE inside an SD1.5 single file (`first_stage_model.*`).

Single files are converted with diffusers' own ldm converters; the diffusers config they need is derived from the
tensor shapes (never fetched), so a tiny test file and the real 4 GB one take the same path. Files of another model
family (SDXL, SD2.x, inpainting, anything else) are refused with a message naming the file and what it is.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from imagpose.checkpoints import CheckpointError, read_state_dict
from imagpose.unet import DEFAULT_HEADS

LDM_UNET = "model.diffusion_model."
LDM_VAE_PREFIXES = ("first_stage_model.", "vae.")
SD2_CONTEXT = 1024  # OpenCLIP ViT-H text tokens (SD1.x: 768 from CLIP ViT-L; smaller test UNets: their own width)
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


class SourceError(ValueError):
    """A base-weight file or folder that cannot start training; the message names it and says what it is."""


def read_file(path: Path, what: str) -> dict[str, torch.Tensor]:
    """All tensors of one file (safetensors, or a pickle read with weights_only=True: code inside is refused)."""
    try:
        state, _ = read_state_dict(path)
    except CheckpointError as error:
        raise SourceError(f"{what}: {error}") from error
    return state


def family(state: dict[str, torch.Tensor]) -> str:
    """'sd15', or a short description of what else the keys say the file is."""
    keys = state.keys()
    if any(k.startswith("conditioner.embedders.") for k in keys) or f"{LDM_UNET}label_emb.0.0.weight" in keys:
        return "an SDXL checkpoint (two text encoders, 2048-wide cross-attention)"
    if any(k.startswith(("joint_blocks.", f"{LDM_UNET}joint_blocks.", "double_blocks.")) for k in keys):
        return "an SD3/Flux-style transformer checkpoint"
    unet = {k[len(LDM_UNET):]: v for k, v in state.items() if k.startswith(LDM_UNET)}
    if not unet:
        if any(".motion_modules." in k for k in keys):
            return "a motion module (AnimateDiff), not a Stable Diffusion checkpoint"
        sample = ", ".join(sorted(keys)[:2]) or "no tensors"
        return f"not a Stable Diffusion checkpoint (no {LDM_UNET}* keys; keys look like {sample})"
    to_k = [v for k, v in unet.items() if k.endswith("attn2.to_k.weight")]
    context = to_k[0].shape[-1] if to_k else None
    linear_proj = any(k.endswith("proj_in.weight") and v.ndim == 2 for k, v in unet.items())
    if any(k.startswith("cond_stage_model.model.") for k in keys) or context == SD2_CONTEXT or linear_proj:
        return ("an SD2.x checkpoint (OpenCLIP text encoder, 1024-wide cross-attention; the 768-v models also "
                "predict v with another schedule)")
    channels = unet.get("input_blocks.0.0.weight")
    if channels is not None and channels.shape[1] != 4:
        return (f"an SD1.x UNet with a {channels.shape[1]}-channel input (an inpainting or other variant); stage 1 "
                "starts from the plain 4-channel text-to-image model")
    return "sd15"


def check_sd15(state: dict[str, torch.Tensor], path: Path, what: str) -> None:
    found = family(state)
    if found != "sd15":
        raise SourceError(f"{what}: {path} is {found}; IMAGPose starts from Stable Diffusion 1.5 "
                          "(e.g. v1-5-pruned-emaonly.safetensors or the diffusers stable-diffusion-v1-5 folder)")


def _levels(blocks: dict[int, set[str]], downsample: str, out_key: str, state: dict, prefix: str):
    """Channels per level and blocks per level of a list of ldm blocks split by downsample layers."""
    levels: list[list[int]] = [[]]
    for index in sorted(blocks):
        if f"{prefix}{index}.{downsample}" in blocks[index]:
            levels.append([])
        else:
            levels[-1].append(index)
    channels = [state[f"{prefix}{level[0]}.0.{out_key}"].shape[0] for level in levels if level]
    counts = [len(level) for level in levels]
    attention = [any(k.startswith(f"{prefix}{i}.1.") for i in level for k in blocks[i]) for level in levels]
    return channels, counts, attention


def ldm_original_config(state: dict[str, torch.Tensor]) -> dict:
    """The `v1-inference.yaml`-style config of an SD1.x single file, read from its tensor shapes.

    diffusers' converters take the model's original (ldm) config; a real file's shapes give exactly the
    published SD1.5 values, a tiny test file its own, so nothing is fetched.
    """
    unet = {k[len(LDM_UNET):]: v for k, v in state.items() if k.startswith(LDM_UNET)}
    inputs: dict[int, set[str]] = {}
    for key in unet:
        if key.startswith("input_blocks.") and not key.startswith("input_blocks.0."):
            inputs.setdefault(int(key.split(".")[1]), set()).add(key)
    channels, counts, attention = _levels(inputs, "0.op.weight", "out_layers.3.weight", unet, "input_blocks.")
    if not channels or len(set(counts)) != 1:
        raise SourceError(f"UNet blocks could not be read (residual blocks per level {counts})")
    model_channels = unet["input_blocks.0.0.weight"].shape[0]
    to_k = next(v for k, v in sorted(unet.items()) if k.endswith("attn2.to_k.weight"))
    depth = len({k.split("transformer_blocks.")[1].split(".")[0] for k in unet
                 if k.startswith("input_blocks.1.1.transformer_blocks.")}) or 1
    unet_params = {
        "in_channels": unet["input_blocks.0.0.weight"].shape[1],
        "out_channels": unet["out.2.weight"].shape[0],
        "model_channels": model_channels,
        "channel_mult": [c // model_channels for c in channels],
        "num_res_blocks": counts[0],
        "attention_resolutions": [2**level for level, has in enumerate(attention) if has],
        "num_heads": DEFAULT_HEADS,  # not stored in weights; SD1.x uses 8 heads everywhere
        "transformer_depth": depth,
        "context_dim": to_k.shape[-1],
        "use_linear_in_transformer": unet["input_blocks.1.1.proj_in.weight"].ndim == 2
        if "input_blocks.1.1.proj_in.weight" in unet else False,
    }
    config = {"model": {"params": {"scale_factor": 0.18215, "unet_config": {"params": unet_params}}}}
    vae = vae_tensors(state)
    if vae:
        config["model"]["params"]["first_stage_config"] = {"params": {"ddconfig": ldm_vae_ddconfig(vae)}}
    else:  # the UNet converter reads the VAE's depth for the sample size only
        config["model"]["params"]["first_stage_config"] = {"params": {"ddconfig": {"ch_mult": [1, 2, 4, 4]}}}
    return config


def vae_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ldm VAE tensors of a file, without their prefix (none for a standalone ldm VAE file)."""
    for prefix in LDM_VAE_PREFIXES:
        found = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if found:
            return found
    if "encoder.conv_in.weight" in state and any(k.startswith("encoder.down.") for k in state):
        return dict(state)
    return {}


def ldm_vae_ddconfig(vae: dict[str, torch.Tensor]) -> dict:
    levels = sorted({int(k.split(".")[2]) for k in vae if k.startswith("encoder.down.")})
    ch = vae["encoder.conv_in.weight"].shape[0]
    widths = [vae[f"encoder.down.{level}.block.0.conv2.weight"].shape[0] for level in levels]
    return {
        "in_channels": vae["encoder.conv_in.weight"].shape[1],
        "out_ch": vae["decoder.conv_out.weight"].shape[0],
        "ch": ch,
        "ch_mult": [w // ch for w in widths],
        "num_res_blocks": len({k.split(".")[4] for k in vae if k.startswith("encoder.down.0.block.")}),
        "z_channels": vae["decoder.conv_in.weight"].shape[1],
    }


def unet_from_single_file(path: Path, what: str = "model.base_unet"):
    """A diffusers UNet2DConditionModel from an SD1.x ldm single file (diffusers' converter, shapes-derived config)."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, create_unet_diffusers_config_from_ldm

    state = read_file(path, what)
    check_sd15(state, path, what)
    try:
        original = ldm_original_config(state)
        config = create_unet_diffusers_config_from_ldm(original, state)
        converted = convert_ldm_unet_checkpoint(state, config)
    except (KeyError, IndexError, StopIteration, ValueError) as error:
        raise SourceError(f"{what}: {path} looks like SD1.x but its UNet could not be converted "
                          f"(truncated or edited file?): {error!r}") from error
    return with_weights(UNet2DConditionModel, config, converted, f"{what}: {path}: the converted UNet")


def with_weights(cls, config: dict, state: dict[str, torch.Tensor], what: str):
    """A diffusers model built without random initialisation (parameters on the meta device) and given `state`."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = cls(**config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise SourceError(f"{what} does not fit (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.float()


def vae_from_single_file(path: Path, what: str = "model.vae"):
    """AutoencoderKL from a file: diffusers key names (sd-vae-ft-mse's weights), or ldm ones (alone or in an SD1.x file)."""
    from diffusers import AutoencoderKL

    state = read_file(path, what)
    if "encoder.down_blocks.0.resnets.0.conv1.weight" in state:  # diffusers layout: config from the shapes
        config = diffusers_vae_config(state)
        converted = state
    else:
        vae = vae_tensors(state)
        found = family(state)
        if not vae:
            what_it_is = "an SD1.x UNet without first_stage_model.* tensors" if found == "sd15" else found
            raise SourceError(f"{what}: {path} holds no VAE ({what_it_is}); give a file or folder with the VAE, "
                              "e.g. sd-vae-ft-mse")
        if any(k.startswith(LDM_UNET) for k in state) and found != "sd15":
            raise SourceError(f"{what}: {path} is {found}; its VAE is not SD1.5's")
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint, create_vae_diffusers_config_from_ldm

        original = {"model": {"params": {"scale_factor": 0.18215,
                                         "first_stage_config": {"params": {"ddconfig": ldm_vae_ddconfig(vae)}}}}}
        try:
            config = create_vae_diffusers_config_from_ldm(original, state)
            converted = convert_ldm_vae_checkpoint(vae, config)
        except (KeyError, IndexError, ValueError) as error:
            raise SourceError(f"{what}: {path}: its VAE could not be converted (truncated or edited?): {error!r}") from error
    return with_weights(AutoencoderKL, config, converted, f"{what}: {path}: the VAE weights")


def diffusers_vae_config(state: dict[str, torch.Tensor]) -> dict:
    levels = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.down_blocks.")})
    widths = [state[f"encoder.down_blocks.{level}.resnets.0.conv2.weight"].shape[0] for level in levels]
    return {
        "in_channels": state["encoder.conv_in.weight"].shape[1],
        "out_channels": state["decoder.conv_out.weight"].shape[0],
        "latent_channels": state["decoder.conv_in.weight"].shape[1],
        "block_out_channels": widths,
        "layers_per_block": len({k.split(".")[4] for k in state if k.startswith("encoder.down_blocks.0.resnets.")}),
        "norm_num_groups": 32,  # not stored in weights; every SD VAE uses 32
        "down_block_types": ["DownEncoderBlock2D"] * len(levels),
        "up_block_types": ["UpDecoderBlock2D"] * len(levels),
    }


def unet_folder(path: Path) -> Path:
    """The diffusers UNet folder of an SD1.5 folder (its unet/) or the folder itself."""
    for candidate in (path / "unet", path):
        if (candidate / "config.json").is_file():
            return candidate
    raise SourceError(f"model.base_unet: {path} holds no diffusers UNet: expected {path / 'unet' / 'config.json'} "
                      "(a stable-diffusion-v1-5 folder), a UNet folder, or an SD1.5 single file "
                      "(v1-5-pruned-emaonly.safetensors)")


def load_base_unet(path: str | os.PathLike):
    """Stage 1's starting UNet (diffusers UNet2DConditionModel) from a folder or an SD1.5 single file."""
    from diffusers import UNet2DConditionModel

    path = Path(path)
    if path.is_file():
        return unet_from_single_file(path)
    if not path.exists():
        raise SourceError(f"model.base_unet: {path} not found: expected {path / 'unet' / 'config.json'} (the "
                          "stable-diffusion-v1-5 folder) or the single file ComfyUI uses "
                          "(models/checkpoints/v1-5-pruned-emaonly.safetensors)")
    folder = unet_folder(path)
    try:
        return UNet2DConditionModel.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as error:
        raise SourceError(f"model.base_unet: could not load the diffusers UNet in {folder}: {error}") from error


def load_vae(path: str | os.PathLike):
    """The frozen VAE (diffusers AutoencoderKL, eval, no grad) from a folder or a file (see the module doc)."""
    from diffusers import AutoencoderKL

    path = Path(path)
    if path.is_file():
        vae = vae_from_single_file(path)
    elif (path / "config.json").is_file() or (path / "vae" / "config.json").is_file():
        folder = path if (path / "config.json").is_file() else path / "vae"
        try:
            vae = AutoencoderKL.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as error:
            raise SourceError(f"model.vae: could not load {folder}: {error}") from error
    else:
        raise SourceError(f"model.vae: {path} is neither a diffusers AutoencoderKL folder ({path}/config.json) nor a "
                          "weights file: give the sd-vae-ft-mse folder, its diffusion_pytorch_model.safetensors, an "
                          "ldm VAE file or the SD1.5 single file (its VAE is used)")
    return vae.requires_grad_(False).eval()
