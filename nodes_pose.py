"""IMAGPose pose nodes (ComfyUI V3 API): extract, render and retarget poses in the DWPose style that
IMAGPose was trained on. The work is done in imagpose.pose; this file only declares the nodes."""
from __future__ import annotations

from comfy_api.latest import io

from .imagpose import pose as P
from .imagpose.comfyui.files import dwpose_model_dirs

POSE_KEYPOINT = io.Custom("POSE_KEYPOINT")
CATEGORY = "IMAGPose/pose"
PERSON_OPTIONS = ["largest", "most_confident", "all", "by_index"]


def _progress(total: int):
    import comfy.model_management
    import comfy.utils

    bar = comfy.utils.ProgressBar(max(total, 1))

    def update(done: int, _total: int) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        bar.update_absolute(done, _total)

    return update


def _fail(node: str, input_name: str, expected: str, error: Exception):
    kind = type(error) if isinstance(error, (ValueError, RuntimeError)) else RuntimeError
    return kind(f"{node}: input '{input_name}': expected {expected}; got: {error}")


def _parse_keypoints(node: str, input_name: str, value):
    try:
        frames = P.openpose_to_frames(value)
    except (ValueError, TypeError, KeyError) as error:
        raise _fail(node, input_name, "POSE_KEYPOINT (a list of OpenPose-JSON dicts)", error) from error
    if not frames:
        raise ValueError(f"{node}: input '{input_name}': expected at least one pose; got an empty POSE_KEYPOINT list")
    return frames


class IMAGPosePoseExtract(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IMAGPosePoseExtract",
            display_name="IMAGPose Pose Extract",
            category=CATEGORY,
            description=(
                "Detects people in photos and renders their poses in the DWPose style IMAGPose was trained on. "
                "DWPose (yolox_l.onnx + dw-ll_ucoco_384.onnx in models/imagpose/dwpose or comfyui_controlnet_aux's "
                "ckpts) matches training; MediaPipe needs no download and finds one person per image."
            ),
            inputs=[
                io.Image.Input("images", tooltip="Photos of people; a batch is processed in one run."),
                io.Combo.Input("detector", options=list(P.DETECTORS), default="auto",
                               tooltip="auto: DWPose when its two ONNX files are found, else MediaPipe. "
                                       "dwpose: as in IMAGPose's training data (needs onnxruntime). "
                                       "mediapipe: bundled model, no download, one person per image."),
                io.Boolean.Input("include_hands", default=True,
                                 tooltip="Detect and draw hand keypoints (IMAGPose's training poses include hands)."),
                io.Boolean.Input("include_face", default=False,
                                 tooltip="Draw face keypoints (IMAGPose's training poses had none)."),
                io.Combo.Input("person", options=PERSON_OPTIONS, default="largest",
                               tooltip="Who to keep when several people are found: the largest, the most confident "
                                       "detection (the IMAGPose reference's rule), everyone, or by_index (left to right)."),
                io.Int.Input("person_index", default=0, min=0, max=64,
                             tooltip="With person = by_index: 0 is the leftmost person."),
                io.Combo.Input("on_no_person", options=["error", "empty"], default="error",
                               tooltip="error: stop with a message naming the image; empty: output a black pose "
                                       "and no keypoints for that image."),
            ],
            outputs=[
                io.Image.Output("pose_images", display_name="pose_images",
                                tooltip="Rendered poses, same size as the photos (DWPose style)."),
                POSE_KEYPOINT.Output("keypoints", display_name="keypoints",
                                     tooltip="OpenPose-JSON keypoints per image (pixels), compatible with "
                                             "comfyui_controlnet_aux's POSE_KEYPOINT."),
            ],
        )

    @classmethod
    def execute(cls, images, detector, include_hands, include_face, person, person_index, on_no_person) -> io.NodeOutput:
        node = "IMAGPose Pose Extract"
        who = int(person_index) if person == "by_index" else person
        total = int(images.shape[0]) if hasattr(images, "shape") and len(images.shape) == 4 else 1
        try:
            frames = P.extract_poses(images, detector=detector, include_hands=include_hands,
                                     include_face=include_face, person=who, model_dirs=dwpose_model_dirs(),
                                     on_missing=on_no_person, progress=_progress(total))
        except P.NoPersonFound as error:
            raise _fail(node, "images", "photos each showing a person", error) from error
        except P.PoseBackendUnavailable as error:
            raise _fail(node, "detector", f"a usable '{detector}' pose detector", error) from error
        except ValueError as error:
            raise _fail(node, "images", "an IMAGE batch (B, H, W, C) with 1, 3 or 4 channels", error) from error
        if not frames:
            raise ValueError(f"{node}: input 'images': expected at least one image; got an empty batch")
        pose_images = P.render_pose_images(frames, include_hands=include_hands, include_face=include_face)
        return io.NodeOutput(pose_images, P.frames_to_openpose(frames))


class IMAGPosePoseRender(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IMAGPosePoseRender",
            display_name="IMAGPose Pose Render",
            category=CATEGORY,
            description="Draws POSE_KEYPOINT keypoints exactly like the DWPose renderer IMAGPose's training poses came from.",
            inputs=[
                POSE_KEYPOINT.Input("keypoints", tooltip="OpenPose-JSON keypoints (from IMAGPose or comfyui_controlnet_aux)."),
                io.Int.Input("width", default=0, min=0, max=16384,
                             tooltip="Output width in pixels; 0 = each pose's own canvas width. Keypoints are scaled."),
                io.Int.Input("height", default=0, min=0, max=16384,
                             tooltip="Output height in pixels; 0 = each pose's own canvas height."),
                io.Boolean.Input("include_hands", default=True, tooltip="Draw hand keypoints when present."),
                io.Boolean.Input("include_face", default=False, tooltip="Draw face keypoints when present."),
            ],
            outputs=[io.Image.Output("pose_images", display_name="pose_images", tooltip="Rendered poses, one per keypoint frame.")],
        )

    @classmethod
    def execute(cls, keypoints, width, height, include_hands, include_face) -> io.NodeOutput:
        node = "IMAGPose Pose Render"
        frames = _parse_keypoints(node, "keypoints", keypoints)
        if (width == 0) != (height == 0):
            raise ValueError(f"{node}: inputs 'width'/'height': expected both 0 or both positive; got {width}x{height}")
        try:
            images = P.render_pose_images(frames, width or None, height or None, include_hands=include_hands,
                                          include_face=include_face, progress=_progress(len(frames)))
        except ValueError as error:
            raise _fail(node, "width/height", "an output size when the poses' canvases differ", error) from error
        return io.NodeOutput(images)


class IMAGPosePoseRetarget(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IMAGPosePoseRetarget",
            display_name="IMAGPose Pose Retarget",
            category=CATEGORY,
            description=(
                "Fits a pose taken from someone else to the source person: keeps the target's joint angles, takes the "
                "source's bone lengths and places it where the source stands, on the source's canvas."
            ),
            inputs=[
                POSE_KEYPOINT.Input("target_keypoints", tooltip="The pose(s) to reproduce (any person, any size)."),
                POSE_KEYPOINT.Input("source_keypoints",
                                    tooltip="The source person's pose: one frame for all targets, or one per target."),
                io.Combo.Input("anchor", options=list(P.ANCHORS), default="neck",
                               tooltip="Which point of the result lands on the same point of the source: neck, "
                                       "hips (mid-hip), center (body box centre) or feet (box centre x, lowest ankle y)."),
                io.Boolean.Input("include_hands", default=True, tooltip="Draw hand keypoints in pose_images."),
                io.Boolean.Input("include_face", default=False, tooltip="Draw face keypoints in pose_images."),
            ],
            outputs=[
                POSE_KEYPOINT.Output("keypoints", display_name="keypoints",
                                     tooltip="Retargeted keypoints on the source's canvas."),
                io.Image.Output("pose_images", display_name="pose_images",
                                tooltip="Retargeted poses rendered at the source canvas size."),
            ],
        )

    @classmethod
    def execute(cls, target_keypoints, source_keypoints, anchor, include_hands, include_face) -> io.NodeOutput:
        node = "IMAGPose Pose Retarget"
        targets = _parse_keypoints(node, "target_keypoints", target_keypoints)
        sources = _parse_keypoints(node, "source_keypoints", source_keypoints)
        if len(sources) not in (1, len(targets)):
            raise ValueError(f"{node}: input 'source_keypoints': expected 1 frame or {len(targets)} (one per target); "
                             f"got {len(sources)}")
        for name, frames in (("target_keypoints", targets), ("source_keypoints", sources)):
            for i, frame in enumerate(frames):
                if not any(p.visible.any() for p in frame.people):
                    raise ValueError(f"{node}: input '{name}': expected a person in every frame; frame {i} has none")
        try:
            out = P.retarget_frames(targets, sources, anchor)
        except ValueError as error:
            raise _fail(node, "target_keypoints", "poses with visible body keypoints", error) from error
        sizes = {(f.width, f.height) for f in out}
        if len(sizes) == 1:
            images = P.render_pose_images(out, include_hands=include_hands, include_face=include_face)
        else:
            w, h = out[0].width, out[0].height
            images = P.render_pose_images(out, w, h, include_hands=include_hands, include_face=include_face)
        return io.NodeOutput(P.frames_to_openpose(out), images)


NODES = [IMAGPosePoseExtract, IMAGPosePoseRender, IMAGPosePoseRetarget]
