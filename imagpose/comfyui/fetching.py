"""Models fetched for the user on first use, only when they opted in: ComfyUI started with IMAGPOSE_FETCH_MODELS=1.

Without the opt-in nothing is ever downloaded and the nodes say which file to put where (and name the command
`python -m imagpose.models fetch`). With it, the pack fetches at start-up, in the background, whatever of DINOv2,
the VAE and DWPose is missing (Load VAE must list its file before a prompt is accepted), and a loader that needs
one of them waits for it or fetches it itself.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import threading
from pathlib import Path

import folder_paths

from .. import file_kinds
from ..models import DINOV2_FOLDER, STANDARD, VAE_NAME, FetchError, fetch, missing

OPT_IN = "IMAGPOSE_FETCH_MODELS"
_locks = {name: threading.Lock() for name in STANDARD}


def opted_in() -> bool:
    return os.environ.get(OPT_IN, "").strip().lower() in ("1", "true", "yes", "on")


def _say(message: str) -> None:
    logging.info("IMAGPose: %s", message)


def present(name: str) -> bool:
    """Whether the pack (or Load VAE) already finds that model wherever the user keeps it."""
    from .files import FOLDER, dwpose_search_paths

    if name == "dinov2":
        return any(file_kinds.is_dinov2_folder(Path(root, DINOV2_FOLDER))
                   for root in folder_paths.get_folder_paths(FOLDER) + folder_paths.get_folder_paths("clip_vision"))
    if name == "vae":
        return folder_paths.get_full_path("vae", VAE_NAME) is not None
    from ..pose.dwpose import find_model_files

    return None not in find_model_files(dwpose_search_paths())


def ensure(name: str) -> None:
    """Fetch a standard model the pack does not find into ComfyUI's models folder, if the user opted in.
    FetchError when it cannot be fetched; returns at once without the opt-in or when the model is there."""
    if not opted_in() or present(name):
        return
    models_dir = Path(folder_paths.models_dir)
    with _locks[name]:  # the start-up thread and a loader never fetch the same file twice
        files = missing((name,), models_dir)
        if files:
            fetch(tuple(files), models_dir, say=_say)


def start_background_fetch() -> threading.Thread | None:
    """At start-up, with the opt-in: fetch what is missing in a thread, logging progress and errors."""
    if not opted_in():
        return None
    names = [n for n in STANDARD if not present(n)]
    if "dwpose" in names and importlib.util.find_spec("onnxruntime") is None:
        names.remove("dwpose")  # unusable without onnxruntime: not worth hundreds of MB
    if not names:
        return None

    def work():
        for name in names:
            try:
                ensure(name)
            except FetchError as error:
                logging.error("IMAGPose: %s", error)

    _say(f"{OPT_IN} is set: fetching {', '.join(names)} in the background")
    thread = threading.Thread(target=work, name="imagpose-fetch-models", daemon=True)
    thread.start()
    return thread
