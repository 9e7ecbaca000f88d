"""IMAGPose trainer: the authors' three stages (stage1, stage2, end2end) on HuggingFace accelerate.

Trains `imagpose.model.IMAGPoseModel`, the model the ComfyUI nodes run; see trainer/README.md.
"""
