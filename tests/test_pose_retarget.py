"""Retargeting: source bone lengths, target joint angles, source position."""
from __future__ import annotations


import numpy as np
import pytest

from imagpose import pose as P
from imagpose.pose.retarget import BONES

SOURCE = np.array([  # a tall person standing on a 256 x 384 canvas
    [128, 60], [128, 100], [100, 100], [90, 150], [85, 200], [156, 100], [166, 150], [171, 200],
    [110, 200], [108, 270], [106, 340], [146, 200], [148, 270], [150, 340], [120, 52], [136, 52],
    [112, 58], [144, 58],
], dtype=float)


def _target(rng):
    """A smaller person, elsewhere on a 512 x 512 canvas, arms raised and a leg bent (random angles)."""
    pts = np.zeros((18, 2))
    pts[1] = [380, 150]
    dirs = {}
    for a, b in BONES:
        angle = rng.uniform(0, 2 * np.pi)
        dirs[(a, b)] = angle
        pts[b] = pts[a] + rng.uniform(10, 40) * np.array([np.cos(angle), np.sin(angle)])
    return pts


def _person(points, missing=()):
    body = np.c_[points, np.ones(len(points))]
    body[list(missing), 2] = 0
    return P.Person(body)


def _angle(v):
    return np.arctan2(v[1], v[0])


@pytest.mark.parametrize("seed", range(5))
def test_bone_lengths_from_source_angles_from_target(seed):
    rng = np.random.default_rng(seed)
    target = _person(_target(rng))
    out = P.retarget_person(target, _person(SOURCE))
    for a, b in BONES:
        src_len = np.linalg.norm(SOURCE[b] - SOURCE[a])
        out_vec = out.body[b, :2] - out.body[a, :2]
        tgt_vec = target.body[b, :2] - target.body[a, :2]
        assert abs(np.linalg.norm(out_vec) - src_len) <= 1.0, (a, b)
        diff = (_angle(out_vec) - _angle(tgt_vec) + np.pi) % (2 * np.pi) - np.pi
        assert abs(diff) < 1e-6, (a, b)


def test_anchors_place_the_pose_on_the_source():
    rng = np.random.default_rng(7)
    target = _person(_target(rng))
    source = _person(SOURCE)
    out = P.retarget_person(target, source, anchor="neck")
    np.testing.assert_allclose(out.body[1, :2], SOURCE[1], atol=1e-6)
    out = P.retarget_person(target, source, anchor="hips")
    np.testing.assert_allclose(out.body[[8, 11], :2].mean(0), SOURCE[[8, 11]].mean(0), atol=1e-6)
    out = P.retarget_person(target, source, anchor="center")
    box = out.bbox()
    np.testing.assert_allclose([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2], [128, 196], atol=1e-6)
    out = P.retarget_person(target, source, anchor="feet")
    assert abs(out.body[[10, 13], 1].max() - 340) < 1e-6


def test_same_pose_other_size_becomes_the_source():
    target = _person((SOURCE - [128, 100]) * 0.5 + [400, 300])  # half size, moved
    out = P.retarget_person(target, _person(SOURCE))
    np.testing.assert_allclose(out.body[:, :2], SOURCE, atol=1e-6)


def test_missing_joints():
    rng = np.random.default_rng(3)
    pts = _target(rng)
    # Source lacks its right forearm: the left one's length is used. Target lacks a knee: the ankle below
    # it has no placed parent and is scaled around the neck; the knee stays missing.
    out = P.retarget_person(_person(pts, missing=(9,)), _person(SOURCE, missing=(4,)))
    assert out.body[9, 2] == 0 and out.body[10, 2] > 0
    left_forearm = np.linalg.norm(SOURCE[7] - SOURCE[6])
    assert abs(np.linalg.norm(out.body[4, :2] - out.body[3, :2]) - left_forearm) <= 1.0


def test_hands_follow_wrists_and_scale():
    pts = (SOURCE - [128, 100]) * 0.5 + [400, 300]
    hand = np.c_[pts[4] + np.arange(21)[:, None] * [1.0, 0.5], np.ones(21)]
    target = P.Person(np.c_[pts, np.ones(18)], right_hand=hand)
    out = P.retarget_person(target, _person(SOURCE))
    np.testing.assert_allclose(out.right_hand[0, :2], SOURCE[4], atol=1e-6)
    np.testing.assert_allclose(out.right_hand[20, :2] - out.right_hand[0, :2], [40, 20], atol=1e-6)


def test_frames_batch_and_errors():
    src = P.PoseFrame(256, 384, [_person(SOURCE)])
    tgt = P.PoseFrame(512, 512, [_person(_target(np.random.default_rng(1)))])
    out = P.retarget_frames([tgt, tgt], [src])
    assert len(out) == 2 and (out[0].width, out[0].height) == (256, 384)
    with pytest.raises(ValueError, match="source"):
        P.retarget_frames([tgt, tgt, tgt], [src, src])
    with pytest.raises(ValueError, match="no person"):
        P.retarget_frame(tgt, P.PoseFrame(256, 384, []))
    with pytest.raises(ValueError, match="anchor"):
        P.retarget_person(tgt.people[0], src.people[0], anchor="head")
    with pytest.raises(ValueError, match="no visible"):
        P.retarget_person(P.Person(np.zeros((18, 3))), src.people[0])
