"""Model folders: `models/imagpose` (also via an `imagpose:` key in extra_model_paths.yaml) and `clip_vision`,
and what each loader lists from them (only files of its own kind, told by content: see imagpose.file_kinds)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import folder_paths

from .. import file_kinds
from ..checkpoints import CHECKPOINT_EXTENSIONS
from .errors import InputError

FOLDER = "imagpose"


def register() -> None:
    default = os.path.join(folder_paths.models_dir, FOLDER)
    paths = list(folder_paths.folder_names_and_paths.get(FOLDER, ([], None))[0])
    if default not in paths:  # an `imagpose:` key in extra_model_paths.yaml adds folders, it must not hide this one
        paths.append(default)
    folder_paths.folder_names_and_paths[FOLDER] = (paths, set(CHECKPOINT_EXTENSIONS))


def _roots(*folders: str) -> list[Path]:
    return [Path(p) for f in folders for p in folder_paths.get_folder_paths(f)]


MODEL_WIDGETS = ("checkpoint", "motion_module", "pose_guider", "patch_embed")


def model_loader_choices() -> dict[str, list[str]]:
    """The Model Loader's lists, one per widget: checkpoint = pack files, then folders the loader can load (one
    UNet or pack inside), then UNet files; motion_module = files holding CVA weights; pose_guider / patch_embed =
    files holding that part. Image encoders and anything else are left out."""
    files = folder_paths.get_filename_list(FOLDER)
    kinds = {name: file_kinds.contents(folder_paths.get_full_path(FOLDER, name)) for name in files}
    folders = sorted({str(Path(f).parent) for f in files if str(Path(f).parent) != "."})
    loadable = [f for f in folders if any(file_kinds.model_file(root / f) for root in _roots(FOLDER))]

    def of_kind(kind: str) -> list[str]:
        return sorted(n for n, c in kinds.items() if c.kind == kind)

    choices = {"checkpoint": of_kind(file_kinds.PACK) + loadable + of_kind(file_kinds.UNET)}
    for widget in MODEL_WIDGETS[1:]:
        choices[widget] = sorted(n for n, c in kinds.items() if c.serves(widget))
    return choices


def image_encoder_choices() -> list[str]:
    """DINOv2 folders (a config.json of the dinov2 architecture next to the weights) first, then bare DINOv2
    .safetensors files, from models/imagpose and models/clip_vision."""
    folders, files = set(), set()
    for kind in (FOLDER, "clip_vision"):
        for name in folder_paths.get_filename_list(kind):
            path, parent = Path(folder_paths.get_full_path(kind, name)), str(Path(name).parent)
            if parent != "." and file_kinds.is_dinov2_folder(path.parent):
                folders.add(parent)
            elif name.endswith(".safetensors") and file_kinds.contents(path).kind == file_kinds.DINOV2:
                files.add(name)
    return sorted(folders) + sorted(files)


def resolve(name: str, folders: tuple[str, ...], widget: str, expected: str) -> Path:
    """The file or folder `name` in the given model folders, or an InputError that lists where it looked."""
    roots = _roots(*folders)
    for root in roots:
        # normalised but not resolved: a model linked in from elsewhere is fine, a name climbing out with .. is not
        candidate = Path(os.path.normpath(root / name))
        try:
            found = candidate.exists()
        except OSError as error:  # e.g. a name longer than the file system allows: say so, without the full path
            raise InputError(widget, expected, f"a name of {len(name)} characters ({name[:40]!r}...), which the file "
                             f"system cannot look up ({error.strerror})") from None
        if found and Path(os.path.normpath(root)) in candidate.parents:
            return candidate
    searched = ", ".join(str(r) for r in roots) or "(no folders registered)"
    raise InputError(widget, expected, f"{name!r}, which was not found in: {searched}")


def dwpose_search_paths() -> list[str]:
    """Folders searched for the DWPose ONNX files: models/imagpose (every registered path), then
    comfyui_controlnet_aux's ckpts folder (and its AUX_ANNOTATOR_CKPTS_PATH override)."""
    from ..pose import dwpose_search_dirs

    return dwpose_search_dirs(folder_paths.get_folder_paths(FOLDER), folder_paths.get_folder_paths("custom_nodes"))


def dwpose_model_dirs() -> list[str]:
    """The DWPose search folders, after fetching the files into models/imagpose/dwpose when none are found and
    the user opted in (IMAGPOSE_FETCH_MODELS=1)."""
    from ..models import FetchError
    from . import fetching

    try:
        fetching.ensure("dwpose")
    except FetchError as error:  # the detector then says which files are missing (or auto uses MediaPipe)
        logging.error("IMAGPose: %s", error)
    return dwpose_search_paths()
