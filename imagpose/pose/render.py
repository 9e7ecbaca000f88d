"""Pose rendering in the DWPose / ControlNet-OpenPose style that IMAGPose's training data used.

Pixel-for-pixel this follows the DWPose drawing rules: limbs are filled ellipses (half width 4 px) in the
18 OpenPose colours, the canvas is then dimmed to 60 %, joints are 4 px discs in full colour; hands are
2 px lines in rainbow colours with 4 px blue (RGB 0,0,255) discs; face points are 3 px white discs.
Coordinates go through the same float and int steps as the reference, so images are identical.
IMAGPose's own data rendered body and hands, never the face.
"""
from __future__ import annotations

import colorsys
import math
from typing import Iterable, Sequence

import numpy as np

from .errors import KeypointOutOfRange
from .keypoints import BODY_COLORS, BODY_LIMBS, HAND_EDGES, NUM_FACE, Person, PoseFrame

_EPS = 0.01
_STICK_WIDTH = 4
DIM_ROWS = 256  # rows dimmed at a time: the float64 product of a whole 8192 px canvas at once would take 1.5 GiB
MAX_DRAWN_COORDINATE = 1 << 20  # px; keypoints may lie outside the image, but OpenCV takes 32-bit coordinates


def _cv2():
    try:
        import cv2  # noqa: WPS433
    except ImportError as error:  # pragma: no cover - ComfyUI installs normally carry OpenCV
        raise RuntimeError(
            "Pose rendering needs OpenCV: pip install opencv-python-headless (or opencv-python)"
        ) from error
    return cv2


def _hand_edge_colors() -> list[tuple[float, float, float]]:
    n = float(len(HAND_EDGES))
    return [tuple(c * 255 for c in colorsys.hsv_to_rgb(i / n, 1.0, 1.0)) for i in range(len(HAND_EDGES))]


_HAND_COLORS = _hand_edge_colors()


def _normalised(arr: np.ndarray | None, cw: int, ch: int) -> np.ndarray | None:
    if arr is None:
        return None
    out = np.array(arr, dtype=np.float64, copy=True)
    out[:, 0] = out[:, 0] / float(cw)
    out[:, 1] = out[:, 1] / float(ch)
    return out


def draw_bodies(canvas: np.ndarray, bodies: Sequence[np.ndarray]) -> np.ndarray:
    """bodies: (18, 3) arrays of normalised (x, y, present) rows. Returns the new canvas."""
    cv2 = _cv2()
    H, W = canvas.shape[:2]
    for i, (a, b) in enumerate(BODY_LIMBS):
        for body in bodies:
            if body[a, 2] <= 0 or body[b, 2] <= 0:
                continue
            Y = np.array([body[a, 0], body[b, 0]]) * float(W)
            X = np.array([body[a, 1], body[b, 1]]) * float(H)
            mX = np.mean(X)
            mY = np.mean(Y)
            length = ((X[0] - X[1]) ** 2 + (Y[0] - Y[1]) ** 2) ** 0.5
            angle = math.degrees(math.atan2(X[0] - X[1], Y[0] - Y[1]))
            polygon = cv2.ellipse2Poly((int(mY), int(mX)), (int(length / 2), _STICK_WIDTH), int(angle), 0, 360, 1)
            cv2.fillConvexPoly(canvas, polygon, BODY_COLORS[i])
    for top in range(0, H, DIM_ROWS):  # the reference's (canvas * 0.6).astype(np.uint8), a band at a time
        band = canvas[top : top + DIM_ROWS]
        band[...] = (band * 0.6).astype(np.uint8)
    for i in range(len(BODY_COLORS)):
        for body in bodies:
            if body[i, 2] <= 0:
                continue
            x = int(body[i, 0] * W)
            y = int(body[i, 1] * H)
            cv2.circle(canvas, (x, y), 4, BODY_COLORS[i], thickness=-1)
    return canvas


def draw_hands(canvas: np.ndarray, hands: Iterable[np.ndarray]) -> np.ndarray:
    cv2 = _cv2()
    H, W = canvas.shape[:2]
    for peaks in hands:
        for ie, (a, b) in enumerate(HAND_EDGES):
            if peaks[a, 2] <= 0 or peaks[b, 2] <= 0:
                continue
            x1, y1 = int(peaks[a, 0] * W), int(peaks[a, 1] * H)
            x2, y2 = int(peaks[b, 0] * W), int(peaks[b, 1] * H)
            if x1 > _EPS and y1 > _EPS and x2 > _EPS and y2 > _EPS:
                cv2.line(canvas, (x1, y1), (x2, y2), _HAND_COLORS[ie], thickness=2)
        for x, y, c in peaks:
            if c <= 0:
                continue
            x, y = int(x * W), int(y * H)
            if x > _EPS and y > _EPS:
                cv2.circle(canvas, (x, y), 4, (0, 0, 255), thickness=-1)
    return canvas


def draw_faces(canvas: np.ndarray, faces: Iterable[np.ndarray]) -> np.ndarray:
    cv2 = _cv2()
    H, W = canvas.shape[:2]
    for lmks in faces:
        for x, y, c in lmks[:NUM_FACE]:
            if c <= 0:
                continue
            x, y = int(x * W), int(y * H)
            if x > _EPS and y > _EPS:
                cv2.circle(canvas, (x, y), 3, (255, 255, 255), thickness=-1)
    return canvas


def check_drawable(parts: Sequence[np.ndarray], canvas_width: int, canvas_height: int, width: int, height: int) -> None:
    """Every present keypoint, scaled to the output image, within the coordinates OpenCV can draw."""
    scale = np.array([width / canvas_width, height / canvas_height])
    for points in parts:
        present = points[points[:, 2] > 0, :2]
        far = ~(np.abs(present * scale) <= MAX_DRAWN_COORDINATE).all(axis=1)
        if far.any():
            x, y = present[far][0]
            raise KeypointOutOfRange(
                f"a keypoint at ({x:g}, {y:g}) on a {canvas_width}x{canvas_height} canvas lands beyond "
                f"{MAX_DRAWN_COORDINATE} px (the most OpenCV draws) in the {width}x{height} image; keypoints are pixel "
                "coordinates of their canvas (or 0-1)")


def render_people(
    people: Sequence[Person],
    canvas_width: int,
    canvas_height: int,
    width: int | None = None,
    height: int | None = None,
    include_body: bool = True,
    include_hands: bool = True,
    include_face: bool = False,
) -> np.ndarray:
    """Render people whose keypoints are in pixels of a canvas_width x canvas_height canvas onto a
    width x height RGB uint8 image (default: the canvas size)."""
    width = int(canvas_width if width is None else width)
    height = int(canvas_height if height is None else height)
    if width <= 0 or height <= 0:
        raise ValueError(f"render size must be positive, got {width}x{height}")
    cw, ch = max(int(canvas_width), 1), max(int(canvas_height), 1)
    drawn = [p.body for p in people if include_body]
    drawn += [h for p in people if include_hands for h in (p.left_hand, p.right_hand) if h is not None]
    drawn += [p.face for p in people if include_face and p.face is not None]
    check_drawable(drawn, cw, ch, width, height)
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    if include_body:
        canvas = draw_bodies(canvas, [_normalised(p.body, cw, ch) for p in people])
    if include_hands:
        # DWPose's order: every person's left hand, then every person's right hand.
        hands = [_normalised(p.left_hand, cw, ch) for p in people if p.left_hand is not None]
        hands += [_normalised(p.right_hand, cw, ch) for p in people if p.right_hand is not None]
        canvas = draw_hands(canvas, hands)
    if include_face:
        canvas = draw_faces(canvas, [_normalised(p.face, cw, ch) for p in people if p.face is not None])
    return canvas


def render_frame(
    frame: PoseFrame,
    width: int | None = None,
    height: int | None = None,
    include_body: bool = True,
    include_hands: bool = True,
    include_face: bool = False,
) -> np.ndarray:
    """Render one PoseFrame (keypoints scaled from its canvas to width x height)."""
    return render_people(frame.people, frame.width, frame.height, width, height,
                         include_body=include_body, include_hands=include_hands, include_face=include_face)
