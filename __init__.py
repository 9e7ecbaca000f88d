"""IMAGPose for ComfyUI: pose-guided person image generation (NeurIPS 2024)."""
import importlib.util

# pytest imports this folder too (it is the tests' root package), sometimes without a package name when the
# checkout's folder name is not an identifier; the nodes are registered only when a ComfyUI imports the pack.
if __package__ and importlib.util.find_spec("comfy_api") is not None:
    from typing_extensions import override

    from comfy_api.latest import ComfyExtension, io

    from .nodes import NODES as _CORE_NODES
    from .nodes_pose import NODES as _POSE_NODES  # imagpose.pose imports its optional detectors only when used

    class IMAGPoseExtension(ComfyExtension):
        @override
        async def get_node_list(self) -> list[type[io.ComfyNode]]:
            return [*_CORE_NODES, *_POSE_NODES]

    async def comfy_entrypoint() -> IMAGPoseExtension:
        from .imagpose.comfyui import fetching

        fetching.start_background_fetch()  # only with IMAGPOSE_FETCH_MODELS=1: never a silent download
        return IMAGPoseExtension()
