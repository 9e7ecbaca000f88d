"""Keypoint data model and the OpenPose-JSON format used for ComfyUI's ``POSE_KEYPOINT`` type.

A ``POSE_KEYPOINT`` value (as produced by comfyui_controlnet_aux) is a list with one dict per image::

    {"people": [{"pose_keypoints_2d": [x, y, c, ...],        # 18 OpenPose-COCO body points
                 "hand_left_keypoints_2d": [...] or None,   # 21 points
                 "hand_right_keypoints_2d": [...] or None,  # 21 points
                 "face_keypoints_2d": [...] or None}],      # 68 (+2 eyes) points
     "canvas_width": W, "canvas_height": H}

Coordinates are pixels of the canvas; a keypoint with confidence 0 is missing. comfyui_controlnet_aux
treats confidences below 1.0 as missing when it reads this format, so :func:`frame_to_openpose` writes
1.0 for every present point. Readers here accept pixel or normalised (all within [0, 1]) coordinates.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from .errors import PersonIndexOutOfRange

# OpenPose COCO-18 order.
BODY_NAMES = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
    "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)
NUM_BODY = 18
BODY25_TO_COCO18 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)
NUM_HAND = 21
NUM_FACE = 68

# Limbs as 0-based index pairs, in the order (and so with the colours) of the DWPose/OpenPose renderer.
BODY_LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12),
    (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)
BODY_COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)
HAND_EDGES = (
    (0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
    (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20),
)


def _as_points(value: Any, count: int | None, what: str) -> np.ndarray | None:
    if value is None:
        return None
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == 0:
        return None
    if arr.ndim == 1:
        if arr.size % 3:
            raise ValueError(f"{what}: expected a flat list of (x, y, confidence) triples, got {arr.size} numbers")
        arr = arr.reshape(-1, 3)
    if arr.ndim != 2 or arr.shape[1] not in (2, 3):
        raise ValueError(f"{what}: expected shape (N, 3) or (N, 2), got {tuple(arr.shape)}")
    if arr.shape[1] == 2:
        arr = np.concatenate([arr, np.ones((arr.shape[0], 1))], axis=1)
    if count is not None and arr.shape[0] < count:
        raise ValueError(f"{what}: expected at least {count} keypoints, got {arr.shape[0]}")
    arr = arr.copy()
    bad = ~np.isfinite(arr).all(axis=1)
    arr[bad] = 0.0
    return arr


@dataclass
class Person:
    """One person. Arrays hold (x, y, confidence) rows in canvas pixels; confidence <= 0 means missing."""

    body: np.ndarray
    left_hand: np.ndarray | None = None
    right_hand: np.ndarray | None = None
    face: np.ndarray | None = None

    def __post_init__(self) -> None:
        body = _as_points(self.body, NUM_BODY, "body keypoints")
        self.body = body if body is not None else np.zeros((NUM_BODY, 3))
        self.body = self.body[:NUM_BODY]
        self.left_hand = _as_points(self.left_hand, NUM_HAND, "left hand keypoints")
        self.right_hand = _as_points(self.right_hand, NUM_HAND, "right hand keypoints")
        self.face = _as_points(self.face, None, "face keypoints")

    @property
    def visible(self) -> np.ndarray:
        return self.body[:, 2] > 0

    def all_points(self) -> np.ndarray:
        parts = [self.body] + [p for p in (self.left_hand, self.right_hand, self.face) if p is not None]
        pts = np.concatenate(parts, axis=0)
        return pts[pts[:, 2] > 0, :2]

    def bbox(self) -> tuple[float, float, float, float] | None:
        """(x0, y0, x1, y1) of the visible body keypoints, or None."""
        pts = self.body[self.visible, :2]
        if len(pts) == 0:
            return None
        return float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())

    def area(self) -> float:
        box = self.bbox()
        if box is None:
            return 0.0
        # Diagonal squared: a person seen as a single line (e.g. only a vertical chain of joints) still counts.
        return (box[2] - box[0]) ** 2 + (box[3] - box[1]) ** 2

    def score(self) -> float:
        return float(np.clip(self.body[:, 2], 0, None).mean())

    def copy(self) -> "Person":
        return Person(
            self.body.copy(),
            None if self.left_hand is None else self.left_hand.copy(),
            None if self.right_hand is None else self.right_hand.copy(),
            None if self.face is None else self.face.copy(),
        )

    def transformed(self, fn) -> "Person":
        """Apply fn((N, 2) array) -> (N, 2) to the present points of every part."""
        out = self.copy()
        for name in ("body", "left_hand", "right_hand", "face"):
            arr = getattr(out, name)
            if arr is None:
                continue
            keep = arr[:, 2] > 0
            if keep.any():
                arr[keep, :2] = fn(arr[keep, :2])
        return out


@dataclass
class PoseFrame:
    """The people found in one image, on a canvas of ``width`` x ``height`` pixels."""

    width: int
    height: int
    people: list[Person] = field(default_factory=list)

    def scaled_to(self, width: int, height: int) -> "PoseFrame":
        if width == self.width and height == self.height:
            return PoseFrame(width, height, [p.copy() for p in self.people])
        sx = width / max(self.width, 1)
        sy = height / max(self.height, 1)
        scale = np.array([sx, sy])
        return PoseFrame(width, height, [p.transformed(lambda a: a * scale) for p in self.people])


def _flat(arr: np.ndarray | None) -> list[float] | None:
    if arr is None:
        return None
    out: list[float] = []
    for x, y, c in arr:
        if c > 0:
            out.extend([float(x), float(y), 1.0])
        else:
            out.extend([0.0, 0.0, 0.0])
    return out


def frame_to_openpose(frame: PoseFrame) -> dict:
    """One image's poses as an OpenPose-JSON dict (the element type of ComfyUI's POSE_KEYPOINT list)."""
    people = []
    for p in frame.people:
        face = p.face
        if face is not None and face.shape[0] == NUM_FACE:
            # OpenPose faces have 70 points: 68 landmarks then the two pupils; use the body's eyes
            # (what comfyui_controlnet_aux does).
            face = np.concatenate([face, p.body[[14, 15]]], axis=0)
        people.append({
            "pose_keypoints_2d": _flat(p.body),
            "face_keypoints_2d": _flat(face),
            "hand_left_keypoints_2d": _flat(p.left_hand),
            "hand_right_keypoints_2d": _flat(p.right_hand),
        })
    return {"people": people, "canvas_height": int(frame.height), "canvas_width": int(frame.width)}


def frames_to_openpose(frames: Iterable[PoseFrame]) -> list[dict]:
    return [frame_to_openpose(f) for f in frames]


def openpose_to_frame(data: Any, default_size: tuple[int, int] | None = None) -> PoseFrame:
    """Parse one OpenPose-JSON dict (pixel or normalised coordinates). default_size is (width, height)."""
    if isinstance(data, PoseFrame):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"expected an OpenPose-JSON dict with 'people', got {type(data).__name__}")
    width = data.get("canvas_width")
    height = data.get("canvas_height")
    if width is None or height is None:
        if default_size is None:
            raise ValueError("OpenPose-JSON dict has no canvas_width/canvas_height and no size was given")
        width, height = default_size
    try:
        width, height = int(width), int(height)
    except (TypeError, ValueError, OverflowError) as error:  # OverflowError: an infinite float
        raise ValueError(f"canvas_width/canvas_height must be whole numbers of pixels, got {width!r}x{height!r}") from error
    if width <= 0 or height <= 0:
        raise ValueError(f"OpenPose-JSON canvas size must be positive, got {width}x{height}")
    people = []
    raw_people = data.get("people") or []
    parsed = []
    for i, raw in enumerate(raw_people):
        if not isinstance(raw, dict):
            raise ValueError(f"people[{i}]: expected a dict, got {type(raw).__name__}")
        body = _as_points(raw.get("pose_keypoints_2d"), None, f"people[{i}].pose_keypoints_2d")
        if body is None:
            body = np.zeros((NUM_BODY, 3))
        elif body.shape[0] == 25:  # OpenPose BODY_25 (mid-hip at 8, feet at 19-24) -> COCO-18
            body = body[list(BODY25_TO_COCO18)]
        elif body.shape[0] < NUM_BODY:  # pad short lists rather than fail
            body = np.concatenate([body, np.zeros((NUM_BODY - body.shape[0], 3))])
        lh = _as_points(raw.get("hand_left_keypoints_2d"), None, f"people[{i}].hand_left_keypoints_2d")
        rh = _as_points(raw.get("hand_right_keypoints_2d"), None, f"people[{i}].hand_right_keypoints_2d")
        face = _as_points(raw.get("face_keypoints_2d"), None, f"people[{i}].face_keypoints_2d")
        lh = lh if lh is not None and lh.shape[0] >= NUM_HAND else None
        rh = rh if rh is not None and rh.shape[0] >= NUM_HAND else None
        if face is not None and face.shape[0] > NUM_FACE:
            face = face[:NUM_FACE]
        parsed.append([body[:NUM_BODY], None if lh is None else lh[:NUM_HAND],
                       None if rh is None else rh[:NUM_HAND], face])
    # Normalised coordinates: every present point within [0, 1].
    present = [a[a[:, 2] > 0, :2] for person in parsed for a in person if a is not None]
    present = [a for a in present if len(a)]
    normalised = bool(present) and all(((a >= 0) & (a <= 1)).all() for a in present)
    for body, lh, rh, face in parsed:
        if normalised:
            for a in (body, lh, rh, face):
                if a is not None:
                    a[:, 0] *= width
                    a[:, 1] *= height
        people.append(Person(body, lh, rh, face))
    return PoseFrame(width, height, people)


def openpose_to_frames(data: Any) -> list[PoseFrame]:
    """Parse a POSE_KEYPOINT value: a list of OpenPose dicts, or a single dict."""
    if isinstance(data, (dict, PoseFrame)):
        data = [data]
    if not isinstance(data, (list, tuple)):
        raise ValueError(f"expected a list of OpenPose-JSON dicts, got {type(data).__name__}")
    return [openpose_to_frame(d) for d in data]


def select_people(people: Sequence[Person], person: "str | int") -> list[Person]:
    """Pick people: 'largest' (largest body extent), 'most_confident' (highest mean body score, the rule
    the IMAGPose reference used), 'all', or an int index counting people from left to right."""
    people = [p for p in people if p.visible.any()]
    if not people or person == "all":
        return list(people)
    if person == "largest":
        return [max(people, key=lambda p: (p.area(), p.score()))]
    if person == "most_confident":
        return [max(people, key=lambda p: p.score())]
    if isinstance(person, str) and person.lstrip("-").isdigit():
        person = int(person)
    if isinstance(person, (int, np.integer)) and not isinstance(person, bool):
        ordered = sorted(people, key=lambda p: p.body[p.visible, 0].mean())
        if not -len(ordered) <= person < len(ordered):
            raise PersonIndexOutOfRange(f"person index {person} is out of range: {len(ordered)} people found")
        return [ordered[person]]
    raise ValueError(f"person must be 'largest', 'most_confident', 'all' or an index, got {person!r}")
