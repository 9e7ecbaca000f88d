"""MediaPipe fallback: the pose (and, on request, hand and face) models bundled in the ``mediapipe``
wheel (0.10.21, legacy ``mediapipe.solutions``), so no download is needed. It finds one person per image.
Its 33 landmarks are mapped to OpenPose's 18; its 468-point face mesh to the 68-point layout
(approximately: MediaPipe has no exact equivalent of every contour point).
"""
from __future__ import annotations

import threading


import numpy as np

from .errors import PoseBackendUnavailable
from .keypoints import NUM_BODY, NUM_HAND, Person

# MediaPipe landmark for each OpenPose body point; None = neck (mean of both shoulders).
MEDIAPIPE_TO_OPENPOSE = (0, None, 12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27, 5, 2, 8, 7)
# MediaPipe face-mesh index for each of the 68 iBUG/dlib face points (approximate correspondence).
MESH_TO_FACE68 = (
    127, 234, 93, 132, 58, 172, 136, 149, 152, 378, 365, 397, 288, 361, 323, 454, 356,  # jaw
    70, 63, 105, 66, 107,  # right eyebrow
    336, 296, 334, 293, 300,  # left eyebrow
    168, 197, 5, 4,  # nose bridge
    98, 97, 2, 326, 327,  # nostrils
    33, 160, 158, 133, 153, 144,  # right eye
    362, 385, 387, 263, 373, 380,  # left eye
    61, 40, 37, 0, 267, 270, 291, 321, 314, 17, 84, 91,  # outer lips
    78, 81, 13, 311, 308, 402, 14, 178,  # inner lips
)
VISIBILITY_THRESHOLD = 0.5
INSTALL_HINT = (
    "The MediaPipe detector needs mediapipe 0.10.21 (the last release with mediapipe.solutions): "
    "pip install --no-deps mediapipe==0.10.21 && pip install absl-py attrs flatbuffers "
    "\"protobuf>=4.25.3,<5\" matplotlib opencv-python-headless"
)
_LOCK = threading.Lock()


def _solutions():
    try:
        from mediapipe.python.solutions import holistic, pose  # noqa: WPS433
    except Exception as error:  # ImportError, or a broken install (protobuf/numpy mismatch)
        raise PoseBackendUnavailable(f"{INSTALL_HINT} (import failed: {error})") from error
    return pose, holistic


def is_available() -> bool:
    try:
        _solutions()
    except PoseBackendUnavailable:
        return False
    return True


def _points(landmarks, w: int, h: int, use_visibility: bool) -> np.ndarray:
    arr = np.array([[lm.x * w, lm.y * h, getattr(lm, "visibility", 1.0) if use_visibility else 1.0]
                    for lm in landmarks.landmark], dtype=np.float64)
    inside = (arr[:, 0] >= 0) & (arr[:, 0] < w) & (arr[:, 1] >= 0) & (arr[:, 1] < h)
    ok = inside & (arr[:, 2] >= VISIBILITY_THRESHOLD if use_visibility else inside)
    arr[:, 2] = np.where(ok, np.maximum(arr[:, 2], 1e-3), 0.0)
    return arr


def _body(pose_landmarks, w: int, h: int) -> np.ndarray:
    mp = _points(pose_landmarks, w, h, use_visibility=True)
    body = np.zeros((NUM_BODY, 3))
    for op, idx in enumerate(MEDIAPIPE_TO_OPENPOSE):
        if idx is None:
            l, r = mp[11], mp[12]
            ok = l[2] > 0 and r[2] > 0
            body[op] = [(l[0] + r[0]) / 2, (l[1] + r[1]) / 2, min(l[2], r[2]) if ok else 0.0]
        else:
            body[op] = mp[idx]
    return body


def _hand(landmarks, w: int, h: int) -> np.ndarray | None:
    if landmarks is None:
        return None
    arr = _points(landmarks, w, h, use_visibility=False)
    return arr[:NUM_HAND]


def _face(landmarks, w: int, h: int) -> np.ndarray | None:
    if landmarks is None:
        return None
    arr = _points(landmarks, w, h, use_visibility=False)
    return arr[list(MESH_TO_FACE68)]


class MediaPipeBackend:
    name = "mediapipe"

    def __init__(self) -> None:
        self._pose, self._holistic = _solutions()

    def __call__(self, rgb: np.ndarray, include_hands: bool = False, include_face: bool = False) -> list[Person]:
        h, w = rgb.shape[:2]
        image = np.ascontiguousarray(rgb, dtype=np.uint8)
        with _LOCK:
            if include_hands or include_face:
                with self._holistic.Holistic(static_image_mode=True, model_complexity=1,
                                             refine_face_landmarks=False) as model:
                    result = model.process(image)
            else:
                with self._pose.Pose(static_image_mode=True, model_complexity=1) as model:
                    result = model.process(image)
        if result.pose_landmarks is None:
            return []
        body = _body(result.pose_landmarks, w, h)
        if not (body[:, 2] > 0).any():
            return []
        left = right = face = None
        if include_hands:
            left = _hand(result.left_hand_landmarks, w, h)
            right = _hand(result.right_hand_landmarks, w, h)
        if include_face:
            face = _face(result.face_landmarks, w, h)
        return [Person(body, left, right, face)]
