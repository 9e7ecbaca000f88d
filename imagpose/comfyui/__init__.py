"""ComfyUI integration of IMAGPose (the only part of `imagpose` that imports ComfyUI)."""
