"""Model folders: `models/imagpose` (also via an `imagpose:` key in extra_model_paths.yaml) and `clip_vision`."""
from __future__ import annotations

import os
from pathlib import Path

import folder_paths

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


def checkpoint_choices() -> list[str]:
    """Checkpoint files and the folders that hold them (a folder loads the authors' separate files)."""
    files = folder_paths.get_filename_list(FOLDER)
    folders = {str(Path(f).parent) for f in files if str(Path(f).parent) != "."}
    return sorted(folders) + files


def image_encoder_choices() -> list[str]:
    names = set()
    for root in _roots(FOLDER, "clip_vision"):
        if root.is_dir():
            for config in root.rglob("config.json"):
                names.add(str(config.parent.relative_to(root)))
    names.update(f for f in folder_paths.get_filename_list("clip_vision") if f.endswith(".safetensors"))
    return sorted(names)


def resolve(name: str, folders: tuple[str, ...], widget: str, expected: str) -> Path:
    """The file or folder `name` in the given model folders, or an InputError that lists where it looked."""
    roots = _roots(*folders)
    for root in roots:
        # normalised but not resolved: a model linked in from elsewhere is fine, a name climbing out with .. is not
        candidate = Path(os.path.normpath(root / name))
        if candidate.exists() and Path(os.path.normpath(root)) in candidate.parents:
            return candidate
    searched = ", ".join(str(r) for r in roots) or "(no folders registered)"
    raise InputError(widget, expected, f"{name!r}, which was not found in: {searched}")


def dwpose_model_dirs() -> list[str]:
    """Folders searched for the DWPose ONNX files: models/imagpose (every registered path), then
    comfyui_controlnet_aux's ckpts folder (and its AUX_ANNOTATOR_CKPTS_PATH override)."""
    from ..pose import dwpose_search_dirs

    return dwpose_search_dirs(folder_paths.get_folder_paths(FOLDER), folder_paths.get_folder_paths("custom_nodes"))
