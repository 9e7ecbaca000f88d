"""DWPose backend through tiny ONNX models with the real files' signatures (built here, never shipped)."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from harness.pose_fixtures import make_fake_rtmpose, make_fake_yolox, to_image_tensor, yolox_raw_predictions

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from imagpose import pose as P
from imagpose.pose import dwpose

H, W = 320, 480
RATIO = min(640 / H, 640 / W)
# Two people: A (large, left) and B (small, right); boxes in original pixels.
BOX_A = (40.0, 40.0, 160.0, 280.0)
BOX_B = (300.0, 150.0, 360.0, 270.0)
# Bright blobs the fake keypoint model finds: red = "upper" keypoints, blue = "lower" ones.
RED_A, BLUE_A = (80.0, 80.0), (120.0, 260.0)
RED_B, BLUE_B = (320.0, 170.0), (340.0, 260.0)
BGR_B, BGR_R = 0, 2
RED_COCO = (0, 1, 2, 5, 6)       # nose, eyes, shoulders
BLUE_COCO = (15, 16)             # ankles


def _letterboxed(box, score=0.9, cls=0, obj=0.95, stride=32):
    x0, y0, x1, y1 = (v * RATIO for v in box)
    return ((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0, obj, cls, score, stride)


def _blob(img, xy, channel, sigma=2.5):
    yy, xx = np.mgrid[0:H, 0:W]
    g = np.exp(-((xx - xy[0]) ** 2 + (yy - xy[1]) ** 2) / (2 * sigma ** 2))
    img[..., channel] = np.maximum(img[..., channel], (255 * g).round().astype(np.uint8))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("dwpose_models")
    folder = root / "dwpose"
    folder.mkdir()
    raw = yolox_raw_predictions([
        _letterboxed(BOX_A, score=0.9),
        _letterboxed((44.0, 42.0, 162.0, 282.0), score=0.8, stride=16),  # duplicate of A: removed by NMS
        _letterboxed(BOX_B, score=0.85, stride=16),
        _letterboxed((200.0, 20.0, 260.0, 60.0), score=0.95, cls=2, stride=8),  # a car, not a person
        _letterboxed((380.0, 20.0, 460.0, 100.0), score=0.2, stride=8),  # too unsure
    ])
    make_fake_yolox(folder / dwpose.DET_FILENAME, raw)
    weights = np.zeros((133, 3))
    weights[list(RED_COCO), BGR_R] = 1.0
    weights[list(BLUE_COCO), BGR_B] = 1.0
    weights[dwpose.LEFT_HAND_SLICE, BGR_B] = 1.0    # left hand on the blue blob
    weights[dwpose.RIGHT_HAND_SLICE, BGR_R] = 1.0   # right hand on the red blob
    make_fake_rtmpose(folder / dwpose.POSE_FILENAME, weights)
    return root


@pytest.fixture(scope="module")
def photo():
    rgb = np.zeros((H, W, 3), np.uint8)
    for red, blue in ((RED_A, BLUE_A), (RED_B, BLUE_B)):
        _blob(rgb, red, 0)   # RGB channel 0 = red
        _blob(rgb, blue, 2)  # RGB channel 2 = blue
    return rgb


def test_files_found_in_pack_and_controlnet_aux_layouts(models, tmp_path):
    det, pose = dwpose.find_model_files([str(tmp_path), str(models)])
    assert det.endswith("dwpose/yolox_l.onnx") and pose.endswith("dwpose/dw-ll_ucoco_384.onnx")
    custom = tmp_path / "custom_nodes"
    ckpts = custom / "comfyui_controlnet_aux" / "ckpts" / "yzd-v" / "DWPose"
    ckpts.mkdir(parents=True)
    for name in (dwpose.DET_FILENAME, dwpose.POSE_FILENAME):
        (ckpts / name).write_bytes((models / "dwpose" / name).read_bytes())
    dirs = P.dwpose_search_dirs([str(tmp_path / "models" / "imagpose")], [str(custom)])
    det, pose = dwpose.find_model_files(dirs)
    assert det == str(ckpts / dwpose.DET_FILENAME) and pose == str(ckpts / dwpose.POSE_FILENAME)


def test_person_boxes_decode_letterbox_nms_and_class(models, photo):
    backend = P.get_backend("dwpose", [str(models)])
    boxes = dwpose.detect_people(backend.det, np.ascontiguousarray(photo[:, :, ::-1]))
    assert boxes.shape == (2, 4)
    np.testing.assert_allclose(boxes[0], BOX_A, atol=0.05)
    np.testing.assert_allclose(boxes[1], BOX_B, atol=0.05)


def test_keypoints_land_on_the_blobs_through_crop_and_simcc_decode(models, photo):
    frames = P.extract_poses(to_image_tensor(photo), detector="dwpose", person="all", model_dirs=[str(models)])
    assert len(frames) == 1 and (frames[0].width, frames[0].height) == (W, H)
    people = sorted(frames[0].people, key=lambda p: p.body[0, 0])
    assert len(people) == 2
    for person, red, blue in ((people[0], RED_A, BLUE_A), (people[1], RED_B, BLUE_B)):
        body = person.body
        red_op = (0, 1, 2, 5, 14, 15)   # nose, neck, shoulders, eyes in OpenPose order
        blue_op = (10, 13)              # ankles
        assert set(np.flatnonzero(body[:, 2] > 0)) == set(red_op + blue_op)
        np.testing.assert_allclose(body[list(red_op), :2], np.tile(red, (len(red_op), 1)), atol=1.0)
        np.testing.assert_allclose(body[list(blue_op), :2], np.tile(blue, (len(blue_op), 1)), atol=1.0)
        np.testing.assert_allclose(person.left_hand[:, :2], np.tile(blue, (21, 1)), atol=1.0)
        np.testing.assert_allclose(person.right_hand[:, :2], np.tile(red, (21, 1)), atol=1.0)
        assert not (person.face[:, 2] > 0).any()  # weight 0: score 0, below the 0.3 threshold


def test_person_choice_largest_index_and_all(models, photo):
    batch = to_image_tensor(photo)
    largest = P.extract_poses(batch, detector="dwpose", person="largest", model_dirs=[str(models)])[0].people
    assert len(largest) == 1 and abs(largest[0].body[0, 0] - RED_A[0]) < 1.0
    second = P.extract_poses(batch, detector="dwpose", person=1, model_dirs=[str(models)])[0].people
    assert len(second) == 1 and abs(second[0].body[0, 0] - RED_B[0]) < 1.0
    with pytest.raises(ValueError, match="out of range"):
        P.extract_poses(batch, detector="dwpose", person=5, model_dirs=[str(models)])


def test_auto_prefers_dwpose_and_renders_same_size(models, photo):
    backend = P.get_backend("auto", [str(models)])
    assert backend.name == "dwpose"
    out = P.extract_pose_images(to_image_tensor(photo, photo), detector="auto", model_dirs=[str(models)])
    assert tuple(out.shape) == (2, H, W, 3)
    frame = P.extract_poses(to_image_tensor(photo), model_dirs=[str(models)], person="largest")[0]
    expected = P.render_frame(frame, include_hands=False).astype(np.float32) / 255
    np.testing.assert_allclose(out[0].numpy(), expected)
    # Nose, neck, shoulders and eyes all sit on person A's red blob; joints are drawn in OpenPose order,
    # so the left eye's disc (index 15, colour 255, 0, 255) is on top there.
    x, y = int(RED_A[0]), int(RED_A[1])
    assert out[0, y + 3, x].tolist() == [1.0, 0.0, 1.0]


def test_no_person_found_names_the_image(models, photo, tmp_path):
    empty = tmp_path / "no_people"
    empty.mkdir()
    make_fake_yolox(empty / dwpose.DET_FILENAME, yolox_raw_predictions([]))
    (empty / dwpose.POSE_FILENAME).write_bytes((models / "dwpose" / dwpose.POSE_FILENAME).read_bytes())
    with pytest.raises(P.NoPersonFound, match="no person found in image 0 of the batch") as info:
        P.extract_pose_images(to_image_tensor(photo, photo), detector="dwpose", model_dirs=[str(empty)])
    assert info.value.index == 0
    frames = P.extract_poses(to_image_tensor(photo), detector="dwpose", model_dirs=[str(empty)], on_missing="empty")
    assert frames[0].people == []


def test_missing_files_say_what_to_download_and_where(tmp_path):
    with pytest.raises(P.PoseBackendUnavailable) as info:
        P.get_backend("dwpose", [str(tmp_path)])
    msg = str(info.value)
    assert "yolox_l.onnx" in msg and "dw-ll_ucoco_384.onnx" in msg and str(tmp_path) in msg and "huggingface.co" in msg
    with pytest.raises(P.PoseBackendUnavailable, match="models/imagpose"):
        P.get_backend("dwpose", None)


def test_missing_onnxruntime_is_named(models, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setattr(dwpose, "_SESSIONS", {})
    with pytest.raises(P.PoseBackendUnavailable, match="pip install onnxruntime"):
        P.get_backend("dwpose", [str(models)])


def test_broken_model_file_is_named(tmp_path):
    (tmp_path / dwpose.DET_FILENAME).write_bytes(b"not an onnx file")
    (tmp_path / dwpose.POSE_FILENAME).write_bytes(b"not an onnx file")
    with pytest.raises(RuntimeError, match="yolox_l.onnx"):
        P.get_backend("dwpose", [str(tmp_path)])
