"""Renderer: keypoints -> image round trip, and pixel identity with controlnet_aux's DWPose draw_pose."""
from __future__ import annotations


import json

import numpy as np
import pytest

from imagpose import pose as P
from imagpose.pose.keypoints import BODY_COLORS

# A standing person on a 256 x 384 canvas (OpenPose order).
STANDING = np.array([
    [128, 60], [128, 100], [100, 100], [90, 150], [85, 200], [156, 100], [166, 150], [171, 200],
    [110, 200], [108, 270], [106, 340], [146, 200], [148, 270], [150, 340], [120, 52], [136, 52],
    [112, 58], [144, 58],
], dtype=float)


def _person(points=STANDING, missing=()):
    body = np.c_[points, np.ones(len(points))]
    body[list(missing), 2] = 0
    return P.Person(body)


def _random_person(rng, w, h, hands=True, face=True):
    def part(n):
        return np.c_[rng.uniform(-5, w + 5, n), rng.uniform(-5, h + 5, n), (rng.uniform(size=n) > 0.2).astype(float)]

    return P.Person(part(18), part(21) if hands else None, part(21) if hands else None, part(68) if face else None)


def test_joint_colours_sit_at_the_keypoints():
    frame = P.PoseFrame(256, 384, [_person()])
    image = P.render_frame(frame, include_hands=False)
    assert image.shape == (384, 256, 3) and image.dtype == np.uint8
    for i, (x, y) in enumerate(STANDING):
        if i in (14, 15, 16, 17, 0):  # face joints overlap each other; checked below with offsets
            continue
        assert tuple(image[int(y), int(x)]) == BODY_COLORS[i], P.BODY_NAMES[i]
    # Limbs are the joint colours dimmed to 60 %: the middle of the right upper arm (limb 2, 2 -> 3).
    mid = ((STANDING[2] + STANDING[3]) / 2).astype(int)
    assert tuple(image[mid[1], mid[0]]) == tuple(int(c * 0.6) for c in BODY_COLORS[2])
    # Background stays black.
    assert (image[5, 5] == 0).all() and (image[380, 250] == 0).all()


def test_missing_joints_and_their_limbs_are_not_drawn():
    full = P.render_frame(P.PoseFrame(256, 384, [_person()]), include_hands=False)
    no_arm = P.render_frame(P.PoseFrame(256, 384, [_person(missing=(4,))]), include_hands=False)
    x, y = STANDING[4].astype(int)
    assert tuple(full[y, x]) == BODY_COLORS[4] and (no_arm[y, x] == 0).all()
    mid = ((STANDING[3] + STANDING[4]) / 2).astype(int)
    assert (no_arm[mid[1], mid[0]] == 0).all()


def test_scaling_to_another_size_moves_joints_proportionally():
    frame = P.PoseFrame(256, 384, [_person()])
    big = P.render_frame(frame, 512, 768, include_hands=False)
    x, y = (STANDING[10] * 2).astype(int)
    assert tuple(big[y, x]) == BODY_COLORS[10]


def test_openpose_json_round_trip_and_controlnet_aux_conventions():
    rng = np.random.default_rng(1)
    frame = P.PoseFrame(300, 200, [_random_person(rng, 300, 200)])
    data = P.frame_to_openpose(frame)
    json.dumps(data)  # plain JSON types only
    person = data["people"][0]
    assert len(person["pose_keypoints_2d"]) == 54 and len(person["hand_left_keypoints_2d"]) == 63
    assert len(person["face_keypoints_2d"]) == 70 * 3  # 68 + both pupils, as in OpenPose/controlnet_aux
    assert set(person["pose_keypoints_2d"][2::3]) <= {0.0, 1.0}  # controlnet_aux drops confidences < 1
    back = P.openpose_to_frame(data)
    assert (back.width, back.height) == (300, 200)
    for a, b in ((frame.people[0].body, back.people[0].body), (frame.people[0].left_hand, back.people[0].left_hand),
                 (frame.people[0].face, back.people[0].face)):
        present = a[:, 2] > 0
        np.testing.assert_array_equal(present, b[:, 2] > 0)
        np.testing.assert_allclose(a[present, :2], b[present, :2])


def test_normalised_coordinates_are_accepted():
    data = {"canvas_width": 200, "canvas_height": 100,
            "people": [{"pose_keypoints_2d": [0.5, 0.5, 1.0] + [0.0, 0.0, 0.0] * 17}]}
    frame = P.openpose_to_frame(data)
    np.testing.assert_allclose(frame.people[0].body[0], [100, 50, 1])
    assert not (frame.people[0].body[1:, 2] > 0).any()


def test_openpose_body25_is_converted():
    body25 = np.zeros((25, 3))
    body25[8] = [50, 50, 1]   # mid-hip: no COCO-18 counterpart
    body25[9] = [40, 60, 1]   # right hip -> COCO-18 index 8
    frame = P.openpose_to_frame({"canvas_width": 100, "canvas_height": 100,
                                 "people": [{"pose_keypoints_2d": body25.ravel().tolist()}]})
    body = frame.people[0].body
    assert body.shape == (18, 3) and np.flatnonzero(body[:, 2] > 0).tolist() == [8]
    np.testing.assert_allclose(body[8], [40, 60, 1])


@pytest.mark.parametrize("bad", [
    "nope", [{"people": [{"pose_keypoints_2d": [1, 2]}], "canvas_width": 10, "canvas_height": 10}],
    [{"people": [], "canvas_width": 0, "canvas_height": 10}], [{"people": []}],
])
def test_malformed_keypoints_raise_value_errors(bad):
    with pytest.raises(ValueError):
        P.openpose_to_frames(bad)


def test_different_canvases_need_a_size():
    frames = [P.PoseFrame(64, 64, [_person(STANDING / 6)]), P.PoseFrame(128, 64, [_person(STANDING / 6)])]
    with pytest.raises(ValueError, match="different canvas sizes"):
        P.render_pose_images(frames)
    assert tuple(P.render_pose_images(frames, 96, 80).shape) == (2, 80, 96, 3)


def test_identical_to_controlnet_aux_draw_pose():
    dw = pytest.importorskip("controlnet_aux.dwpose", reason="controlnet_aux (reference renderer) not installed")
    rng = np.random.default_rng(0)
    for trial in range(30):
        cw, ch = 320, 400
        people = [_random_person(rng, cw, ch) for _ in range(int(rng.integers(1, 4)))]
        out_w, out_h = ((cw, ch), (512, 384), (97, 131))[trial % 3]
        mine = P.render_frame(P.PoseFrame(cw, ch, people), out_w, out_h, include_hands=True, include_face=True)

        # DWPose's own data layout: normalised candidates, subset indices (-1 = missing), hands as all
        # left hands then all right hands, missing hand/face points at -1.
        def norm(a):
            out = a[:, :2] / [cw, ch]
            out[a[:, 2] <= 0] = -1
            return out

        candidate = np.concatenate([p.body[:, :2] / [cw, ch] for p in people])
        subset = np.array([[18 * n + j if p.body[j, 2] > 0 else -1 for j in range(18)] for n, p in enumerate(people)],
                          dtype=float)
        hands = np.array([norm(p.left_hand) for p in people] + [norm(p.right_hand) for p in people])
        faces = np.array([norm(p.face) for p in people])
        ref = dw.draw_pose({"bodies": {"candidate": candidate, "subset": subset}, "hands": hands, "faces": faces},
                           out_h, out_w)
        assert ref.shape == mine.shape
        diff = np.argwhere((ref != mine).any(-1))
        assert len(diff) == 0, f"trial {trial}: {len(diff)} pixels differ, first at {diff[:3].tolist()}"
