"""IMAGPose through the pack's nodes in an in-process ComfyUI: the test models loaded as a workflow loads them, and
sampled with the stock KSampler as a workflow would (1 source -> 3 targets)."""
import torch


def run_node(nodes, name, *args, **kwargs):
    """A pack node's outputs, called as ComfyUI calls it (`nodes`: ComfyUI's nodes module with the pack loaded)."""
    return nodes.NODE_CLASS_MAPPINGS[name].execute(*args, **kwargs).result


def load_test_models(nodes, checkpoint: str = "tiny-imagpose.safetensors"):
    """(VAE, IMAGPose MODEL, its bundle for FLC Encode, DINOv2 encoder) from the random-weight test models."""
    import comfy.sd
    import comfy.utils
    import folder_paths

    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(folder_paths.get_full_path_or_raise("vae", "tiny-vae.safetensors")))
    model, bundle = run_node(nodes, "IMAGPoseModelLoader", checkpoint, "none", "auto", "auto")
    encoder = run_node(nodes, "IMAGPoseImageEncoderLoader", "tiny-dinov2")[0]
    return vae, model, bundle, encoder


def imagpose_conditioning(nodes, checkpoint: str = "tiny-authors"):
    """Model, VAE, positive, negative, empty latent and layout made by the pack's nodes (64 px cells, one grid)."""
    def run(name, *args, **kwargs):
        return run_node(nodes, name, *args, **kwargs)

    generator = torch.Generator().manual_seed(0)
    source = torch.rand(1, 96, 64, 3, generator=generator)
    poses = (torch.rand(4, 64, 64, 3, generator=generator) > 0.9).float()
    vae, model, bundle, encoder = load_test_models(nodes, checkpoint)
    positive, negative = run("IMAGPoseFLCEncode", encoder, bundle, vae, source, 0, False, 64, 64, "crop")
    (positive,), (negative,), (latent,), layout, _ = run("IMAGPoseILCPack", positive, negative, vae, source, poses[1:],
                                                         64, 64, "crop", "auto", source_poses=poses[:1])
    return model, vae, positive, negative, latent, layout


def sample_imagpose(nodes, keep_model: bool = False, transform_model=None):
    model, vae, positive, negative, latent, layout = imagpose_conditioning(nodes)
    if transform_model is not None:  # what a node between the loader and the sampler does
        model = transform_model(model)
    sampled = nodes.KSampler().sample(model, 5, 2, 2.0, "ddim", "simple", positive, negative, latent)[0]
    decoded = nodes.VAEDecode().decode(vae, sampled)[0]
    images = run_node(nodes, "IMAGPoseGridUnpack", [decoded], [layout], ["targets"])[0]
    return (model, images) if keep_model else images
