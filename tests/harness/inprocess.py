"""A real ComfyUI imported into the test process (no HTTP), with this pack loaded as a custom node.

Used by the in-process tests (fidelity, nodes, poses, benchmarks); the end-to-end tests use a real server.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

from .env import REPO_ROOT, prepare_inprocess_comfyui

PACK_MODULE = "comfyui_imagpose"
_loaded: dict = {}


def load(custom_nodes_dir: Path, models_root: Path):
    """Import ComfyUI (CPU), register the test model folders and load the pack; returns ComfyUI's `nodes` module."""
    if "nodes" in _loaded:
        return _loaded["nodes"]
    prepare_inprocess_comfyui()
    import folder_paths
    import nodes

    for kind in ("imagpose", "vae", "clip_vision"):
        folder_paths.add_model_folder_path(kind, str(models_root / kind), is_default=True)
    link = custom_nodes_dir / PACK_MODULE
    if not link.exists():
        link.symlink_to(REPO_ROOT, target_is_directory=True)
    asyncio.run(nodes.load_custom_node(str(link), module_parent="custom_nodes"))
    if "IMAGPoseModelLoader" not in nodes.NODE_CLASS_MAPPINGS:
        raise RuntimeError("the IMAGPose pack did not register its nodes in ComfyUI")
    _loaded["nodes"] = nodes
    return nodes


def pack_module(nodes, name: str):
    """A module of the pack as ComfyUI loaded it (`name` like "imagpose.grid"): its classes, not this checkout's
    same-named ones, are what the nodes' isinstance checks see."""
    import sys

    package = sys.modules[nodes.NODE_CLASS_MAPPINGS["IMAGPoseGridUnpack"].__module__].__package__
    return sys.modules[f"{package}.{name}"]
