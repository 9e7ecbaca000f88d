"""The V3 pose nodes: schemas (IDs, tooltips, types) and execute() on real inputs, inside ComfyUI's modules."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from harness.env import REPO_ROOT as REPO
from harness.pose_fixtures import make_fake_rtmpose, make_fake_yolox, photo, to_image_tensor, yolox_raw_predictions


@pytest.fixture(scope="module")
def nodes_pose(comfy_nodes):
    """The pack's nodes_pose module, as ComfyUI loaded it."""
    return sys.modules[comfy_nodes.NODE_CLASS_MAPPINGS["IMAGPosePoseExtract"].__module__]


def _schema(node):
    return node.GET_SCHEMA() if hasattr(node, "GET_SCHEMA") else node.define_schema()


def test_schemas(nodes_pose):
    ids = [_schema(n).node_id for n in nodes_pose.NODES]
    assert ids == ["IMAGPosePoseExtract", "IMAGPosePoseRender", "IMAGPosePoseRetarget"]
    for node in nodes_pose.NODES:
        schema = _schema(node)
        assert schema.category == "IMAGPose/pose" and schema.description and schema.display_name
        for item in list(schema.inputs) + list(schema.outputs):
            assert item.tooltip, f"{schema.node_id}: {item.id} has no tooltip"
    extract = _schema(nodes_pose.NODES[0])
    assert [o.io_type for o in extract.outputs] == ["IMAGE", "POSE_KEYPOINT"]


def test_extract_render_retarget_chain(nodes_pose):
    if not nodes_pose.P.extract.mediapipe_backend.is_available():
        pytest.skip("mediapipe not installed")
    Extract, Render, Retarget = nodes_pose.NODES
    astronaut, bus = photo("astronaut"), photo("bus")
    out = Extract.execute(to_image_tensor(astronaut), "mediapipe", True, False, "largest", 0, "error")
    pose_images, keypoints = out.result
    assert tuple(pose_images.shape) == (1, 512, 512, 3) and keypoints[0]["canvas_width"] == 512
    rendered = Render.execute(keypoints, 0, 0, True, False).result[0]
    assert np.array_equal(rendered.numpy(), pose_images.numpy())
    bus_pose = Extract.execute(to_image_tensor(bus), "auto", False, False, "largest", 0, "error").result[1]
    retargeted, images = Retarget.execute(bus_pose, keypoints, "neck", True, False).result
    assert retargeted[0]["canvas_width"] == 512 and tuple(images.shape) == (1, 512, 512, 3)
    body = np.array(retargeted[0]["people"][0]["pose_keypoints_2d"]).reshape(18, 3)
    src = np.array(keypoints[0]["people"][0]["pose_keypoints_2d"]).reshape(18, 3)
    np.testing.assert_allclose(body[1, :2], src[1, :2], atol=1e-6)  # neck on the astronaut's neck
    big = Render.execute(retargeted, 256, 128, False, False).result[0]
    assert tuple(big.shape) == (1, 128, 256, 3)


def test_extract_uses_dwpose_files_in_the_model_folder(nodes_pose, tiny_models):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    folder = tiny_models[0] / "imagpose" / "dwpose"
    folder.mkdir(parents=True, exist_ok=True)
    make_fake_yolox(folder / "yolox_l.onnx", yolox_raw_predictions([(320, 320, 200, 400, 0.9, 0, 0.9, 32)]))
    weights = np.zeros((133, 3))
    weights[[0, 5, 6], 2] = 1.0
    make_fake_rtmpose(folder / "dw-ll_ucoco_384.onnx", weights)
    try:
        assert str(folder.parent) in nodes_pose.glue.dwpose_model_dirs()
        rgb = np.zeros((64, 64, 3), np.uint8)
        rgb[30:33, 20:23, 0] = 255
        pose_images, keypoints = nodes_pose.NODES[0].execute(to_image_tensor(rgb), "dwpose", False, False,
                                                              "largest", 0, "error").result
        nose = keypoints[0]["people"][0]["pose_keypoints_2d"][:2]
        assert abs(nose[0] - 21) <= 1.5 and abs(nose[1] - 31) <= 1.5
    finally:
        for f in folder.iterdir():
            f.unlink()


def test_errors_name_node_input_expected_and_got(nodes_pose):
    Extract, Render, Retarget = nodes_pose.NODES
    blank = np.zeros((64, 64, 3), np.uint8)
    if nodes_pose.P.extract.mediapipe_backend.is_available():
        with pytest.raises(ValueError, match="IMAGPose Pose Extract: input 'images': expected photos each showing a person; got no person found in image 0"):
            Extract.execute(to_image_tensor(blank), "mediapipe", False, False, "largest", 0, "error")
        images, keypoints = Extract.execute(to_image_tensor(blank), "mediapipe", False, False, "largest", 0, "empty").result
        assert keypoints[0]["people"] == [] and float(images.max()) == 0.0
    with pytest.raises(ValueError, match="IMAGPose Pose Extract: input 'detector'.*yolox_l.onnx.*imagpose.dwpose"):
        Extract.execute(to_image_tensor(blank + 1), "dwpose", False, False, "largest", 0, "error")
    with pytest.raises(ValueError, match="IMAGPose Pose Render: input 'keypoints': expected POSE_KEYPOINT"):
        Render.execute("not keypoints", 0, 0, True, False)
    with pytest.raises(ValueError, match="IMAGPose Pose Render: input 'keypoints': expected at least one pose"):
        Render.execute([], 0, 0, True, False)
    assert "IMAGPose Pose Render: input 'width/height'" in Render.validate_inputs(width=64, height=0)
    assert Render.validate_inputs(width=64, height=32) is True and Render.validate_inputs(width=0, height=0) is True
    empty = [{"people": [], "canvas_width": 8, "canvas_height": 8}]
    with pytest.raises(ValueError, match="IMAGPose Pose Retarget: input 'source_keypoints': expected a person"):
        Retarget.execute([{"people": [{"pose_keypoints_2d": [4, 4, 1] * 18}], "canvas_width": 8, "canvas_height": 8}],
                         empty, "neck", True, False)


def test_library_imports_without_optional_packages():
    """cv2, mediapipe and onnxruntime are optional at import time; using them names what to install."""
    import subprocess

    code = (
        "import sys\n"
        "for m in ('cv2', 'mediapipe', 'onnxruntime'): sys.modules[m] = None\n"
        "from imagpose import pose as P\n"
        "try:\n    P.get_backend('auto', [])\nexcept P.PoseBackendUnavailable as e:\n    print('ERR1', e)\n"
        "try:\n    P.render_frame(P.PoseFrame(8, 8, []))\nexcept RuntimeError as e:\n    print('ERR2', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "ERR1" in out.stdout and "mediapipe==0.10.21" in out.stdout and "yolox_l.onnx" in out.stdout
    assert "ERR2" in out.stdout and "opencv" in out.stdout
