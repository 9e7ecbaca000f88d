"""Shared helpers for the pose tests (no tests here): real photos from installed wheels and tiny DWPose-shaped ONNX models."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

CACHE = Path(os.environ.get("IMAGPOSE_TEST_CACHE", Path.home() / ".cache" / "imagpose-comfyui" / "test-assets"))


def photo(name: str) -> np.ndarray:
    """RGB uint8 photos of people that ship inside installed packages (bus.jpg: fetched at test time)."""
    if name == "astronaut":
        import skimage.data

        return skimage.data.astronaut()
    if name == "camera":
        import skimage.data

        return np.repeat(skimage.data.camera()[..., None], 3, axis=-1)
    if name == "grace_hopper":
        import matplotlib.cbook
        from PIL import Image

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
            return np.array(Image.open(f).convert("RGB"))
    if name == "bus":
        return bus_photo()
    raise KeyError(name)


def bus_photo() -> np.ndarray:
    """ultralytics/assets/bus.jpg read from the ultralytics wheel (AGPL: downloaded here, never committed)."""
    from PIL import Image

    CACHE.mkdir(parents=True, exist_ok=True)
    wheels = sorted(CACHE.glob("ultralytics-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(CACHE),
               "ultralytics"]
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=180)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as error:
            out = getattr(error, "stderr", b"") or b""
            pytest.skip(f"bus.jpg needs the ultralytics wheel and the package registry is unreachable: "
                        f"{out.decode(errors='replace')[-300:] or error}")
        wheels = sorted(CACHE.glob("ultralytics-*.whl"))
        if not wheels:
            pytest.skip("pip download ultralytics produced no wheel")
    with zipfile.ZipFile(wheels[-1]) as zf:
        data = zf.read("ultralytics/assets/bus.jpg")
    return np.array(Image.open(io.BytesIO(data)).convert("RGB"))


def to_image_tensor(*rgbs: np.ndarray):
    import torch

    return torch.from_numpy(np.stack(rgbs).astype(np.float32) / 255.0)


# ---------------------------------------------------------------------------------------------------
# Tiny ONNX models with the signatures of yolox_l.onnx and dw-ll_ucoco_384.onnx

def yolox_raw_predictions(boxes, in_size=(640, 640), num_classes=80) -> np.ndarray:
    """Raw YOLOX head output (1, anchors, 5 + classes) encoding the given boxes.

    boxes: (cx, cy, w, h, objectness, class_index, class_score, stride) in the letterboxed input space."""
    in_h, in_w = in_size
    sizes = [(in_h // s) * (in_w // s) for s in (8, 16, 32)]
    pred = np.zeros((sum(sizes), 5 + num_classes), dtype=np.float32)
    pred[:, 2:4] = -5.0
    offsets = {8: 0, 16: sizes[0], 32: sizes[0] + sizes[1]}
    for cx, cy, w, h, obj, cls, score, stride in boxes:
        gx, gy = int(cx // stride), int(cy // stride)
        k = offsets[stride] + gy * (in_w // stride) + gx
        pred[k, 0] = cx / stride - gx
        pred[k, 1] = cy / stride - gy
        pred[k, 2] = np.log(w / stride)
        pred[k, 3] = np.log(h / stride)
        pred[k, 4] = obj
        pred[k, 5 + cls] = score
    return pred[None]


def make_fake_yolox(path: Path, raw: np.ndarray) -> Path:
    """A model with yolox_l.onnx's signature (images (1,3,640,640) -> output (1,8400,85)) that returns `raw`
    (plus 0 x the input's mean, so the graph really reads its input)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["raw", "z"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "fake_yolox",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 640, 640])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, list(raw.shape))],
        initializer=[numpy_helper.from_array(raw.astype(np.float32), "raw"),
                     numpy_helper.from_array(np.zeros((), np.float32), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_fake_rtmpose(path: Path, channel_weights: np.ndarray) -> Path:
    """A model with dw-ll_ucoco_384.onnx's signature (input (1,3,384,288) -> simcc_x (1,133,576),
    simcc_y (1,133,768)). Keypoint k's SimCC vectors are the per-column / per-row maxima of the
    normalised crop, mixed over colour channels (BGR) with channel_weights[k] and upsampled x2: so each
    keypoint lands on the brightest spot of its channel, through the real crop and decode geometry."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = channel_weights.astype(np.float32)  # (133, 3)
    nodes = [
        helper.make_node("ReduceMax", ["input"], ["colmax"], axes=[2], keepdims=0),  # (1,3,288)
        helper.make_node("ReduceMax", ["input"], ["rowmax"], axes=[3], keepdims=0),  # (1,3,384)
        helper.make_node("MatMul", ["w", "colmax"], ["sx1"]),  # (1,133,288)
        helper.make_node("MatMul", ["w", "rowmax"], ["sy1"]),  # (1,133,384)
        helper.make_node("Unsqueeze", ["sx1", "ax"], ["sx2"]),
        helper.make_node("Unsqueeze", ["sy1", "ax"], ["sy2"]),
        helper.make_node("Concat", ["sx2", "sx2"], ["sx3"], axis=3),
        helper.make_node("Concat", ["sy2", "sy2"], ["sy3"], axis=3),
        helper.make_node("Reshape", ["sx3", "shape_x"], ["simcc_x"]),
        helper.make_node("Reshape", ["sy3", "shape_y"], ["simcc_y"]),
    ]
    graph = helper.make_graph(
        nodes, "fake_rtmpose",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 384, 288])],
        [helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, [1, 133, 576]),
         helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, [1, 133, 768])],
        initializer=[numpy_helper.from_array(w, "w"),
                     numpy_helper.from_array(np.array([3], np.int64), "ax"),
                     numpy_helper.from_array(np.array([1, 133, 576], np.int64), "shape_x"),
                     numpy_helper.from_array(np.array([1, 133, 768], np.int64), "shape_y")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def fake_dwpose_files(folder: Path) -> dict[str, bytes]:
    """yolox_l.onnx and dw-ll_ucoco_384.onnx stand-ins that find one person in the middle of any photo (a fixed
    box; every keypoint on the brightest red spot of the crop): file name -> bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    person = (320.0, 320.0, 300.0, 500.0, 0.95, 0, 0.9, 32)  # cx, cy, w, h in the 640 px letterboxed input
    make_fake_yolox(folder / "yolox_l.onnx", yolox_raw_predictions([person]))
    weights = np.zeros((133, 3))
    weights[:, 2] = 1.0  # BGR: red
    make_fake_rtmpose(folder / "dw-ll_ucoco_384.onnx", weights)
    return {name: (folder / name).read_bytes() for name in ("yolox_l.onnx", "dw-ll_ucoco_384.onnx")}


def write_two_person_dwpose(folder: Path, width: int, height: int) -> Path:
    """yolox_l.onnx / dw-ll_ucoco_384.onnx stand-ins that find two people (a large and a small one) in every
    width x height photo, keypoints on the brightest spots: the real DWPose code path, fast and deterministic."""
    from imagpose.pose import dwpose

    ratio = min(640 / height, 640 / width)

    def letterboxed(box, score):
        x0, y0, x1, y1 = (v * ratio for v in box)
        return ((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0, 0.95, 0, score, 32 if x1 - x0 > 100 else 16)

    folder.mkdir(parents=True, exist_ok=True)
    large = (0.11 * width, 0.04 * height, 0.85 * width, 0.96 * height)
    small = (0.74 * width, 0.59 * height, 0.98 * width, 0.98 * height)
    make_fake_yolox(folder / dwpose.DET_FILENAME, yolox_raw_predictions([letterboxed(large, 0.9), letterboxed(small, 0.8)]))
    make_fake_rtmpose(folder / dwpose.POSE_FILENAME, np.full((133, 3), 1.0 / 3))
    return folder
