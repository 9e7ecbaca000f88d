"""Model files of every kind a user may keep in models/imagpose and models/clip_vision, for the loaders' lists.

``write_model_zoo(models_dir, test_models_root)`` writes them next to the test models (all names start with
``zoo-``) and returns, per list, what it must show and what it must leave out; ``remove_model_zoo`` deletes them.
The files are real formats with the key names of their kind (built from the random-weight test models), so the
lists are decided by content exactly as for a user's files.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

PREFIX = "zoo-"


def write_model_zoo(models_dir: str | Path, test_models_root: str | Path) -> dict[str, dict[str, set[str]]]:
    models, root = Path(models_dir), Path(test_models_root)
    imagpose, clip_vision = models / "imagpose", models / "clip_vision"
    imagpose.mkdir(parents=True, exist_ok=True)
    clip_vision.mkdir(parents=True, exist_ok=True)
    pack = load_file(str(root / "imagpose" / "tiny-imagpose.safetensors"))
    dinov2 = load_file(str(root / "imagpose" / "tiny-dinov2" / "model.safetensors"))
    authors = root / "imagpose" / "tiny-authors"

    save_file(dinov2, str(imagpose / "zoo-dinov2.safetensors"))  # bare DINOv2 in models/imagpose (README)
    save_file(dinov2, str(clip_vision / "zoo-dinov2-clipvision.safetensors"))
    both = imagpose / "zoo-both"  # one folder holding a DINOv2 and the authors' IMAGPose files
    both.mkdir(exist_ok=True)
    shutil.copy(root / "imagpose" / "tiny-dinov2" / "config.json", both / "config.json")
    save_file(dinov2, str(both / "model.safetensors"))
    for name in ("denoising_unet-1.pth", "pose_guider-1.pth", "patch-1.pth"):
        shutil.copy(authors / name, both / name)
    two = imagpose / "zoo-two-unets"  # a stage-2 folder: the loader needs the file, not the folder
    two.mkdir(exist_ok=True)
    for name, copy_as in (("denoising_unet-1.pth", "denoising_unet-1.pth"), ("denoising_unet-1.pth", "motion_module-1.pth"),
                          ("pose_guider-1.pth", "pose_guider-1.pth"), ("patch-1.pth", "patch-1.pth")):
        shutil.copy(authors / name, two / copy_as)
    motion = {k.removeprefix("unet."): v for k, v in pack.items() if ".motion_modules." in k}
    save_file(motion, str(imagpose / "zoo-motion.safetensors"))  # AnimateDiff-style: CVA weights only
    guider = {k.removeprefix("pose_guider."): v for k, v in pack.items() if k.startswith("pose_guider.")}
    save_file(guider, str(imagpose / "zoo-pose-guider.safetensors"))
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3)},
              str(imagpose / "zoo-sd-ldm.safetensors"))
    save_file({"vision_model.embeddings.class_embedding": torch.zeros(64),
               "vision_model.embeddings.patch_embedding.weight": torch.zeros(64, 3, 14, 14)},
              str(clip_vision / "zoo-clip-vision.safetensors"))
    vit = imagpose / "zoo-vit"  # same layout family, other architecture: not a DINOv2
    vit.mkdir(exist_ok=True)
    (vit / "config.json").write_text(json.dumps({"model_type": "vit", "hidden_size": 64}))
    save_file({k: v for k, v in dinov2.items() if "layer_scale" not in k}, str(vit / "model.safetensors"))
    (imagpose / "zoo-broken.safetensors").write_bytes(b"not a safetensors file")

    everything = {"tiny-imagpose.safetensors", "tiny-authors", "tiny-dinov2", "tiny-dinov2/model.safetensors",
                  "tiny-authors/denoising_unet-1.pth", "tiny-authors/pose_guider-1.pth", "tiny-authors/patch-1.pth",
                  "zoo-dinov2.safetensors", "zoo-dinov2-clipvision.safetensors", "zoo-both", "zoo-both/model.safetensors",
                  "zoo-both/denoising_unet-1.pth", "zoo-two-unets", "zoo-two-unets/denoising_unet-1.pth",
                  "zoo-two-unets/motion_module-1.pth", "zoo-motion.safetensors", "zoo-pose-guider.safetensors",
                  "zoo-sd-ldm.safetensors", "zoo-clip-vision.safetensors", "zoo-vit", "zoo-vit/model.safetensors",
                  "zoo-broken.safetensors"}
    shown = {
        "checkpoint": {"tiny-imagpose.safetensors", "tiny-authors", "tiny-authors/denoising_unet-1.pth", "zoo-both",
                       "zoo-both/denoising_unet-1.pth", "zoo-two-unets/denoising_unet-1.pth",
                       "zoo-two-unets/motion_module-1.pth"},
        "motion_module": {"tiny-imagpose.safetensors", "tiny-authors/denoising_unet-1.pth", "zoo-motion.safetensors",
                          "zoo-both/denoising_unet-1.pth", "zoo-two-unets/denoising_unet-1.pth",
                          "zoo-two-unets/motion_module-1.pth"},
        "pose_guider": {"tiny-imagpose.safetensors", "tiny-authors/pose_guider-1.pth", "zoo-pose-guider.safetensors"},
        "patch_embed": {"tiny-imagpose.safetensors", "tiny-authors/patch-1.pth"},
        "image_encoder": {"tiny-dinov2", "zoo-both", "zoo-dinov2.safetensors", "zoo-dinov2-clipvision.safetensors"},
    }
    return {widget: {"shown": names, "left_out": everything - names} for widget, names in shown.items()}


def remove_model_zoo(models_dir: str | Path) -> None:
    for folder in ("imagpose", "clip_vision"):
        for path in (Path(models_dir) / folder).glob(PREFIX + "*"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
