"""A tiny, complete training setup (real photos, drawn poses, small random models) for tests and dry runs.

    python -m trainer.testing ROOT      # then: python -m trainer.train --config ROOT/stage1.yaml

Writes ROOT/data (DeepFashion-style names, photos from scikit-image, poses in a sibling dwpose/ folder),
ROOT/models (a 4-channel "SD1.5" UNet folder of imagpose.testing.TINY_UNET size, a small VAE folder, a tiny
DINOv2 folder; the same UNet and VAE as one SD1.5-style single file with ldm key names, an AnimateDiff-style motion
module .ckpt, random-weight metric backbones under torchvision's file names in models/metrics/),
ROOT/deepfashion (a tiny DeepFashion In-shop tree: img_highres/ folders of real photos, train.lst, test.lst,
fasion-resize-pairs-test.csv) and ROOT/{stage1,stage2,end2end}.yaml for 64x64 cells on CPU.
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
from .testing_files import write_metric_backbones, write_motion_module_ckpt, write_sd15_single_file

POSE_TEMPLATE = "{dir}/../dwpose/{stem}.png"
SINGLE_FILE = "v1-5-tiny-pruned-emaonly.safetensors"  # SD1.5-style single file (ldm keys, VAE inside)
MOTION_MODULE = "mm_tiny_v2.ckpt"  # AnimateDiff-style motion module
TINY_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1, "norm_num_groups": 32,
    "block_out_channels": [32, 32, 32, 32], "sample_size": 64,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
}
CELL = 64
TINY_VALIDATION = {"every_steps": 2, "count": 2, "targets": 2, "steps": 4}  # one sheet per tiny run, quickly


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

    from imagpose.testing import make_tiny_model

    torch.manual_seed(seed)
    sd = root / "sd15"
    unet = UNet2DConditionModel(**{**TINY_UNET, "in_channels": 4})
    unet.save_pretrained(sd / "unet")
    vae_folder = root / "vae"
    vae = AutoencoderKL(**TINY_VAE)
    vae.save_pretrained(vae_folder)
    write_metric_backbones(root / "metrics", seed)
    return {"base_unet": sd, "vae": vae_folder, "image_encoder": write_tiny_dinov2(root / "dinov2", seed),
            "single_file": write_sd15_single_file(root / SINGLE_FILE, unet, vae, dtype=torch.float32),
            "motion_module": write_motion_module_ckpt(root / MOTION_MODULE, make_tiny_model(seed + 3).unet.state_dict()),
            "metric_weights": root / "metrics"}


def deepfashion_photos() -> dict[str, np.ndarray]:
    """Crops and mirror images of real photos in which MediaPipe finds a person (coffee: nobody)."""
    import matplotlib.cbook

    pics = photos()
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
        hopper = np.asarray(Image.open(handle).convert("RGB"))
    camera, astronaut = pics["camera"], pics["astronaut"]
    return {
        "camera-1": camera[:, 100:450][:, ::-1], "camera-2": camera[40:, 80:430][:, ::-1],
        "camera-3": camera[:, 60:420][:, ::-1],
        "astronaut-1": astronaut[:, 40:400], "astronaut-2": astronaut[:, ::-1][:, 80:440],
        "astronaut-3": astronaut[30:, 100:460], "coffee": pics["coffee"][:, 100:500],
        "hopper-1": hopper[:, 50:460], "hopper-2": hopper[:, ::-1][:, 80:480], "hopper-3": hopper[40:, 60:500],
        "hopper-4": hopper[:560, 20:420],
    }


# (gender, category, person id, [(file name, photo)]), split: the In-shop layout of img_highres/
DEEPFASHION_PEOPLE = {
    "train": [("MEN", "Denim", "id_00000001", [("01_1_front", "camera-1"), ("01_2_side", "camera-2"),
                                                ("01_4_full", "camera-3")]),
              ("WOMEN", "Blouses_Shirts", "id_00000002", [("01_1_front", "astronaut-1"), ("01_2_side", "astronaut-2"),
                                                          ("01_3_back", "astronaut-3"), ("01_7_additional", "coffee")])],
    "test": [("WOMEN", "Dresses", "id_00000003", [("01_1_front", "hopper-1"), ("01_2_side", "hopper-2"),
                                                  ("01_3_back", "hopper-3"), ("01_4_full", "hopper-4")]),
             ("MEN", "Tees_Tanks", "id_00000004", [("02_1_front", "astronaut-2"), ("02_2_side", "astronaut-1"),
                                                   ("02_3_back", "astronaut-3")])],
}
# (source, target) by (person, file) within the test people: person 3's first photo has three targets (a full
# 1 -> 3 grid), the others one each
DEEPFASHION_PAIRS = [(("id_00000003", "01_1_front"), ("id_00000003", "01_2_side")),
                     (("id_00000003", "01_1_front"), ("id_00000003", "01_3_back")),
                     (("id_00000003", "01_1_front"), ("id_00000003", "01_4_full")),
                     (("id_00000003", "01_2_side"), ("id_00000003", "01_1_front")),
                     (("id_00000004", "02_1_front"), ("id_00000004", "02_2_side")),
                     (("id_00000004", "02_3_back"), ("id_00000004", "02_1_front"))]
DEEPFASHION_SIZE = (176, 256)  # width, height: the papers' 256x176 at In-shop's aspect (img_highres is 750x1101)


def write_deepfashion(root: Path) -> Path:
    """A tiny DeepFashion In-shop tree: img_highres/<gender>/<category>/id_N/<file>.jpg, train.lst, test.lst, pairs CSV."""
    from .deepfashion import standard_stem

    pics = deepfashion_photos()
    names: dict[str, list[str]] = {"train": [], "test": []}
    standard: dict[tuple[str, str], str] = {}
    for split, people in DEEPFASHION_PEOPLE.items():
        for gender, category, person, files in people:
            folder = root / "img_highres" / gender / category / person
            folder.mkdir(parents=True, exist_ok=True)
            for name, picture in files:
                path = folder / f"{name}.jpg"
                image = Image.fromarray(np.ascontiguousarray(pics[picture])).resize(DEEPFASHION_SIZE, Image.BICUBIC)
                image.save(path, quality=95)
                standard[(person, name)] = standard_stem(path) + ".jpg"
                names[split].append(standard[(person, name)])
    (root / "train.lst").write_text("\n".join(names["train"]) + "\n")
    (root / "test.lst").write_text("\n".join(names["test"]) + "\n")
    rows = ["from,to"] + [f"{standard[source]},{standard[target]}" for source, target in DEEPFASHION_PAIRS]
    (root / "fasion-resize-pairs-test.csv").write_text("\n".join(rows) + "\n")
    return root


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
    """Models, data and the stage configs of the README's tiny walk-through.

    The YAML configs train on what `python -m trainer.prepare ROOT/deepfashion --out ROOT/prepared` writes, start
    stage 1 from the SD1.5-style single file (UNet and VAE) and stage 2 from the AnimateDiff-style .ckpt, and draw a
    validation sheet at the last step.
    """
    root = Path(root)
    models = write_models(root / "models")
    groups = write_dataset(root / "data")
    deepfashion = write_deepfashion(root / "deepfashion")
    prepared_groups = root / "prepared" / "groups.json"
    single_file = {**models, "base_unet": models["single_file"], "vae": models["single_file"]}
    configs = {}
    previous = None
    for stage in ("stage1", "stage2", "end2end"):
        config = tiny_config(root, stage, single_file if stage == "stage1" else models, prepared_groups,
                             init_checkpoint=previous, motion_module=models["motion_module"] if stage == "stage2" else None)
        config["validation"] = TINY_VALIDATION
        configs[stage] = root / f"{stage}.yaml"
        configs[stage].write_text(yaml.safe_dump(config, sort_keys=False))
        previous = Path(config["output_dir"]) / f"checkpoint-{config['train']['max_steps']}"
    return {**models, "groups": groups, "deepfashion": deepfashion, **configs}


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
