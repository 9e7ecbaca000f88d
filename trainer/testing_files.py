"""Tiny random-weight files in the real formats researchers download, for tests and the tiny setup.

- `write_sd15_single_file`: an SD1.5 single file as ComfyUI users keep it (`v1-5-pruned-emaonly.safetensors`):
  original ldm key names, the UNet under `model.diffusion_model.*`, the VAE under `first_stage_model.*`, a CLIP
  text-encoder stub under `cond_stage_model.transformer.*`. Written from small diffusers models by the inverse of
  diffusers' ldm converters (tests check the round trip).
- `write_motion_module_ckpt`: AnimateDiff's `mm_sd_v15_v2.ckpt` layout: a `torch.save` of a plain state dict with
  `down_blocks.N.motion_modules.M.*` keys.
- `write_metric_backbones`: torchvision's `inception_v3_google-0cc3c7bd.pth` and `alexnet-owt-7be5be79.pth` file
  names and key names with random weights (only the tensors the metrics read, to keep the files small).
"""
from __future__ import annotations

from pathlib import Path

import torch

RESNET_TO_LDM = (("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("time_emb_proj.", "emb_layers.1."),
                 ("norm2.", "out_layers.0."), ("conv2.", "out_layers.3."), ("conv_shortcut.", "skip_connection."))
VAE_RESNET_TO_LDM = (("conv_shortcut.", "nin_shortcut."),)
VAE_ATTENTION_TO_LDM = (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                        ("to_out.0.", "proj_out."))


def _rename(rest: str, table) -> str:
    for old, new in table:
        if rest.startswith(old):
            return new + rest[len(old):]
    return rest


def unet_to_ldm(state: dict[str, torch.Tensor], layers_per_block: int, attention_levels: set[int]) -> dict:
    """diffusers UNet2DConditionModel keys -> ldm `model.diffusion_model.*` keys (SD1.x layout, any size)."""
    per_level = layers_per_block + 1
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "time_embedding":
            new = f"time_embed.{0 if parts[1] == 'linear_1' else 2}.{parts[2]}"
        elif parts[0] == "conv_in":
            new = f"input_blocks.0.0.{parts[1]}"
        elif parts[0] == "conv_norm_out":
            new = f"out.0.{parts[1]}"
        elif parts[0] == "conv_out":
            new = f"out.2.{parts[1]}"
        elif parts[0] == "down_blocks":
            level, kind = int(parts[1]), parts[2]
            if kind == "downsamplers":
                new = f"input_blocks.{1 + level * per_level + layers_per_block}.0.op.{parts[-1]}"
            else:
                index = 1 + level * per_level + int(parts[3])
                rest = ".".join(parts[4:])
                new = (f"input_blocks.{index}.0.{_rename(rest, RESNET_TO_LDM)}" if kind == "resnets"
                       else f"input_blocks.{index}.1.{rest}")
        elif parts[0] == "mid_block":
            rest = ".".join(parts[3:])
            new = (f"middle_block.1.{rest}" if parts[1] == "attentions"
                   else f"middle_block.{2 * int(parts[2])}.{_rename(rest, RESNET_TO_LDM)}")
        elif parts[0] == "up_blocks":
            level, kind = int(parts[1]), parts[2]
            if kind == "upsamplers":
                slot = 2 if level in attention_levels else 1
                new = f"output_blocks.{level * per_level + layers_per_block}.{slot}.conv.{parts[-1]}"
            else:
                index = level * per_level + int(parts[3])
                rest = ".".join(parts[4:])
                new = (f"output_blocks.{index}.0.{_rename(rest, RESNET_TO_LDM)}" if kind == "resnets"
                       else f"output_blocks.{index}.1.{rest}")
        else:
            raise KeyError(f"no ldm name for UNet key {key}")
        out["model.diffusion_model." + new] = value
    return out


def vae_to_ldm(state: dict[str, torch.Tensor], levels: int) -> dict:
    """diffusers AutoencoderKL keys -> ldm `first_stage_model.*` keys (attention projections as 1x1 convs)."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        coder = parts[0]
        if coder in ("quant_conv", "post_quant_conv"):
            new = key
        elif parts[1] in ("conv_in", "conv_out"):
            new = key
        elif parts[1] == "conv_norm_out":
            new = f"{coder}.norm_out.{parts[2]}"
        elif parts[1] == "mid_block":
            rest = ".".join(parts[4:])
            if parts[2] == "attentions":
                new = f"{coder}.mid.attn_1.{_rename(rest, VAE_ATTENTION_TO_LDM)}"
                if value.ndim == 2:
                    value = value[:, :, None, None]
            else:
                new = f"{coder}.mid.block_{int(parts[3]) + 1}.{_rename(rest, VAE_RESNET_TO_LDM)}"
        elif parts[1] in ("down_blocks", "up_blocks"):
            level = int(parts[2])
            ldm_level = level if parts[1] == "down_blocks" else levels - 1 - level
            name = "down" if parts[1] == "down_blocks" else "up"
            if parts[3] in ("downsamplers", "upsamplers"):
                new = f"{coder}.{name}.{ldm_level}.{'downsample' if name == 'down' else 'upsample'}.conv.{parts[-1]}"
            else:
                rest = ".".join(parts[5:])
                new = f"{coder}.{name}.{ldm_level}.block.{parts[4]}.{_rename(rest, VAE_RESNET_TO_LDM)}"
        else:
            raise KeyError(f"no ldm name for VAE key {key}")
        out["first_stage_model." + new] = value
    return out


def write_sd15_single_file(path: Path, unet, vae, dtype: torch.dtype = torch.float16) -> Path:
    """The UNet (4 channels) and VAE of small diffusers models as one ldm-keyed SD1.5-style file (fp16 like emaonly)."""
    from safetensors.torch import save_file

    attention_levels = {i for i, kind in enumerate(unet.config.up_block_types) if "CrossAttn" in kind}
    state = unet_to_ldm(unet.state_dict(), unet.config.layers_per_block, attention_levels)
    state.update(vae_to_ldm(vae.state_dict(), len(vae.config.block_out_channels)))
    width = unet.config.cross_attention_dim
    # a stand-in for the CLIP ViT-L text encoder the real file carries (training never reads it)
    state["cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"] = torch.zeros(77, width)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to(dtype).contiguous() for k, v in state.items()}, str(path))
    return path


def write_motion_module_ckpt(path: Path, unet_state: dict[str, torch.Tensor]) -> Path:
    """AnimateDiff-style motion module: `torch.save` of the `*.motion_modules.*` tensors (a zip pickle, as published)."""
    motion = {k: v.detach().clone() for k, v in unet_state.items() if ".motion_modules." in k}
    if not motion:
        raise ValueError("the UNet state holds no motion-module tensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(motion, path)
    return path


def write_metric_backbones(folder: Path, seed: int = 0) -> dict[str, Path]:
    """Random-weight Inception-v3 and AlexNet files under torchvision's file and key names (metric tests only)."""
    from torchvision.models import alexnet, inception_v3

    from .metrics import ALEXNET_FILE, INCEPTION_FILE, INCEPTION_UNUSED

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    networks = {"inception": inception_v3(weights=None, aux_logits=True, init_weights=False), "alexnet": alexnet(weights=None)}
    for network in networks.values():  # He-initialised convolutions keep 50 random layers' activations alive
        for module in network.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
    inception = {k: v for k, v in networks["inception"].state_dict().items() if not k.startswith(INCEPTION_UNUSED)}
    features = {k: v for k, v in networks["alexnet"].state_dict().items() if k.startswith("features.")}
    paths = {"inception": folder / INCEPTION_FILE, "alexnet": folder / ALEXNET_FILE}
    torch.save(inception, paths["inception"])
    torch.save(features, paths["alexnet"])
    return paths
