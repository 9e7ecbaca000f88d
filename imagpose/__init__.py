"""IMAGPose: pose-guided person image generation (NeurIPS 2024). Pure PyTorch; no ComfyUI import here."""
