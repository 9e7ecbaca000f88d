"""A tiny, complete training setup (real photos, drawn poses, small random models) for tests and dry runs.

    python -m trainer.testing ROOT      # then: python -m trainer.train --config ROOT/stage1.yaml

Writes ROOT/data (DeepFashion-style names, photos from scikit-image, poses in a sibling dwpose/ folder),
ROOT/models (a 4-channel "SD1.5" UNet folder of imagpose.testing.TINY_UNET size, a small VAE folder, a tiny
DINOv2 folder) and ROOT/{stage1,stage2,end2end}.yaml for 64x64 cells on CPU.
"""
from __future__ import annotations

import json
import sys
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image, ImageDraw

from imagpose.testing import TINY_PATCH, TINY_POSE_GUIDER, TINY_UNET, write_tiny_dinov2

from .data import PoseRule, build_groups

POSE_TEMPLATE = "{dir}/../dwpose/{stem}.png"
TINY_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1, "norm_num_groups": 32,
    "block_out_channels": [32, 32, 32, 32], "sample_size": 64,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
}
CELL = 64


@contextmanager
def one_intraop_thread():
    """Torch on one thread for a while: on a small shared machine (2 cores, other jobs running) OpenMP's
    spinning worker threads can make tiny-model steps 30x slower than on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def photos() -> dict[str, np.ndarray]:
    """Real photos shipped with scikit-image, as RGB uint8 arrays."""
    from skimage import data

    camera = data.camera()
    return {"astronaut": data.astronaut(), "camera": np.stack([camera] * 3, axis=-1), "coffee": data.coffee()}


def draw_pose(size: tuple[int, int], seed: int) -> Image.Image:
    """A stick figure in DWPose-like colours on black, at the photo's size (width, height)."""
    rng = np.random.default_rng(seed)
    width, height = size
    image = Image.new("RGB", size, (0, 0, 0))
    draw = ImageDraw.Draw(image)
    joints = [(int(rng.uniform(0.2, 0.8) * width), int(rng.uniform(0.1, 0.9) * height)) for _ in range(6)]
    colours = [(255, 0, 0), (255, 170, 0), (0, 255, 0), (0, 170, 255), (170, 0, 255)]
    for (a, b), colour in zip(zip(joints, joints[1:]), colours):
        draw.line([a, b], fill=colour, width=max(2, width // 40))
    return image


def write_dataset(root: Path) -> Path:
    """Two people x three views (crops/flips of real photos, non-square like fashion shots) + poses; returns the JSON."""
    images, poses = root / "image", root / "dwpose"
    images.mkdir(parents=True, exist_ok=True)
    poses.mkdir(parents=True, exist_ok=True)
    pics = photos()
    views = {
        "WOMEN-Dresses-id_00000001-01": [pics["astronaut"][:, 64:448], pics["astronaut"][:, ::-1][32:480, 100:400],
                                         pics["coffee"][:, 150:450]],
        "MEN-Denim-id_00000002-01": [pics["camera"][:, 80:430], pics["coffee"][50:400, 100:350],
                                     pics["astronaut"][100:, 50:300]],
    }
    for person, arrays in views.items():
        for index, array in enumerate(arrays):
            name = f"{person}_{index + 1}_{['front', 'side', 'back'][index]}"
            photo = Image.fromarray(np.ascontiguousarray(array)).resize((72, 96), Image.BICUBIC)
            photo.save(images / f"{name}.png")
            draw_pose(photo.size, seed=zlib.crc32(name.encode())).save(poses / f"{name}.png")
    groups, _ = build_groups(images, relative_to=root, pose_rule=PoseRule(template=POSE_TEMPLATE))
    path = root / "groups.json"
    path.write_text(json.dumps(groups))
    return path


RAMP_SIZES = ((72, 96), (80, 100), (64, 120), (90, 90), (70, 110))  # (width, height): photos of different sizes


def write_ramp_group(root: Path, sizes=RAMP_SIZES) -> list[Path]:
    """One group of photos (and poses) whose brightness rises from left to right, so a cell's pixels tell
    whether it was mirrored (whatever crop and resize it got). Poses at POSE_TEMPLATE."""
    images, poses = root / "image", root / "dwpose"
    images.mkdir(parents=True, exist_ok=True)
    poses.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (width, height) in enumerate(sizes):
        ramp = np.repeat(np.linspace(0, 255, width, dtype=np.float32)[None, :, None], height, axis=0)
        picture = Image.fromarray(np.repeat(ramp, 3, axis=2).astype(np.uint8))
        name = f"RAMP-id_{index:08d}_{index + 1}_front.png"
        picture.save(images / name)
        picture.save(poses / name)
        paths.append(images / name)
    return paths


def mirrored_cells(cells: torch.Tensor) -> list[bool]:
    """(N, 3, H, W) cells of a ramp photo -> True where the cell is mirrored (its left half is the brighter)."""
    half = cells.shape[-1] // 2
    return (cells[..., :half].mean(dim=(1, 2, 3)) > cells[..., -half:].mean(dim=(1, 2, 3))).tolist()


def write_models(root: Path, seed: int = 0) -> dict[str, Path]:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(seed)
    sd = root / "sd15"
    UNet2DConditionModel(**{**TINY_UNET, "in_channels": 4}).save_pretrained(sd / "unet")
    vae = root / "vae"
    AutoencoderKL(**TINY_VAE).save_pretrained(vae)
    return {"base_unet": sd, "vae": vae, "image_encoder": write_tiny_dinov2(root / "dinov2", seed)}


def tiny_config(root: Path, stage: str, models: dict[str, Path], groups: Path, init_checkpoint: Path | None = None,
                motion_module: Path | None = None, **train) -> dict:
    """A config mapping (same schema as trainer/configs/*.yaml) for CPU runs of a few steps."""
    model = {"vae": str(models["vae"]), "image_encoder": str(models["image_encoder"])}
    if stage == "stage1":
        model.update(base_unet=str(models["base_unet"]), pose_guider_channels=TINY_POSE_GUIDER["block_out_channels"],
                     patch_size=TINY_PATCH["patch_size"])
    else:
        model["init_checkpoint"] = str(init_checkpoint)
        if motion_module is not None:
            model["motion_module"] = str(motion_module)
    return {
        "stage": stage,
        "output_dir": str(root / "runs" / stage),
        "seed": 0,
        "model": model,
        "data": {"groups": str(groups), "pose_template": POSE_TEMPLATE, "cell_height": CELL, "cell_width": CELL,
                 "batch_size": 2, "num_workers": 0},
        "train": {"max_steps": 2, "checkpointing_steps": 2, "mixed_precision": "no", "log_every": 1,
                  "gradient_checkpointing": stage == "stage1",  # exercised once; it only costs time on CPU
                  "learning_rate": 1e-3 if stage != "end2end" else 1e-4, **train},
    }


def write_setup(root: Path) -> dict[str, Path]:
    root = Path(root)
    models = write_models(root / "models")
    groups = write_dataset(root / "data")
    configs = {}
    previous = None
    for stage in ("stage1", "stage2", "end2end"):
        config = tiny_config(root, stage, models, groups, init_checkpoint=previous)
        configs[stage] = root / f"{stage}.yaml"
        configs[stage].write_text(yaml.safe_dump(config, sort_keys=False))
        previous = Path(config["output_dir"]) / f"checkpoint-{config['train']['max_steps']}"
    return {**models, "groups": groups, **configs}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    for name, path in write_setup(Path(argv[0])).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
