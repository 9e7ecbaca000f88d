"""MediaPipe backend on real photos shipped in packages, against hand-marked joints; odd inputs."""
from __future__ import annotations


import numpy as np
import pytest

from harness.pose_fixtures import photo, to_image_tensor

from imagpose import pose as P
from imagpose.pose import mediapipe_backend

if not mediapipe_backend.is_available():
    pytest.skip("mediapipe 0.10.21 is not installed (see requirements-test.txt)", allow_module_level=True)

# Joints marked by hand on each photo (x, y in pixels), with the tolerance in pixels.
MARKS = {
    "astronaut": (35, {"nose": (222, 127), "right_eye": (205, 105), "left_eye": (245, 110),
                       "right_shoulder": (105, 250), "left_shoulder": (315, 262)}),
    "grace_hopper": (40, {"nose": (263, 235), "right_eye": (228, 193), "left_eye": (303, 190),
                          "right_shoulder": (90, 405), "left_shoulder": (455, 415)}),
    "camera": (35, {"nose": (250, 168), "right_eye": (238, 150), "left_eye": (246, 150),
                    "right_wrist": (262, 215)}),
    "bus": (35, {"nose": (140, 440), "right_shoulder": (85, 497), "left_shoulder": (160, 490),
                 "right_hip": (103, 650), "left_hip": (158, 650), "right_knee": (92, 760),
                 "left_knee": (165, 755), "right_ankle": (75, 862), "left_ankle": (185, 858)}),
}


@pytest.fixture(scope="module")
def backend():
    return P.get_backend("mediapipe")


@pytest.mark.parametrize("name", sorted(MARKS))
def test_joints_land_on_the_body(backend, name):
    rgb = photo(name)
    tol, marks = MARKS[name]
    frame = P.extract_poses(to_image_tensor(rgb), detector="mediapipe", backend=backend)[0]
    assert (frame.width, frame.height) == (rgb.shape[1], rgb.shape[0])
    assert len(frame.people) == 1
    body = frame.people[0].body
    for joint, (x, y) in marks.items():
        i = P.BODY_NAMES.index(joint)
        assert body[i, 2] > 0, f"{name}: {joint} not found"
        dist = float(np.hypot(body[i, 0] - x, body[i, 1] - y))
        assert dist <= tol, f"{name}: {joint} at {body[i, :2].round(1)}, marked at ({x}, {y}): {dist:.0f} px off"
    # Joints outside the photo (legs below a portrait's frame) are reported missing, not guessed.
    present = body[body[:, 2] > 0]
    assert ((present[:, 0] >= 0) & (present[:, 0] < rgb.shape[1]) & (present[:, 1] >= 0) & (present[:, 1] < rgb.shape[0])).all()


def test_portrait_has_no_legs(backend):
    body = P.extract_poses(to_image_tensor(photo("grace_hopper")), backend=backend)[0].people[0].body
    for joint in ("right_knee", "left_knee", "right_ankle", "left_ankle"):
        assert body[P.BODY_NAMES.index(joint), 2] == 0


def test_batch_render_and_keypoints_agree(backend):
    rgb = photo("astronaut")
    images = to_image_tensor(rgb, rgb[:, ::-1].copy())
    calls = []
    frames = P.extract_poses(images, backend=backend, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 2), (2, 2)]
    # The mirrored photo gives the mirrored nose.
    nose0, nose1 = frames[0].people[0].body[0], frames[1].people[0].body[0]
    assert abs((rgb.shape[1] - 1 - nose1[0]) - nose0[0]) < 6 and abs(nose1[1] - nose0[1]) < 6
    rendered = P.render_pose_images(frames, include_hands=False)
    assert tuple(rendered.shape) == (2, 512, 512, 3)
    x, y = int(nose0[0]), int(nose0[1])
    assert rendered[0, y, x].tolist() == [1.0, 0.0, 0.0]  # nose disc colour, DWPose palette
    data = P.frames_to_openpose(frames)
    assert data[0]["canvas_width"] == 512 and len(data[0]["people"][0]["pose_keypoints_2d"]) == 54


def test_hands_and_face_with_holistic(backend):
    frame = P.extract_poses(to_image_tensor(photo("grace_hopper")), backend=backend, include_face=True,
                            include_hands=True)[0]
    face = frame.people[0].face
    assert face is not None and face.shape == (68, 3) and (face[:, 2] > 0).all()
    # Face points sit on the face: between the ears horizontally, eyebrows above the mouth.
    assert 150 < face[:, 0].min() and face[:, 0].max() < 380
    assert face[17:27, 1].mean() < face[48:68, 1].mean()
    image = P.render_frame(frame, include_face=True)
    assert (image == 255).all(-1).sum() > 100  # white face dots


def test_extract_pose_images_contract(backend):
    rgb = photo("astronaut")
    out = P.extract_pose_images(to_image_tensor(rgb), detector="mediapipe")
    assert out.dtype.is_floating_point and tuple(out.shape) == (1, 512, 512, 3)
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0 and float(out.max()) > 0.5


def test_grayscale_rgba_and_3d_inputs(backend):
    import torch

    gray = photo("camera")[..., :1]
    frame = P.extract_poses(to_image_tensor(gray), backend=backend)[0]
    assert abs(frame.people[0].body[0, 0] - 250) < 35
    rgb = photo("astronaut")
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    frame = P.extract_poses(to_image_tensor(rgba), backend=backend)[0]
    assert abs(frame.people[0].body[0, 0] - 222) < 35
    single = torch.from_numpy(rgb.astype(np.float32) / 255)  # (H, W, 3) without batch axis
    assert len(P.extract_poses(single, backend=backend)) == 1


def test_no_person_errors_name_the_image(backend):
    rgb = photo("astronaut")
    blank = np.zeros_like(rgb)
    with pytest.raises(P.NoPersonFound, match="image 1 of the batch.*blank") as info:
        P.extract_pose_images(to_image_tensor(rgb, blank), detector="mediapipe")
    assert info.value.index == 1 and isinstance(info.value, ValueError)
    noise = (np.random.default_rng(0).random((256, 256, 3)) * 40).astype(np.uint8)
    with pytest.raises(P.NoPersonFound, match="image 0 .*mediapipe detector found nobody"):
        P.extract_poses(to_image_tensor(noise), backend=backend)
    tiny = np.full((1, 1, 3), 128, np.uint8)
    with pytest.raises(P.NoPersonFound, match="1x1 px"):
        P.extract_pose_images(to_image_tensor(tiny), detector="mediapipe")
    frames = P.extract_poses(to_image_tensor(tiny), backend=backend, on_missing="empty")
    assert frames[0].people == [] and (frames[0].width, frames[0].height) == (1, 1)
    assert float(P.render_pose_images(frames).max()) == 0.0


def test_empty_batch_and_bad_shapes(backend):
    import torch

    out = P.extract_pose_images(torch.zeros((0, 64, 48, 3)), detector="mediapipe")
    assert tuple(out.shape) == (0, 64, 48, 3)
    with pytest.raises(ValueError, match="channels"):
        P.extract_poses(torch.zeros((1, 64, 64, 5)), backend=backend)
    with pytest.raises(ValueError, match="shape"):
        P.extract_poses(torch.zeros((1, 1, 64, 64, 3)), backend=backend)
    with pytest.raises(ValueError, match="detector must be one of"):
        P.get_backend("openpose")


def test_missing_mediapipe_is_named(monkeypatch, tmp_path):
    def unavailable():
        raise P.PoseBackendUnavailable(mediapipe_backend.INSTALL_HINT)

    monkeypatch.setattr(mediapipe_backend, "_solutions", unavailable)
    with pytest.raises(P.PoseBackendUnavailable, match="mediapipe==0.10.21"):
        P.get_backend("mediapipe")
    with pytest.raises(P.PoseBackendUnavailable, match="(?s)mediapipe==0.10.21.*yolox_l.onnx"):
        P.get_backend("auto", [str(tmp_path)])
