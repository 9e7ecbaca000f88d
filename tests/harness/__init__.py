"""Test/demo harness: a real ComfyUI server, a UI-workflow converter, inputs and small models.

Importable as ``harness`` with ``tests/`` on sys.path (pytest's ``pythonpath`` setting does that).
"""
from .assets import (
    EXPECTED_MODEL_PATHS,
    POSE_FILES,
    POSE_PHOTO_FILES,
    POSE_SEQUENCE_FILES,
    SOURCE_FILES,
    draw_pose,
    ensure_test_models,
    image_stats,
    link_models,
    openpose_frame,
    photo,
    sequence_pose,
    write_inputs,
)
from .client import (
    ComfyClient,
    ComfyHTTPError,
    PromptFailed,
    cached_nodes,
    describe_error,
    output_images,
    saved_images,
)
from .env import MAIN_WORKFLOW, PACK_DIR_NAME, REPO_ROOT, WORKFLOWS_DIR, cache_dir, comfyui_path, comfyui_python
from .server import ComfyServer, ComfyServerError, free_port, make_base_dir, remove_base_dir
from .workflow import (
    WorkflowError,
    load_workflow,
    nodes_of_type,
    set_inputs,
    set_run_settings,
    ui_to_api,
    widget_names,
)

__all__ = [name for name in dir() if not name.startswith("_")]
