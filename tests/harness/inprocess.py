"""A real ComfyUI imported into the test process (no HTTP), with this pack loaded as a custom node.

Used by the fidelity and model tests; the end-to-end tests use a real server instead (tests/harness).
"""
from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_COMFYUI = Path.home() / ".cache" / "imagpose-comfyui" / "ComfyUI"
PACK_MODULE = "comfyui_imagpose"


def comfyui_path() -> Path:
    path = Path(os.environ.get("COMFYUI_PATH", DEFAULT_COMFYUI))
    if not (path / "comfy").is_dir():
        raise RuntimeError(f"no ComfyUI at {path}: run scripts/provision.sh or set COMFYUI_PATH")
    return path


_loaded: dict = {}


def load(custom_nodes_dir: Path, models_root: Path):
    """Import ComfyUI (CPU), register the test model folders and load the pack; returns ComfyUI's `nodes` module."""
    if "nodes" in _loaded:
        return _loaded["nodes"]
    root = comfyui_path()
    # ComfyUI first: the repository root (also on sys.path) has a nodes.py of its own
    while str(root) in sys.path:
        sys.path.remove(str(root))
    sys.path.insert(0, str(root))
    stray = sys.modules.get("nodes")
    if stray is not None and Path(getattr(stray, "__file__", "")).parent != root:
        del sys.modules["nodes"]
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import utils.extra_config  # noqa: F401  (before `nodes`: comfy/utils.py would shadow the utils package)
    import folder_paths
    import nodes

    for kind in ("imagpose", "vae", "clip_vision"):
        folder_paths.add_model_folder_path(kind, str(models_root / kind), is_default=True)
    link = custom_nodes_dir / PACK_MODULE
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    asyncio.run(nodes.load_custom_node(str(link), module_parent="custom_nodes"))
    if "IMAGPoseModelLoader" not in nodes.NODE_CLASS_MAPPINGS:
        raise RuntimeError("the IMAGPose pack did not register its nodes in ComfyUI")
    _loaded["nodes"] = nodes
    return nodes
