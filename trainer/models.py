"""Building the IMAGPose model for each training stage, and the frozen VAE / DINOv2 it is trained with.

The trained network is `imagpose.model.IMAGPoseModel`, the same class the ComfyUI nodes load; checkpoints go
through `imagpose.checkpoints` both ways.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from imagpose import image_encoder as image_encoder_lib
from imagpose.checkpoints import CheckpointError, IMAGPoseWeights, build_model, load_weights, read_motion_modules
from imagpose.cva import AttentionFunction, sdpa_attention
from imagpose.model import IMAGPoseModel
from imagpose.patch_embed import PatchEmbedding
from imagpose.pose_guider import PoseGuider
from imagpose.training import widen_conv_in
from imagpose.unet import IN_CHANNELS, MOTION_KEY, IMAGPoseUNet, unet_config_from_state_dict

from . import export, sources

logger = logging.getLogger(__name__)

# base-UNet settings the IMAGPose loaders cannot read from tensor shapes: they must have these values
FIXED_BASE_CONFIG = {"norm_num_groups": 32}
DERIVED_KEYS = ("block_out_channels", "layers_per_block", "down_block_types", "up_block_types",
                "cross_attention_dim", "use_linear_projection")


class SetupError(RuntimeError):
    """A model file or folder the trainer cannot use; the message names the expected folder or file."""


def stage1_model(base_unet: str | os.PathLike, pose_guider_channels=(16, 32, 96, 256), patch_size: int = 16,
                 cva: dict | None = None) -> IMAGPoseModel:
    """IMAGPose model from an SD1.5 UNet: conv_in widened to 9 channels (new ones zero), new pose guider,
    patch embedder and CVA modules (zero output projections: each starts as the identity)."""
    folder = Path(base_unet)
    try:
        base = sources.load_base_unet(base_unet)  # a diffusers folder or an SD1.5 single file
    except sources.SourceError as error:
        raise SetupError(str(error)) from error
    state = base.state_dict()
    if state["conv_in.weight"].shape[1] != 4:
        raise SetupError(f"model.base_unet: {folder} has a {state['conv_in.weight'].shape[1]}-channel conv_in; "
                         "stage 1 starts from a plain 4-channel SD1.5 UNet")
    heads = base.config.attention_head_dim
    if not isinstance(heads, int):
        raise SetupError(f"model.base_unet: per-block head counts {heads} are not supported (SD1.5 uses 8 everywhere)")
    state["conv_in.weight"] = widen_conv_in(state["conv_in.weight"], IN_CHANNELS)
    config = unet_config_from_state_dict(state, heads=heads)
    for key, value in FIXED_BASE_CONFIG.items():
        if base.config[key] != value:
            raise SetupError(f"model.base_unet: {key}={base.config[key]} is not supported (IMAGPose files assume {value})")
    mismatched = [k for k in DERIVED_KEYS if _plain(base.config[k]) != _plain(config[k])]
    if mismatched:
        raise SetupError(f"model.base_unet: {folder} is not an SD1.5-family UNet the IMAGPose loaders can rebuild "
                         f"(differs in {', '.join(mismatched)})")
    del base
    unet = IMAGPoseUNet(**config, cva_config=dict(cva or {}))
    missing, unexpected = unet.load_state_dict(state, strict=False)
    not_cva = [k for k in missing if MOTION_KEY not in k]
    if not_cva or unexpected:
        raise SetupError(f"model.base_unet: weights do not fit (missing {not_cva[:3]}, unexpected {unexpected[:3]})")
    pose_guider = PoseGuider(embedding_channels=config["block_out_channels"][0],
                             block_out_channels=tuple(pose_guider_channels))
    patch_embed = PatchEmbedding(patch_size=patch_size, in_channels=config["out_channels"],
                                 embed_dim=config["cross_attention_dim"])
    return IMAGPoseModel(unet, pose_guider, patch_embed)


def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def trained_weights(checkpoint: str | os.PathLike) -> IMAGPoseWeights:
    """The weights of a trainer checkpoint-N folder (its EMA weights when it has them, as the stage's pack file), a
    pack file, or the authors' files; `image_encoder_positions` says how DINOv2 was run in training (None: the
    file does not say, i.e. the authors')."""
    path = Path(checkpoint)
    try:
        return export.model_weights(path) if export.is_checkpoint(path) else load_weights(path)
    except CheckpointError as error:
        raise SetupError(f"model.init_checkpoint: {error}") from error


def trained_model(checkpoint: str | os.PathLike | IMAGPoseWeights) -> IMAGPoseModel:
    """A model from `trained_weights` (or weights already read)."""
    weights = checkpoint if isinstance(checkpoint, IMAGPoseWeights) else trained_weights(checkpoint)
    try:
        model = build_model(weights)
    except CheckpointError as error:
        raise SetupError(f"model.init_checkpoint: {error}") from error
    with torch.no_grad():  # own memory: the loader may map the file, which must never be written through
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.data = tensor.data.clone()
    return model.train()


def load_motion_module(unet: IMAGPoseUNet, path: str | os.PathLike) -> int:
    """Copy AnimateDiff-v2-style `*.motion_modules.*` weights into the CVA modules; returns how many tensors.

    Every CVA parameter must be in the file with the same shape; the sinusoidal `pos_encoder.pe` buffers are
    taken when their shape matches and kept otherwise (they are a fixed function of the cell index).
    """
    try:
        motion = read_motion_modules(path)
    except CheckpointError as error:
        raise SetupError(f"model.motion_module: {error}") from error
    own = {k: v for k, v in unet.state_dict().items() if MOTION_KEY in k}
    missing = [k for k in own if k not in motion and not k.endswith(".pe")]
    wrong = [f"{k} {tuple(motion[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in motion and motion[k].shape != v.shape and not k.endswith(".pe")]
    if missing or wrong:
        raise SetupError(f"model.motion_module: {Path(path).name} does not fit this UNet's CVA modules "
                         f"(missing {len(missing)}, e.g. {missing[:2]}; wrong shape {wrong[:2]}); "
                         "an SD1.5 AnimateDiff v2 / Moore-AnimateAnyone motion_module.pth is expected")
    extra = [k for k in motion if k not in own]
    if extra:
        logger.warning("motion module: %d tensors have no CVA counterpart and are ignored, e.g. %s", len(extra), extra[:2])
    loaded = {k: motion[k] for k, v in own.items() if k in motion and motion[k].shape == v.shape}
    unet.load_state_dict(loaded, strict=False)
    return len(loaded)


def is_cva(name: str) -> bool:
    return MOTION_KEY in f".{name}"


def set_trainable(model: IMAGPoseModel, stage: str) -> list[nn.Parameter]:
    """stage1: everything but CVA; stage2: only CVA; end2end: everything. Returns the trainable parameters."""
    trainable = []
    for name, parameter in model.named_parameters():
        flag = {"stage1": not is_cva(name), "stage2": is_cva(name), "end2end": True}[stage]
        parameter.requires_grad_(flag)
        if flag:
            trainable.append(parameter)
    return trainable


class TrainingNet(nn.Module):
    """The trained modules behind one forward (what accelerate wraps: DDP and DeepSpeed see every use).

    `keep` (B,) zeroes the whole FLC context of dropped samples: exactly the nodes' negative conditioning
    (condition dropout 'context'; 'authors' drops pixels/latents before this and keeps 1 here).
    """

    def __init__(self, model: IMAGPoseModel, use_cva: bool, attention: AttentionFunction = sdpa_attention):
        super().__init__()
        self.model = model
        self.use_cva = use_cva
        self.attention = attention

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor, image_embeds: torch.Tensor,
                reference_latents: torch.Tensor, pose_grid: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        context = self.model.context(image_embeds, reference_latents)
        context = context * keep.to(context.dtype).view(-1, 1, 1)
        return self.model(sample, timesteps, context, pose_grid, attention=self.attention, use_cva=self.use_cva)


def load_vae(path: str | os.PathLike):
    """The frozen VAE from a diffusers folder, its weights file, an ldm VAE file or an SD1.5 single file."""
    try:
        return sources.load_vae(path)
    except sources.SourceError as error:
        raise SetupError(str(error)) from error


def vae_downscale(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def load_image_encoder(path: str | os.PathLike, positions: str = image_encoder_lib.AUTHORS_POSITIONS):
    """The same DINOv2Encoder the nodes load (position table resampled by `positions`), frozen."""
    path = Path(path)
    if not path.exists():
        raise SetupError(f"model.image_encoder: {path} not found: expected a transformers Dinov2Model folder "
                         "(config.json + model.safetensors, e.g. dinov2-base) or one .safetensors file")
    try:
        encoder = image_encoder_lib.load_dinov2(path, positions)
    except (image_encoder_lib.ImageEncoderError, OSError) as error:
        raise SetupError(f"model.image_encoder: {path}: {error}") from error
    return encoder.requires_grad_(False).eval()


def check_compatible(model: IMAGPoseModel, vae, encoder) -> None:
    """Sizes that must agree between the trained model and the frozen encoders."""
    width = model.unet.config.cross_attention_dim
    if encoder.config.hidden_size != width:
        raise SetupError(f"model.image_encoder: its tokens are {encoder.config.hidden_size} wide but the UNet's "
                         f"cross-attention takes {width} (DINOv2-base (768) for SD1.5)")
    if vae.config.latent_channels != model.unet.config.out_channels:
        raise SetupError(f"model.vae: {vae.config.latent_channels} latent channels, the UNet predicts "
                         f"{model.unet.config.out_channels}")
    if model.pose_guider.downscale != vae_downscale(vae):
        raise SetupError(f"model.pose_guider_channels: the pose guider downsamples by {model.pose_guider.downscale}, "
                         f"the VAE by {vae_downscale(vae)}; they must match")
