"""IMAGPose as a ComfyUI MODEL: the UNet in ComfyUI's own UNetModel, CVA and pose guider attached through
ModelPatcher mechanisms (injections, an input-block patch, a diffusion-model wrapper, an additional model).

Nothing global is touched: the CVA layers exist inside this model's blocks only while it is patched for
sampling, and are removed when ComfyUI unpatches it. The CVA and pose guider layers are ComfyUI operations
like the UNet's own, so they are stored in the UNet's weight dtype (--fp16-unet, --bf16-unet) and computed in
its compute dtype.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

import comfy.conds
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.patcher_extension
import comfy.supported_models
import comfy.utils
from comfy.ldm.modules.attention import optimized_attention
from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock, Upsample

from ..model import IMAGPoseModel
from ..unet import MOTION_KEY

KEY = "imagpose"
POSE_COND = "imagpose_pose"
POSE_FEATURES = "imagpose_pose_features"
NOT_IMAGPOSE_MODEL = (
    "IMAGPose conditioning (from IMAGPose ILC Pack) reached a model that is not an IMAGPose model. Connect the "
    "sampler's model to the 'model' output of IMAGPose Model Loader: a plain SD1.5 checkpoint has no pose guider or "
    "cross-view attention and cannot use the pose grid and reference tokens."
)


class NotAnIMAGPoseModel(ValueError):
    pass


class PoseGridCond(comfy.conds.CONDRegular):
    """The pose grid as ILC Pack puts it in the conditioning. Only an IMAGPose model may read it: its CALC_COND_BATCH
    wrapper (`_claim_pose_grid`) hands it on as a plain CONDRegular. Any other model reaches `process_cond`, the first
    thing ComfyUI does with a model cond at every step, and the user learns which model is wrong before that model
    fails on the shapes (or, with DINOv2-base and SD1.5 both 768 wide, silently makes an image without the pose)."""

    def process_cond(self, batch_size, **kwargs):
        raise NotAnIMAGPoseModel(NOT_IMAGPOSE_MODEL)


def _claim_pose_grid(executor, model, conds, x_in, timestep, model_options):
    """On the IMAGPose model, the pose grids of this step's conds become plain CONDRegular (the conds are copies)."""
    def claimed(cond: dict) -> dict:
        pose = cond.get("model_conds", {}).get(POSE_COND)
        if not isinstance(pose, PoseGridCond):
            return cond
        return {**cond, "model_conds": {**cond["model_conds"], POSE_COND: comfy.conds.CONDRegular(pose.cond)}}

    conds = [None if group is None else [claimed(cond) for cond in group] for group in conds]
    return executor(model, conds, x_in, timestep, model_options)


def comfy_unet_config(model: IMAGPoseModel) -> dict:
    """ComfyUI UNetModel config equal to the diffusers config of `model.unet`."""
    config = model.unet.config
    channels = list(config.block_out_channels)
    base = channels[0]
    if any(c % base for c in channels):
        raise ValueError(f"block channels {channels} are not multiples of the first; ComfyUI's UNet cannot hold them")
    layers = config.layers_per_block
    depth = config.transformer_layers_per_block
    down_depth = [depth if t.startswith("CrossAttn") else 0 for t in config.down_block_types]
    up_depth_deep_first = [depth if t.startswith("CrossAttn") else 0 for t in config.up_block_types]
    return {
        "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
        "adm_in_channels": None, "in_channels": config.in_channels, "out_channels": config.out_channels,
        "model_channels": base, "num_res_blocks": [layers] * len(channels),
        "channel_mult": [c // base for c in channels],
        "transformer_depth": [d for d in down_depth for _ in range(layers)],
        "transformer_depth_output": [d for d in reversed(up_depth_deep_first) for _ in range(layers + 1)],
        "transformer_depth_middle": depth, "use_linear_in_transformer": bool(config.use_linear_projection),
        "context_dim": config.cross_attention_dim, "num_heads": config.attention_head_dim,
        "use_temporal_attention": False, "use_temporal_resblock": False,
    }


def comfy_unet_state_dict(model: IMAGPoseModel, unet_config: dict) -> dict[str, torch.Tensor]:
    """diffusers UNet keys -> ComfyUI (ldm) keys, CVA weights left out (they are attached separately)."""
    mapping = comfy.utils.unet_to_diffusers(unet_config)
    source = {k: v for k, v in model.unet.state_dict().items() if MOTION_KEY not in k}
    converted = {mapping[k]: v for k, v in source.items() if k in mapping}
    unmapped = sorted(set(source) - set(mapping))
    if unmapped:
        raise ValueError(f"UNet keys with no ComfyUI counterpart: {unmapped[:5]}")
    return converted


def cva_slots(diffusion_model) -> list[tuple[nn.Sequential, int]]:
    """Where each CVA module goes, in the order of IMAGPoseUNet.cva_modules(): after every resnet[/attention]
    pair of the input blocks, after the middle attention, and in the output blocks before the upsampler."""
    slots: list[tuple[nn.Sequential, int]] = []
    for block in diffusion_model.input_blocks[1:]:
        if isinstance(block[0], ResBlock):
            slots.append((block, len(block)))
    slots.append((diffusion_model.middle_block, 2))
    for block in diffusion_model.output_blocks:
        upsampler = [i for i, layer in enumerate(block) if isinstance(layer, Upsample)]
        slots.append((block, upsampler[0] if upsampler else len(block)))
    return slots


class CVALayer(nn.Module):
    """Stands in a UNet block while sampling; calls a CVA module owned by the additional model."""

    def __init__(self, holder: "IMAGPoseExtras", index: int):
        super().__init__()
        self._holder = (holder,)  # a tuple, so the module is not registered as this layer's child
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        extras = self._holder[0]
        extras.cva_calls += 1
        return extras.cva[self.index](x, optimized_attention)


COMFY_OPERATIONS = ("Linear", "Conv2d", "GroupNorm", "LayerNorm")


def use_comfy_operations(module: nn.Module, operations) -> None:
    """Make the torch layers of `module` ComfyUI's layers of the same kind (`comfy.ops`), as the UNet's own are:
    they then compute in the dtype of their input (casting weights stored in another dtype, e.g. bf16 weights on a
    CPU computing in fp32) and can be streamed by ComfyUI's lowvram mode."""
    for layer in module.modules():
        name = type(layer).__name__
        if name in COMFY_OPERATIONS and type(layer) is getattr(nn, name):
            layer.__class__ = getattr(operations, name)  # a subclass without state of its own: same weights, same maths
        elif next(layer.parameters(recurse=False), None) is not None and not isinstance(layer, comfy.ops.CastWeightBiasOp):
            raise TypeError(f"IMAGPose: {type(layer).__name__} has weights but no ComfyUI operation")


class IMAGPoseExtras(nn.Module):
    """The weights ComfyUI's UNetModel has no place for, loaded/offloaded with the UNet."""

    def __init__(self, model: IMAGPoseModel, operations):
        super().__init__()
        self.cva = nn.ModuleList(model.unet.cva_modules())
        self.pose_guider = model.pose_guider
        use_comfy_operations(self, operations)
        self.cva_calls = 0  # CVA layers run in the current UNet call (checked by the pose wrapper)


def _inject(extras: IMAGPoseExtras):
    def inject(patcher: comfy.model_patcher.ModelPatcher) -> None:
        slots = cva_slots(patcher.model.diffusion_model)
        if len(slots) != len(extras.cva):
            raise RuntimeError(f"IMAGPose: {len(extras.cva)} CVA modules for {len(slots)} UNet slots")
        for index in reversed(range(len(slots))):  # back to front, so earlier insert positions stay valid
            block, position = slots[index]
            block.insert(position, CVALayer(extras, index))
        logging.debug("IMAGPose: inserted %d cross-view attention layers into the UNet", len(slots))

    def eject(patcher: comfy.model_patcher.ModelPatcher) -> None:
        model = patcher.model.diffusion_model
        removed = 0
        for block in [*model.input_blocks, model.middle_block, *model.output_blocks]:
            for position in reversed(range(len(block))):
                if isinstance(block[position], CVALayer):
                    del block[position]
                    removed += 1
        if removed:  # a clone of an injected patcher ejects once more, finding nothing
            logging.debug("IMAGPose: removed %d cross-view attention layers from the UNet", removed)

    return comfy.patcher_extension.PatcherInjection(inject=inject, eject=eject)


def _pose_wrapper(extras: IMAGPoseExtras):
    def wrapper(executor, x, timesteps, context, y, control, transformer_options, **kwargs):
        pose = kwargs.pop(POSE_COND, None)
        if pose is None:
            raise ValueError(
                "IMAGPose model: no pose grid in the conditioning. Feed the KSampler's positive and negative "
                "from the 'IMAGPose ILC Pack' node."
            )
        features = extras.pose_guider(pose.to(x.device, x.dtype))
        if features.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"IMAGPose: pose grid gives {tuple(features.shape[-2:])} features for a {tuple(x.shape[-2:])} latent")
        transformer_options = {**transformer_options, POSE_FEATURES: features}
        extras.cva_calls = 0
        out = executor(x, timesteps, context, y, control, transformer_options, **kwargs)
        if extras.cva_calls != len(extras.cva):
            raise RuntimeError(
                f"IMAGPose model: {extras.cva_calls} of its {len(extras.cva)} cross-view attention layers ran in this "
                "UNet call. A node between the IMAGPose Model Loader and the sampler rebuilt or copied the UNet without "
                "them; IMAGPose cannot sample without its cross-view attention."
            )
        return out

    return wrapper


def _add_pose_features(h: torch.Tensor, transformer_options: dict) -> torch.Tensor:
    if transformer_options.get("block") == ("input", 0) and POSE_FEATURES in transformer_options:
        return h + transformer_options[POSE_FEATURES]
    return h


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def weight_dtypes(module: nn.Module) -> str:
    return "/".join(sorted({dtype_name(p.dtype) for p in module.parameters()}))


def build_model_patcher(model: IMAGPoseModel) -> comfy.model_patcher.ModelPatcher:
    """A ModelPatcher for ComfyUI's samplers: v-prediction, zero terminal SNR, SD1.5 latent format."""
    unet_config = comfy_unet_config(model)
    state_dict = comfy_unet_state_dict(model, unet_config)
    load_device = comfy.model_management.get_torch_device()
    offload_device = comfy.model_management.unet_offload_device()
    model_config = comfy.supported_models.SD15(unet_config)
    model_config.sampling_settings = {**model_config.sampling_settings, "zsnr": True}
    parameters = comfy.utils.calculate_parameters(state_dict)
    unet_dtype = comfy.model_management.unet_dtype(model_params=parameters, supported_dtypes=model_config.supported_inference_dtypes)
    manual_cast = comfy.model_management.unet_manual_cast(unet_dtype, load_device, model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(unet_dtype, manual_cast)
    base = comfy.model_base.BaseModel(model_config, model_type=comfy.model_base.ModelType.V_PREDICTION, device=offload_device)
    base.set_inpaint()  # concat = [flag as "mask", masked grid latent as "masked_image"]
    base.load_model_weights(state_dict, "")
    patcher = comfy.model_patcher.ModelPatcher(base, load_device=load_device, offload_device=offload_device)

    extras = IMAGPoseExtras(model, comfy.ops.pick_operations(unet_dtype, manual_cast)).to(offload_device)
    with torch.no_grad():
        # Copies in memory of their own: the loaded tensors can be pages of the memory-mapped checkpoint, which the
        # first sampling would otherwise fault in one by one (seconds at SD1.5 size; see benchmarks/) and which a
        # checkpoint rewritten in place would pull from under the model. Weights in the UNet's dtype; the
        # position-encoding tables (buffers) stay exact.
        for param in extras.parameters():
            param.data = param.data.to(unet_dtype, copy=True)
        for buffer in extras.buffers():
            buffer.data = buffer.data.clone()
    logging.info("IMAGPose model weight dtype: UNet %s, cross-view attention %s, pose guider %s; computed in %s",
                 *(weight_dtypes(part) for part in (base.diffusion_model, extras.cva, extras.pose_guider)),
                 dtype_name(manual_cast or unet_dtype))
    extras_patcher = comfy.model_patcher.ModelPatcher(extras, load_device=load_device, offload_device=offload_device)
    patcher.set_additional_models(KEY, [extras_patcher])
    patcher.set_injections(KEY, [_inject(extras)])
    patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, KEY, _claim_pose_grid)
    patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, KEY, _pose_wrapper(extras))
    patcher.set_model_input_block_patch(_add_pose_features)
    return patcher
