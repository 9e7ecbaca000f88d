"""Inputs for tests and the demo: real photos, pose images, small random-weight models.

Photos come from wheels that are installed anyway (no download): ``skimage.data.astronaut()`` (waist up),
``skimage.data.camera()`` (a full figure with a camera) and matplotlib's ``grace_hopper.jpg``.
Pose images are OpenPose-style COCO-18 skeletons drawn here (black background, coloured limbs), the kind of
picture IMAGPose's pose guider was trained on.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .env import REPO_ROOT, cache_dir, comfyui_python

# ---------------------------------------------------------------------------------------------------
# photos

PHOTO_NAMES = ("astronaut", "camera", "grace_hopper")


def photo(name: str) -> Image.Image:
    """A real photo of a person, as RGB."""
    if name == "astronaut":
        from skimage import data

        return Image.fromarray(data.astronaut()).convert("RGB")
    if name == "camera":
        from skimage import data

        return Image.fromarray(data.camera()).convert("RGB")
    if name == "grace_hopper":
        from matplotlib import cbook

        with cbook.get_sample_data("grace_hopper.jpg") as handle:
            return Image.open(handle).convert("RGB")
    raise KeyError(name)


# ---------------------------------------------------------------------------------------------------
# OpenPose COCO-18 skeletons

# keypoints: 0 nose, 1 neck, 2 r-shoulder, 3 r-elbow, 4 r-wrist, 5 l-shoulder, 6 l-elbow, 7 l-wrist,
# 8 r-hip, 9 r-knee, 10 r-ankle, 11 l-hip, 12 l-knee, 13 l-ankle, 14 r-eye, 15 l-eye, 16 r-ear, 17 l-ear
LIMBS = [(1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12),
         (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17)]
COLORS = [(255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
          (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
          (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85)]

_HEAD = {0: (0.50, 0.11), 14: (0.48, 0.10), 15: (0.52, 0.10), 16: (0.46, 0.11), 17: (0.54, 0.11)}


def _pose(**points):
    keypoints = dict(_HEAD)
    keypoints.update({1: (0.50, 0.19), 2: (0.41, 0.20), 5: (0.59, 0.20), 8: (0.45, 0.50), 11: (0.55, 0.50)})
    keypoints.update({int(k[1:]): v for k, v in points.items()})
    return keypoints


# normalised (x, y) positions, frame aspect 2:3 (width:height)
POSES = {
    "standing": _pose(k3=(0.38, 0.33), k4=(0.37, 0.46), k6=(0.62, 0.33), k7=(0.63, 0.46),
                      k9=(0.45, 0.68), k10=(0.45, 0.87), k12=(0.55, 0.68), k13=(0.55, 0.87)),
    "arms_up": _pose(k3=(0.36, 0.10), k4=(0.34, 0.02), k6=(0.64, 0.10), k7=(0.66, 0.02),
                     k9=(0.44, 0.68), k10=(0.44, 0.87), k12=(0.56, 0.68), k13=(0.56, 0.87)),
    "walking": _pose(k3=(0.36, 0.32), k4=(0.42, 0.43), k6=(0.64, 0.31), k7=(0.58, 0.42),
                     k9=(0.39, 0.67), k10=(0.34, 0.85), k12=(0.59, 0.67), k13=(0.63, 0.86)),
    "t_pose": _pose(k3=(0.28, 0.20), k4=(0.15, 0.20), k6=(0.72, 0.20), k7=(0.85, 0.20),
                    k9=(0.42, 0.68), k10=(0.40, 0.87), k12=(0.58, 0.68), k13=(0.60, 0.87)),
}


def sequence_pose(frame: int, frames: int) -> dict[int, tuple[float, float]]:
    """Frame `frame` of a `frames`-long dance (normalised, aspect 2:3): the arms swing from down to up and back,
    a quarter cycle apart, the legs step out in turn; every frame is a different pose and the cycle closes."""
    import math

    phase = 2 * math.pi * frame / frames
    aspect = 1.5  # x is normalised by a width 2/3 of the height: lengths in x are 1.5 times as long

    def limb(start, angle, length):
        return (start[0] + length * aspect * math.sin(angle), start[1] + length * math.cos(angle))

    points = _pose()
    for shoulder, elbow, wrist, side, offset in ((2, 3, 4, -1, 0.0), (5, 6, 7, 1, math.pi / 2)):
        raise_angle = 0.4 * math.pi * (1 - math.cos(phase + offset))  # 0 = hanging, 0.8 pi = up and out
        points[elbow] = limb(points[shoulder], side * raise_angle, 0.10)
        points[wrist] = limb(points[elbow], side * (raise_angle + 0.3), 0.09)
    for hip, knee, ankle, side, offset in ((8, 9, 10, -1, 0.0), (11, 12, 13, 1, math.pi)):
        swing = side * (0.05 + 0.3 * max(0.0, math.sin(phase + offset)))  # outward steps, never crossing
        points[knee] = limb(points[hip], swing, 0.18)
        points[ankle] = limb(points[knee], swing * 0.5, 0.18)
    return points


def openpose_frame(keypoints: dict[int, tuple[float, float]], width: int = 512, height: int = 768) -> dict:
    """One POSE_KEYPOINT entry (OpenPose JSON, pixels) for normalised COCO-18 keypoints; missing points are 0, 0, 0."""
    body = []
    for index in range(18):
        x, y = keypoints.get(index, (0.0, 0.0))
        body += [x * width, y * height, 1.0] if index in keypoints else [0.0, 0.0, 0.0]
    return {"canvas_width": width, "canvas_height": height, "people": [{"pose_keypoints_2d": body}]}


def write_animation(path: Path, frames: list[Image.Image]) -> None:
    """A lossless animated PNG; ComfyUI's Load Image turns its frames into one IMAGE batch."""
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=125, loop=0, disposal=0, blend=0)


def draw_pose(keypoints: dict[int, tuple[float, float]], width: int = 512, height: int = 768) -> Image.Image:
    """Draw an OpenPose-style skeleton (normalised keypoints) on a black RGB image."""
    image = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    stick = max(2, round(min(width, height) / 128))
    for index, (a, b) in enumerate(LIMBS):
        if a in keypoints and b in keypoints:
            (xa, ya), (xb, yb) = keypoints[a], keypoints[b]
            color = tuple(int(c * 0.6) for c in COLORS[index])
            draw.line([(xa * width, ya * height), (xb * width, yb * height)], fill=color, width=2 * stick)
    for index, (x, y) in keypoints.items():
        r = stick
        draw.ellipse([x * width - r, y * height - r, x * width + r, y * height + r], fill=COLORS[index])
    return image


# ---------------------------------------------------------------------------------------------------
# input folder

SOURCE_FILES = {  # file name in ComfyUI's input/ -> photo
    "imagpose_source.png": "astronaut",
    "imagpose_source_1.png": "astronaut",
    "imagpose_source_2.png": "grace_hopper",
    "imagpose_source_3.png": "camera",
}
POSE_PHOTO_FILES = {  # photos of people in the wanted poses (for the "IMAGPose 5 - poses taken from photos" workflow)
    "imagpose_pose_photo_1.png": "camera",
    "imagpose_pose_photo_2.png": "grace_hopper",
}
POSE_FILES = {  # file name in ComfyUI's input/ -> pose
    "imagpose_pose_1.png": "standing",
    "imagpose_pose_2.png": "arms_up",
    "imagpose_pose_3.png": "walking",
    "imagpose_pose_4.png": "t_pose",
}
POSE_SEQUENCE_FILES = {  # animated pose files (one pose per frame) -> number of frames
    "imagpose_pose_sequence.png": 12,
}


def write_inputs(input_dir: str | os.PathLike, size: tuple[int, int] = (512, 768)) -> dict[str, Path]:
    """Put the real photos and drawn target poses into a ComfyUI input folder; returns name -> path."""
    input_dir = Path(input_dir)
    input_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, source in {**SOURCE_FILES, **POSE_PHOTO_FILES}.items():
        path = input_dir / name
        if not path.exists():
            photo(source).save(path)
        written[name] = path
    for name, pose in POSE_FILES.items():
        path = input_dir / name
        if not path.exists():
            draw_pose(POSES[pose], *size).save(path)
        written[name] = path
    for name, count in POSE_SEQUENCE_FILES.items():
        path = input_dir / name
        if not path.exists():
            write_animation(path, [draw_pose(sequence_pose(i, count), *size) for i in range(count)])
        written[name] = path
    return written


# ---------------------------------------------------------------------------------------------------
# small random-weight models (`python -m imagpose.testing make-models <root>`)

EXPECTED_MODEL_PATHS = (
    "imagpose/tiny-imagpose.safetensors",
    "imagpose/tiny-authors",
    "imagpose/tiny-dinov2",
    "vae/tiny-vae.safetensors",
)


def models_key() -> str:
    """Cache key: a hash of the core library code (imagpose/*.py), which defines the model formats."""
    digest = hashlib.sha256()
    for path in sorted((REPO_ROOT / "imagpose").glob("*.py")):
        digest.update(path.relative_to(REPO_ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def ensure_test_models(root: str | os.PathLike | None = None, *, python: str | None = None) -> Path:
    """Make the random-weight test models once per code version; returns the models root.

    The root holds ``imagpose/`` and ``vae/`` like ComfyUI's models folder. Default location:
    ``<cache>/test-models/<hash of imagpose/*.py>``.
    """
    if root is None:
        root = cache_dir() / "test-models" / models_key()
    root = Path(root)
    if all((root / p).exists() for p in EXPECTED_MODEL_PATHS):
        return root
    if not (REPO_ROOT / "imagpose" / "testing.py").is_file():
        raise RuntimeError("imagpose/testing.py is missing: cannot make the test models")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".tmp-", dir=root.parent))
    try:
        cmd = [python or comfyui_python(), "-m", "imagpose.testing", "make-models", str(tmp)]
        result = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} failed with code {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
            )
        missing = [p for p in EXPECTED_MODEL_PATHS if not (tmp / p).exists()]
        if missing:
            raise RuntimeError(f"make-models did not create {missing} in {tmp}")
        if root.exists():
            shutil.rmtree(root)
        tmp.rename(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def link_models(models_dir: str | os.PathLike, models_root: str | os.PathLike) -> None:
    """Make every file/folder under ``models_root/<kind>/`` appear in ``models_dir/<kind>/``.

    Files are hard-linked (copied across file systems), folders re-created: real files, not symlinks, so the
    test sees what a user who copied the files has.
    """
    models_dir, models_root = Path(models_dir), Path(models_root)
    for src in sorted(models_root.rglob("*")):
        if src.is_dir():
            continue
        dst = models_dir / src.relative_to(models_root)
        if dst.exists():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)


def image_stats(path: str | os.PathLike) -> dict:
    """Size, finiteness and spread of an image file (for assertions)."""
    with Image.open(path) as img:
        array = np.asarray(img.convert("RGB"), dtype=np.float32)
    return {
        "width": array.shape[1],
        "height": array.shape[0],
        "finite": bool(np.isfinite(array).all()),
        "std": float(array.std()),
        "min": float(array.min()),
        "max": float(array.max()),
    }

