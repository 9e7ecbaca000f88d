"""What the loader nodes do: find files, read weights, build the MODEL and the image encoder."""
from __future__ import annotations

from pathlib import Path

import comfy.model_management

from .. import image_encoder
from ..checkpoints import build_model, load_weights
from .conditioning import IMAGPoseBundle, InputError
from .files import FOLDER, dwpose_model_dirs, resolve
from .model_patch import build_model_patcher

NONE, AUTO = "none", "auto"
EXPECTED_CHECKPOINT = (
    "an IMAGPose .safetensors file from this pack, or the authors' files (denoising_unet-N.pth, pose_guider-N.pth, "
    "patch-N.pth) in one folder, under models/imagpose/"
)


def load_imagpose(node: str, checkpoint: str, motion_module: str, pose_guider: str, patch_embed: str):
    def find(widget: str, name: str) -> Path | None:
        if name in (NONE, AUTO):
            return None
        return resolve(name, (FOLDER,), node, widget, EXPECTED_CHECKPOINT)

    weights = load_weights(
        find("checkpoint", checkpoint),
        motion_module=find("motion_module", motion_module),
        pose_guider=find("pose_guider", pose_guider),
        patch_embed=find("patch_embed", patch_embed),
    )
    model = build_model(weights)
    patcher = build_model_patcher(model)
    return patcher, IMAGPoseBundle(patch_embed=model.patch_embed, name=checkpoint)


class ImageEncoder:
    """DINOv2 kept on the offload device and moved to the compute device only while encoding."""

    def __init__(self, model, name: str):
        self.model = model
        self.name = name

    def encode(self, images):
        device = comfy.model_management.get_torch_device()
        self.model.to(device)
        try:
            return image_encoder.encode(self.model, images)
        finally:
            self.model.to(comfy.model_management.text_encoder_offload_device())


def load_image_encoder(node: str, name: str) -> ImageEncoder:
    path = resolve(name, (FOLDER, "clip_vision"), node, "image_encoder",
                   "a DINOv2 model: a transformers folder (config.json + model.safetensors, e.g. dinov2-base) "
                   "or one .safetensors file, in models/imagpose/ or models/clip_vision/")
    return ImageEncoder(image_encoder.load_dinov2(path), name)


def pose_extractor(detector: str):
    """Callable (IMAGE batch -> rendered pose IMAGE batch) for sources without poses."""
    def extract(images):
        try:
            from ..pose import extract_pose_images
        except ImportError as error:
            raise FileNotFoundError(
                f"source_poses: not connected, and pose extraction is unavailable ({error}); connect rendered "
                "source poses or install the pose dependencies (see README, Poses)"
            ) from error
        try:
            # body + hands, as the training data's DWPose renders
            return extract_pose_images(images, detector=detector, include_hands=True, model_dirs=dwpose_model_dirs())
        except (ValueError, RuntimeError) as error:  # no person found, or no detector can run
            raise InputError(f"source_poses: not connected, and extracting them from source_images failed: {error}") from error

    return extract
