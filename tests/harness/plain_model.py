"""A plain (non-IMAGPose) SD1.5-family model built by ComfyUI itself, sampled with the stock sampler."""
import torch

UNET = {
    "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "out_channels": 4, "model_channels": 32,
    "num_res_blocks": [1, 1, 1, 1], "channel_mult": [1, 2, 2, 2], "transformer_depth": [1, 1, 1, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1,
    "use_linear_in_transformer": False, "context_dim": 64, "num_heads": 8,
    "use_temporal_attention": False, "use_temporal_resblock": False,
}


def plain_model_patcher(generator: torch.Generator | None = None):
    """ComfyUI's own SD1.5 model class at the test size (context 64 wide, as the tiny DINOv2's tokens), random weights."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.SD15(dict(UNET))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    generator = generator or torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for param in model.diffusion_model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return comfy.model_patcher.ModelPatcher(model, comfy.model_management.get_torch_device(),
                                            comfy.model_management.unet_offload_device())


def sample_plain() -> torch.Tensor:
    import comfy.sample

    generator = torch.Generator().manual_seed(1234)
    patcher = plain_model_patcher(generator)
    context = torch.randn(1, 7, 64, generator=generator)
    latent = torch.zeros(1, 4, 16, 16)
    noise = torch.randn(latent.shape, generator=generator)
    return comfy.sample.sample(patcher, noise, 3, 2.0, "euler", "simple", [[context, {}]],
                               [[torch.zeros_like(context), {}]], latent, seed=7)


# The smallest UNet ComfyUI still detects as SD1.5 (model_channels 320, context 768): one level, 21 M parameters
DETECTABLE_SD15 = {
    **UNET, "model_channels": 320, "context_dim": 768, "num_res_blocks": [1], "channel_mult": [1],
    "transformer_depth": [1], "transformer_depth_output": [1, 0], "transformer_depth_middle": 0,
}


def write_plain_sd15_unet(path) -> None:
    """A plain SD1.5-family UNet file (ldm keys, fp16, ~42 MB) for ComfyUI's stock UNETLoader: random weights."""
    from pathlib import Path

    import comfy.supported_models
    from safetensors.torch import save_file

    config = comfy.supported_models.SD15(dict(DETECTABLE_SD15))
    config.set_inference_dtype(torch.float16, None)
    model = config.get_model({})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half().contiguous() for k, v in model.diffusion_model.state_dict().items()}, str(path))
