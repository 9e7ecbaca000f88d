"""Where things are: the repository, the provisioned cache, ComfyUI and its Python.

Everything can be overridden with environment variables (scripts/provision.sh prints them):

- ``IMAGPOSE_CACHE_DIR``  cache root (default ``~/.cache/imagpose-comfyui``)
- ``COMFYUI_PATH``        a ComfyUI checkout (default ``<cache>/ComfyUI``)
- ``COMFYUI_PYTHON``      the Python that runs ComfyUI (default: the running interpreter)
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS_DIR = REPO_ROOT / "workflows"
MAIN_WORKFLOW = WORKFLOWS_DIR / "IMAGPose 1 - one photo to three poses.json"  # 1 source -> 3 targets
PACK_DIR_NAME = "comfyui-imagpose"


def cache_dir() -> Path:
    env = os.environ.get("IMAGPOSE_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "imagpose-comfyui"


def comfyui_path() -> Path:
    env = os.environ.get("COMFYUI_PATH")
    path = Path(env).expanduser() if env else cache_dir() / "ComfyUI"
    if not (path / "main.py").is_file():
        raise RuntimeError(
            f"No ComfyUI found at {path} (main.py missing). Run `bash scripts/provision.sh` "
            "or set COMFYUI_PATH to a ComfyUI checkout."
        )
    return path.resolve()


def comfyui_python() -> str:
    return os.environ.get("COMFYUI_PYTHON") or sys.executable


def prepare_inprocess_comfyui(path: str | os.PathLike | None = None) -> Path:
    """Make ComfyUI importable in this process, on the CPU.

    pytest imports the repository's root ``__init__.py`` (the pack's entry point) because the repository
    root is a package; that import reaches ``comfy.model_management``, which must see ``--cpu`` on a machine
    without a GPU driver. Call this before any test runs (the e2e conftest does).
    """
    root = Path(path).resolve() if path else comfyui_path()
    # ComfyUI first: its `nodes`, `utils`, ... must win over same-named files here (the pack has a nodes.py)
    while str(root) in sys.path:
        sys.path.remove(str(root))
    sys.path.insert(0, str(root))
    stray = sys.modules.get("nodes")
    if stray is not None and Path(getattr(stray, "__file__", "")).parent != root:
        del sys.modules["nodes"]
    import comfy.cli_args  # noqa: PLC0415

    if os.environ.get("IMAGPOSE_TEST_DEVICE", "cpu") == "cpu":
        comfy.cli_args.args.cpu = True
    import utils.extra_config  # noqa: F401,PLC0415  (before anything imports comfy/utils.py as `utils`)

    return root
