"""A synthetic "people" data set made by code: flat-coloured figures drawn along generated COCO-18 poses.

    python -m trainer.synthetic OUT_DIR [--identities 2000] [--poses 4] [--size 64] [--seed 0]

Writes OUT_DIR/image/<id>_<view>_<kind>.png (the figure on white), OUT_DIR/dwpose/<same name>.png (its
pose rendered by the pack's own pose renderer, `imagpose.pose.render_frame`, exactly as the pose nodes draw
it), OUT_DIR/groups.json (built by `trainer.data.build_groups`, so the trainer reads it unchanged:
`data.pose_template: "{dir}/../dwpose/{stem}.png"`) and OUT_DIR/meta.json (each photo's identity palette
and keypoints).

Every identity has its own randomly drawn colours (skin, hair, shirt, trousers), so nothing about an
identity's appearance can be memorised: a model can only get a target's colours right by copying them from
the source cells. Held-out identities and poses come from other seeds.
"""
from __future__ import annotations

import argparse
import colorsys
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imagpose.pose import Person, PoseFrame, render_frame

from .data import PoseRule, build_groups

POSE_TEMPLATE = "{dir}/../dwpose/{stem}.png"
PARTS = ("skin", "hair", "shirt", "trousers")
POSE_KINDS = ("stand", "walk", "wave", "armsout", "armsup", "mixed")  # no "_": it splits DeepFashion names
SUPERSAMPLE = 4  # figures are drawn large and area-downsampled: smooth edges like a photo


@dataclass(frozen=True)
class Identity:
    """Colours of one synthetic person, RGB uint8 per part."""

    colours: dict

    def palette(self) -> np.ndarray:
        """(len(PARTS), 3) float in [0, 1], in PARTS order."""
        return np.array([self.colours[p] for p in PARTS], dtype=np.float64) / 255.0


def random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A colour that stands out from the white background (not too light, not grey)."""
    h, s, v = rng.uniform(0, 1), rng.uniform(0.45, 1.0), rng.uniform(0.25, 0.9)
    return tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(h, s, v))


def random_identity(rng: np.random.Generator) -> Identity:
    return Identity({part: random_colour(rng) for part in PARTS})


def _direction(angle_deg: float, outward: float) -> np.ndarray:
    """Unit vector at `angle_deg` from straight down, turned towards `outward` (-1 image left, +1 right)."""
    a = math.radians(angle_deg)
    return np.array([outward * math.sin(a), math.cos(a)])


def random_pose(rng: np.random.Generator, width: int, height: int, kind: str | None = None) -> PoseFrame:
    """A plausible frontal standing/walking/arm pose (COCO-18, pixels) with jitter in place, scale and angles.

    The person's right side is on the image's left (a frontal view), as pose detectors report it.
    """
    kind = kind or POSE_KINDS[int(rng.integers(len(POSE_KINDS)))]
    body_h = height * 0.86 * rng.uniform(0.88, 1.04)  # head top to ankle
    cx = width / 2 + rng.uniform(-0.08, 0.08) * width
    top = height * 0.97 - body_h + rng.uniform(-0.03, 0.03) * height
    lean = rng.uniform(-0.03, 0.03) * body_h  # the upper body shifted sideways a little

    def at(dx: float, y: float) -> np.ndarray:  # fractions of body height, y from the head top
        return np.array([cx + dx * body_h + lean * (1 - y), top + y * body_h])

    neck = at(0, 0.17)
    shoulders = {-1: at(-0.12, 0.195), 1: at(0.12, 0.195)}
    hips = {-1: at(-0.07, 0.53), 1: at(0.07, 0.53)}

    def arm_angles() -> tuple[float, float]:
        choice = {"stand": "down", "walk": "down", "wave": None, "armsout": "out", "armsup": "up",
                  "mixed": None}[kind]
        choice = choice or ["down", "out", "up", "bent"][int(rng.integers(4))]
        upper = {"down": rng.uniform(4, 25), "out": rng.uniform(55, 100), "up": rng.uniform(120, 165),
                 "bent": rng.uniform(20, 70)}[choice]
        bend = rng.uniform(70, 130) if choice == "bent" else rng.uniform(-15, 35)
        return upper, upper + bend

    arms = {side: arm_angles() for side in (-1, 1)}
    if kind == "wave":  # one arm raised, the other down
        side = int(rng.choice([-1, 1]))
        arms[side] = (rng.uniform(120, 160), rng.uniform(150, 200))
        arms[-side] = (rng.uniform(4, 20), rng.uniform(0, 30))
    if kind == "walk":
        front = int(rng.choice([-1, 1]))
        legs = {front: (rng.uniform(12, 28), rng.uniform(0, 18)), -front: (rng.uniform(-8, 4), rng.uniform(-4, 8))}
    else:
        spread = rng.uniform(-3, 14)
        legs = {s: (spread + rng.uniform(-3, 3), spread + rng.uniform(-6, 6)) for s in (-1, 1)}

    points = np.zeros((18, 3))

    def put(index: int, xy: np.ndarray) -> None:
        points[index] = (xy[0], xy[1], 1.0)

    nose = at(rng.uniform(-0.012, 0.012), 0.075)
    put(0, nose)
    put(1, neck)
    for side, (shoulder, elbow, wrist, hip, knee, ankle) in {-1: (2, 3, 4, 8, 9, 10), 1: (5, 6, 7, 11, 12, 13)}.items():
        upper, lower = arms[side]
        e = shoulders[side] + 0.17 * body_h * _direction(upper, side)
        w = e + 0.155 * body_h * _direction(lower, side)
        thigh, shin = legs[side]
        k = hips[side] + 0.225 * body_h * _direction(thigh, side)
        a = k + 0.215 * body_h * _direction(shin, side)
        for index, xy in zip((shoulder, elbow, wrist, hip, knee, ankle), (shoulders[side], e, w, hips[side], k, a)):
            put(index, xy)
    eye_dy, eye_dx, ear_dx = -0.018 * body_h, 0.024 * body_h, 0.05 * body_h
    put(14, nose + (-eye_dx, eye_dy))
    put(15, nose + (eye_dx, eye_dy))
    put(16, nose + (-ear_dx, 0.4 * eye_dy))
    put(17, nose + (ear_dx, 0.4 * eye_dy))
    return PoseFrame(width, height, [Person(points)])


TORSO = 0.335  # shoulder line to hip line, as a fraction of body height (see random_pose)


def body_height(person: Person) -> float:
    """Head top to ankle, from the torso length (it does not change with the pose): every part width scales with it."""
    b = person.body[:, :2]
    return float(np.linalg.norm((b[8] + b[11]) / 2 - (b[2] + b[5]) / 2)) / TORSO


def _shapes(person: Person):
    """The figure as (part, kind, points, size) shapes in keypoint pixels, in drawing order (back to front)."""
    b = person.body[:, :2]
    h = body_height(person)
    hip_mid, shoulder_mid = (b[8] + b[11]) / 2, (b[2] + b[5]) / 2
    shapes = []
    for hip, knee, ankle in ((8, 9, 10), (11, 12, 13)):
        shapes.append(("trousers", "line", [b[hip], b[knee], b[ankle]], 0.115 * h))
    crotch = hip_mid + (0, 0.07 * h)
    shapes.append(("trousers", "poly", [b[8] + (-0.03 * h, 0), b[11] + (0.03 * h, 0), crotch + (0.05 * h, 0),
                                         crotch + (-0.05 * h, 0)], 0))
    shapes.append(("skin", "line", [b[1], b[1] + (b[0] - b[1]) * 0.5], 0.06 * h))  # neck
    widen = (b[5] - b[2]) * 0.08
    shapes.append(("shirt", "poly", [b[2] - widen, b[5] + widen, b[11] + (0.035 * h, 0), b[8] - (0.035 * h, 0)], 0))
    for shoulder, elbow, wrist in ((2, 3, 4), (5, 6, 7)):
        shapes.append(("skin", "line", [b[elbow], b[wrist]], 0.07 * h))  # forearm
        shapes.append(("skin", "disc", [b[wrist]], 0.045 * h))  # hand
        shapes.append(("shirt", "line", [b[shoulder], b[elbow]], 0.095 * h))  # sleeve
    head = b[0] + (0, -0.015 * h)
    shapes.append(("hair", "disc", [head + (0, -0.02 * h)], 0.085 * h))
    shapes.append(("skin", "disc", [head + (0, 0.02 * h)], 0.065 * h))
    return shapes


def _draw(canvas: np.ndarray, shapes, scale: float, colour_of) -> np.ndarray:
    import cv2

    for part, kind, points, size in shapes:
        colour = colour_of(part)
        pts = [np.round(np.asarray(p) * scale).astype(np.int32) for p in points]
        thickness = max(1, int(round(size * scale)))
        if kind == "line":
            for a, b in zip(pts, pts[1:]):
                cv2.line(canvas, tuple(int(v) for v in a), tuple(int(v) for v in b), colour, thickness, cv2.LINE_8)
            for p in pts:  # round joints
                cv2.circle(canvas, tuple(int(v) for v in p), thickness // 2, colour, -1)
        elif kind == "disc":
            cv2.circle(canvas, tuple(int(v) for v in pts[0]), thickness, colour, -1)
        else:
            cv2.fillConvexPoly(canvas, np.array(pts, dtype=np.int32), colour)
    return canvas


def draw_figure(frame: PoseFrame, identity: Identity) -> np.ndarray:
    """The identity standing in `frame`'s pose on white, (H, W, 3) uint8 at the frame's size."""
    import cv2

    s = SUPERSAMPLE
    canvas = np.full((frame.height * s, frame.width * s, 3), 255, dtype=np.uint8)
    for person in frame.people:
        canvas = _draw(canvas, _shapes(person), s, lambda part: tuple(int(c) for c in identity.colours[part]))
    return cv2.resize(canvas, (frame.width, frame.height), interpolation=cv2.INTER_AREA)


def part_labels(frame: PoseFrame) -> np.ndarray:
    """(H, W) int map at the frame's size: 0 background, 1 + PARTS index where that part is visible."""
    canvas = np.zeros((frame.height, frame.width, 3), dtype=np.uint8)
    for person in frame.people:
        canvas = _draw(canvas, _shapes(person), 1.0, lambda part: (PARTS.index(part) + 1, 0, 0))
    return canvas[..., 0].astype(np.int64)


def inner_mask(labels: np.ndarray) -> np.ndarray:
    """The figure's inner pixels of a `part_labels` map (one pixel in from the edge: any 8x VAE blurs edges)."""
    from scipy.ndimage import binary_erosion

    return binary_erosion(labels > 0, iterations=1)


def render_pose(frame: PoseFrame) -> np.ndarray:
    """The pose image exactly as the pose nodes render it (body + hands when present, no face)."""
    return render_frame(frame, include_hands=True, include_face=False)


def photo_name(identity_index: int, view: int, kind: str) -> str:
    """DeepFashion-style `<id>_<view>_<pose>`: the group is the name without its last two `_` parts."""
    if "_" in kind:
        raise ValueError(f"pose kind {kind!r} must not contain '_' (it would change the group of the photo)")
    return f"synth-id_{identity_index:06d}_{view:02d}_{kind}"


def write_dataset(root: str | os.PathLike, identities: int, poses: int, size: int = 64, seed: int = 0) -> dict:
    """Write `identities` x `poses` photos + pose images, groups.json and meta.json; returns a summary."""
    from PIL import Image

    if identities < 1 or poses < 2:
        raise ValueError(f"need >= 1 identity and >= 2 poses per identity, got {identities} and {poses}")
    root = Path(root)
    images, pose_dir = root / "image", root / "dwpose"
    images.mkdir(parents=True, exist_ok=True)
    pose_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    meta = []
    for i in range(identities):
        identity = random_identity(rng)
        for view in range(poses):
            kind = POSE_KINDS[int(rng.integers(len(POSE_KINDS)))]
            frame = random_pose(rng, size, size, kind)
            name = photo_name(i, view, kind)
            Image.fromarray(draw_figure(frame, identity)).save(images / f"{name}.png")
            Image.fromarray(render_pose(frame)).save(pose_dir / f"{name}.png")
            meta.append({"image": f"image/{name}.png", "identity": i, "colours": identity.colours,
                         "keypoints": frame.people[0].body.tolist()})
    groups, report = build_groups(images, relative_to=root, pose_rule=PoseRule(template=POSE_TEMPLATE))
    (root / "groups.json").write_text(json.dumps(groups))
    (root / "meta.json").write_text(json.dumps({"size": size, "seed": seed, "parts": PARTS, "photos": meta}))
    return {"root": str(root), "groups": str(root / "groups.json"), **report}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.synthetic", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--identities", type=int, default=2000)
    parser.add_argument("--poses", type=int, default=4, help="photos (poses) per identity, >= 2")
    parser.add_argument("--size", type=int, default=64, help="photo side in pixels (= the cell size to train at)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        summary = write_dataset(args.out_dir, args.identities, args.poses, args.size, args.seed)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
