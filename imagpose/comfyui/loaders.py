"""What the loader nodes do: find files, read weights, build the MODEL and the image encoder."""
from __future__ import annotations

import pickle
from pathlib import Path

from safetensors import SafetensorError

from .. import file_kinds, image_encoder
from ..checkpoints import POSITIONS_KEY, CheckpointError, build_model, load_weights
from ..models import DINOV2_FOLDER, FetchError
from . import fetching, files
from .conditioning import IMAGPoseBundle
from .errors import InputError, is_out_of_memory
from .files import FOLDER, dwpose_model_dirs, resolve
from .image_encoder import ImageEncoder
from .model_patch import build_model_patcher

NONE, AUTO = "none", "auto"
EXPECTED_CHECKPOINT = (
    "an IMAGPose .safetensors file from this pack, or the authors' files (denoising_unet-N.pth, pose_guider-N.pth, "
    "patch-N.pth) in one folder, under models/imagpose/"
)
EXPECTED_PART = {
    "checkpoint": EXPECTED_CHECKPOINT,
    "motion_module": "a file with cross-view attention weights (authors' motion_module-N.pth, an AnimateDiff "
                     "motion module or an IMAGPose pack file) under models/imagpose/",
    "pose_guider": "an authors' pose_guider-N.pth (or a pack file) under models/imagpose/",
    "patch_embed": "an authors' patch-N.pth (or a pack file) under models/imagpose/",
}
EXPECTED_ENCODER = ("a DINOv2 model whose weights cover it exactly: a transformers folder (config.json + "
                    "model.safetensors, e.g. dinov2-base) or one .safetensors file, in models/imagpose/ or "
                    "models/clip_vision/ (`python -m imagpose.models fetch "
                    f"dinov2` puts facebook/dinov2-base in models/imagpose/{DINOV2_FOLDER}; so does ComfyUI started "
                    f"with {fetching.OPT_IN}=1)")


def imagpose_files(checkpoint, motion_module, pose_guider, patch_embed) -> dict[str, Path]:
    """The files of the Model Loader's widgets (none/auto, and values not known yet, left out); InputError naming a
    widget whose file is missing."""
    chosen = {"checkpoint": checkpoint, "motion_module": motion_module, "pose_guider": pose_guider,
              "patch_embed": patch_embed}
    return {widget: resolve(name, (FOLDER,), widget, EXPECTED_PART[widget])
            for widget, name in chosen.items() if name is not None and name not in (NONE, AUTO)}


def imagpose_fingerprint(checkpoint: str, motion_module: str, pose_guider: str, patch_embed: str) -> tuple:
    """Size and modification time of every file the Model Loader reads for these choices: ComfyUI runs the loader
    again when one of them changes, and reuses its cached model otherwise."""
    try:
        paths = imagpose_files(checkpoint, motion_module, pose_guider, patch_embed)
    except InputError as error:  # the loader itself reports it
        return ("missing", str(error))
    return file_kinds.fingerprint(file_kinds.model_loader_files(
        paths["checkpoint"], paths.get("motion_module"), paths.get("pose_guider"), paths.get("patch_embed")))


def load_imagpose(checkpoint: str, motion_module: str, pose_guider: str, patch_embed: str):
    chosen = {"checkpoint": checkpoint, "motion_module": motion_module, "pose_guider": pose_guider,
              "patch_embed": patch_embed}
    paths = imagpose_files(checkpoint, motion_module, pose_guider, patch_embed)
    try:
        weights = load_weights(paths["checkpoint"], motion_module=paths.get("motion_module"),
                               pose_guider=paths.get("pose_guider"), patch_embed=paths.get("patch_embed"))
        model = build_model(weights)
    except CheckpointError as error:
        # the widget whose file failed; folder-level and weight-fit problems belong to the checkpoint
        widget = next((w for w, p in paths.items() if w != "checkpoint" and p == error.path), "checkpoint")
        raise InputError(widget, EXPECTED_PART[widget], f"{chosen[widget]!r}: {error}") from error
    # the DINOv2 position resampling the model was trained with (the authors' when a file does not say)
    positions = weights.image_encoder_positions or image_encoder.AUTHORS_POSITIONS
    if positions not in image_encoder.POSITION_METHODS:
        raise InputError("checkpoint", f"a pack file whose {POSITIONS_KEY} is one of "
                         f"{', '.join(image_encoder.POSITION_METHODS)}", f"{checkpoint!r} with {positions!r}")
    return build_model_patcher(model), IMAGPoseBundle(patch_embed=model.patch_embed, image_encoder_positions=positions)


def _encoder_path(name: str, fetch: bool = False) -> Path:
    """The encoder's file or folder; with `fetch`, a missing standard DINOv2 is fetched if the user opted in."""
    try:
        return resolve(name, (FOLDER, "clip_vision"), "image_encoder", EXPECTED_ENCODER)
    except InputError:
        if not (fetch and name == DINOV2_FOLDER and fetching.opted_in()):
            raise
    try:
        fetching.ensure("dinov2")
    except FetchError as error:
        raise InputError("image_encoder", EXPECTED_ENCODER, f"{name!r}, which could not be fetched: {error}") from error
    return resolve(name, (FOLDER, "clip_vision"), "image_encoder", EXPECTED_ENCODER)


def image_encoder_fingerprint(name: str) -> tuple:
    """Size and modification time of the encoder file, or of every file in its folder."""
    try:
        return file_kinds.fingerprint(file_kinds.image_encoder_files(_encoder_path(name)))
    except InputError as error:
        return ("missing", str(error))


def image_encoder_choices() -> list[str]:
    """The encoder loader's list: the DINOv2 models found, and dinov2-base when the user opted in to fetching it on
    first use (a value the list must hold, or the pack's combo check would refuse the prompt before the fetch)."""
    names = files.image_encoder_choices()
    return names if DINOV2_FOLDER in names or not fetching.opted_in() else [*names, DINOV2_FOLDER]


def check_image_encoder(name: str | None) -> None:
    """Queue-time check of the encoder widget: the model is there, or it is the DINOv2 fetched on first use."""
    if name is not None and not (name == DINOV2_FOLDER and fetching.opted_in()):
        _encoder_path(name)


def load_image_encoder(name: str) -> ImageEncoder:
    path = _encoder_path(name, fetch=True)
    try:
        return ImageEncoder(image_encoder.load_dinov2(path))  # the table is resampled again if a model asks
    # transformers' own errors too: unreadable or mismatched weights, pickles refused by torch.load(weights_only=True)
    except (image_encoder.ImageEncoderError, pickle.UnpicklingError, SafetensorError, OSError, RuntimeError,
            ValueError) as error:
        if is_out_of_memory(error):
            raise
        raise InputError("image_encoder", EXPECTED_ENCODER, f"{name!r}: {error}") from error


def pose_extractor(detector: str):
    """Callable (IMAGE batch -> rendered pose IMAGE batch) for sources without poses."""
    def extract(images):
        try:
            from ..pose import extract_pose_images
            from .pose import check_extraction
        except ImportError as error:
            raise InputError("source_poses", "rendered source poses, or the pose dependencies installed (see README, "
                             "Poses) to extract them", f"not connected, and pose extraction is unavailable ({error})") from error
        check_extraction("source_images", images)
        try:
            # body + hands, as the training data's DWPose renders
            return extract_pose_images(images, detector=detector, include_hands=True, model_dirs=dwpose_model_dirs())
        except (ValueError, RuntimeError) as error:  # no person found, or no detector can run
            if is_out_of_memory(error):
                raise
            raise InputError("source_poses", "rendered source poses, or source photos a detector finds a person in",
                             f"not connected, and extracting them from source_images failed: {error}") from error

    return extract
