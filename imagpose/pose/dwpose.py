"""DWPose whole-body estimation with ONNX Runtime: YOLOX person boxes (``yolox_l.onnx``) then RTMPose
SimCC keypoints (``dw-ll_ucoco_384.onnx``), the pipeline and pre/post-processing IMAGPose's data used.

Only the model files are external; they are the ones comfyui_controlnet_aux downloads from the
Hugging Face repository ``yzd-v/DWPose``.
"""
from __future__ import annotations

import os
import threading
from typing import Sequence

import numpy as np

from .errors import PoseBackendUnavailable
from .keypoints import NUM_BODY, NUM_FACE, NUM_HAND, Person
from .render import _cv2

DET_FILENAME = "yolox_l.onnx"
POSE_FILENAME = "dw-ll_ucoco_384.onnx"
DET_URL = "https://huggingface.co/yzd-v/DWPose/resolve/main/yolox_l.onnx"
POSE_URL = "https://huggingface.co/yzd-v/DWPose/resolve/main/dw-ll_ucoco_384.onnx"

# Sub-folders searched inside every model folder, in order. The last ones are comfyui_controlnet_aux's
# layouts (its ckpts folder holds <hf repo id>/<file>).
SUBFOLDERS = ("", "dwpose", "DWPose", "yzd-v/DWPose", "ckpts/yzd-v/DWPose", "comfyui_controlnet_aux/ckpts/yzd-v/DWPose")

DET_SCORE_THRESHOLD = 0.3   # final person-box threshold
DET_NMS_SCORE = 0.1         # candidate threshold before NMS
DET_NMS_IOU = 0.45
KEYPOINT_THRESHOLD = 0.3    # a keypoint is drawn when its score passes this
BBOX_PADDING = 1.25
MEAN = np.array([123.675, 116.28, 103.53])
STD = np.array([58.395, 57.12, 57.375])

# COCO-17 index for each OpenPose-18 body point (None: the neck, the mean of both shoulders).
COCO_TO_OPENPOSE = (0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
FACE_SLICE = slice(23, 23 + NUM_FACE)          # in COCO-WholeBody's 133 points
LEFT_HAND_SLICE = slice(91, 91 + NUM_HAND)
RIGHT_HAND_SLICE = slice(112, 112 + NUM_HAND)


def search_dirs(model_folders: Sequence[str] = (), custom_nodes_folders: Sequence[str] = ()) -> list[str]:
    """Folders to search for the DWPose files in a ComfyUI install: the pack's model folders
    (ComfyUI's "imagpose" key) and, in each custom_nodes folder, comfyui_controlnet_aux's ckpts folder
    (plus its AUX_ANNOTATOR_CKPTS_PATH override). Pure: pass folder_paths' lists in."""
    dirs = [d for d in model_folders if d]
    for root in custom_nodes_folders:
        if not root or not os.path.isdir(root):
            continue
        for name in sorted(os.listdir(root)):
            if name.lower().replace("-", "_") == "comfyui_controlnet_aux":
                dirs.append(os.path.join(root, name, "ckpts"))
    env = os.environ.get("AUX_ANNOTATOR_CKPTS_PATH")
    if env:
        dirs.append(env)
    return dirs


def find_model_files(model_dirs: Sequence[str] | None) -> tuple[str | None, str | None]:
    """Paths of (yolox_l.onnx, dw-ll_ucoco_384.onnx) in model_dirs (each searched with SUBFOLDERS)."""
    found: dict[str, str | None] = {DET_FILENAME: None, POSE_FILENAME: None}
    for root in model_dirs or ():
        if not root:
            continue
        for sub in SUBFOLDERS:
            for name in found:
                if found[name] is None:
                    path = os.path.join(root, sub, name)
                    if os.path.isfile(path):
                        found[name] = path
    return found[DET_FILENAME], found[POSE_FILENAME]


def missing_files_message(model_dirs: Sequence[str] | None, det: str | None, pose: str | None) -> str:
    missing = [n for n, p in ((DET_FILENAME, det), (POSE_FILENAME, pose)) if p is None]
    where = ", ".join(repr(os.path.join(d, "dwpose")) for d in (model_dirs or ()) if d)
    where = where or "ComfyUI/models/imagpose/dwpose (no model folder was given to search)"
    return (
        f"DWPose model file(s) {', '.join(missing)} not found. Download {DET_URL} and {POSE_URL} "
        f"and put them in one of: {where} (comfyui_controlnet_aux's ckpts/yzd-v/DWPose/ also works; "
        "`python -m imagpose.models fetch dwpose` does it), or use the 'mediapipe' detector, which needs no download."
    )


def _onnxruntime():
    try:
        import onnxruntime as ort  # noqa: WPS433
    except ImportError as error:
        raise PoseBackendUnavailable(
            "The DWPose detector needs onnxruntime: pip install onnxruntime (or onnxruntime-gpu)"
        ) from error
    return ort


_SESSIONS: dict[tuple[str, float, int], object] = {}
_LOCK = threading.Lock()


def _session(path: str, device_id: int = 0):
    ort = _onnxruntime()
    key = (os.path.abspath(path), os.path.getmtime(path), device_id)
    with _LOCK:
        if key not in _SESSIONS:
            available = ort.get_available_providers()
            providers: list = [p for p in ("CUDAExecutionProvider", "CoreMLExecutionProvider") if p in available]
            if "CUDAExecutionProvider" in providers:  # one GPU per process when data preparation is sharded
                providers[0] = ("CUDAExecutionProvider", {"device_id": device_id})
            providers.append("CPUExecutionProvider")
            try:
                _SESSIONS[key] = ort.InferenceSession(path, providers=providers)
            except Exception as error:  # noqa: BLE001 - report which file is broken
                raise RuntimeError(f"could not load the ONNX model {path!r}: {error}") from error
        return _SESSIONS[key]


def _static_hw(session, default: tuple[int, int]) -> tuple[int, int]:
    shape = session.get_inputs()[0].shape
    if len(shape) == 4 and isinstance(shape[2], int) and isinstance(shape[3], int) and shape[2] > 0 and shape[3] > 0:
        return int(shape[2]), int(shape[3])
    return default


# ---------------------------------------------------------------------------------------------------
# Person detection (YOLOX)

def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        overlap = inter / (areas[i] + areas[rest] - inter)
        order = rest[overlap <= iou]
    return keep


def detect_people(session, bgr: np.ndarray) -> np.ndarray:
    """Person boxes (N, 4) as x0, y0, x1, y1 in image pixels."""
    cv2 = _cv2()
    in_h, in_w = _static_hw(session, (640, 640))
    h, w = bgr.shape[:2]
    ratio = min(in_h / h, in_w / w)
    new_w, new_h = max(1, int(w * ratio)), max(1, int(h * ratio))
    padded = np.full((in_h, in_w, 3), 114, dtype=np.uint8)
    padded[:new_h, :new_w] = cv2.resize(bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR).astype(np.uint8)
    blob = np.ascontiguousarray(padded.transpose(2, 0, 1)[None], dtype=np.float32)
    out = np.asarray(session.run(None, {session.get_inputs()[0].name: blob})[0], dtype=np.float64)
    pred = out[0]
    grids, strides = [], []
    for stride in (8, 16, 32):
        gh, gw = in_h // stride, in_w // stride
        xv, yv = np.meshgrid(np.arange(gw), np.arange(gh))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        strides.append(np.full((gh * gw, 1), stride))
    grid = np.concatenate(grids)
    stride = np.concatenate(strides)
    if pred.shape[0] != grid.shape[0] or pred.shape[1] < 6:
        raise RuntimeError(
            f"the DWPose person detector returned predictions of shape {tuple(out.shape)}; expected "
            f"(1, {grid.shape[0]}, 5 + classes) for a {in_w}x{in_h} YOLOX model (yolox_l.onnx)"
        )
    centers = (pred[:, :2] + grid) * stride
    sizes = np.exp(np.minimum(pred[:, 2:4], 50.0)) * stride
    scores = pred[:, 4] * pred[:, 5]  # objectness x "person" class
    boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1) / ratio
    cand = scores > DET_NMS_SCORE
    if not cand.any():
        return np.zeros((0, 4))
    boxes, scores = boxes[cand], scores[cand]
    keep = _nms(boxes, scores, DET_NMS_IOU)
    boxes, scores = boxes[keep], scores[keep]
    return boxes[scores > DET_SCORE_THRESHOLD]


# ---------------------------------------------------------------------------------------------------
# Keypoints (RTMPose, SimCC heads)

def _crop_transform(box: np.ndarray, in_w: int, in_h: int) -> tuple[np.ndarray, np.ndarray]:
    """Center and (w, h) scale of the padded box with the model's aspect ratio."""
    x0, y0, x1, y1 = box
    center = np.array([(x0 + x1) * 0.5, (y0 + y1) * 0.5])
    scale = np.array([(x1 - x0) * BBOX_PADDING, (y1 - y0) * BBOX_PADDING])
    aspect = in_w / in_h
    if scale[0] > scale[1] * aspect:
        scale = np.array([scale[0], scale[0] / aspect])
    else:
        scale = np.array([scale[1] * aspect, scale[1]])
    return center, scale


def estimate_keypoints(session, bgr: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """133 COCO-WholeBody keypoints (133, 2) in image pixels and their scores (133,)."""
    cv2 = _cv2()
    in_h, in_w = _static_hw(session, (384, 288))
    center, scale = _crop_transform(box, in_w, in_h)
    s = in_w / max(scale[0], 1e-6)
    warp = np.array([[s, 0.0, in_w / 2 - s * center[0]], [0.0, s, in_h / 2 - s * center[1]]])
    crop = cv2.warpAffine(bgr, warp, (in_w, in_h), flags=cv2.INTER_LINEAR)
    crop = (crop - MEAN) / STD
    blob = np.ascontiguousarray(crop.transpose(2, 0, 1)[None], dtype=np.float32)
    simcc_x, simcc_y = session.run(None, {session.get_inputs()[0].name: blob})[:2]
    simcc_x = np.asarray(simcc_x, dtype=np.float64)[0]
    simcc_y = np.asarray(simcc_y, dtype=np.float64)[0]
    if simcc_x.ndim != 2 or simcc_y.ndim != 2 or simcc_x.shape[0] != simcc_y.shape[0] or simcc_x.shape[0] < 133:
        raise RuntimeError(
            f"the DWPose keypoint model returned shapes {simcc_x.shape} and {simcc_y.shape}; expected "
            "(133, 2*width) and (133, 2*height) SimCC vectors (dw-ll_ucoco_384.onnx)"
        )
    ratio_x = simcc_x.shape[1] / in_w
    ratio_y = simcc_y.shape[1] / in_h
    locs = np.stack([simcc_x.argmax(1) / ratio_x, simcc_y.argmax(1) / ratio_y], axis=1)
    scores = np.minimum(simcc_x.max(1), simcc_y.max(1))
    pts = locs / np.array([in_w, in_h]) * scale + center - scale / 2
    pts[scores <= 0] = -1
    return pts[:133], scores[:133]


def to_person(points: np.ndarray, scores: np.ndarray) -> Person:
    """COCO-WholeBody 133 points -> OpenPose body 18 + hands + face (present when the score passes)."""
    body = np.zeros((NUM_BODY, 3))
    for op, coco in enumerate(COCO_TO_OPENPOSE):
        if coco is None:
            ok = scores[5] > KEYPOINT_THRESHOLD and scores[6] > KEYPOINT_THRESHOLD
            body[op] = [*((points[5] + points[6]) / 2), 1.0 if ok else 0.0]
        else:
            body[op] = [*points[coco], scores[coco] if scores[coco] > KEYPOINT_THRESHOLD else 0.0]

    def part(sl: slice) -> np.ndarray:
        arr = np.concatenate([points[sl], scores[sl, None]], axis=1)
        arr[arr[:, 2] < KEYPOINT_THRESHOLD] = 0.0
        return arr

    return Person(body, left_hand=part(LEFT_HAND_SLICE), right_hand=part(RIGHT_HAND_SLICE), face=part(FACE_SLICE))


class DWPoseBackend:
    name = "dwpose"

    def __init__(self, det_path: str, pose_path: str, device_id: int = 0):
        self.det_path = det_path
        self.pose_path = pose_path
        self.det = _session(det_path, device_id)
        self.pose = _session(pose_path, device_id)

    def __call__(self, rgb: np.ndarray, include_hands: bool = False, include_face: bool = False) -> list[Person]:
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        people = []
        for box in detect_people(self.det, bgr):
            pts, scores = estimate_keypoints(self.pose, bgr, box)
            people.append(to_person(pts, scores))
        return people
