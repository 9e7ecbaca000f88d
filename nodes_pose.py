"""IMAGPose pose nodes (ComfyUI V3 API): extract, render and retarget poses in the DWPose style that
IMAGPose was trained on. The work is done in imagpose.pose; this file only declares the nodes."""
from __future__ import annotations

from comfy_api.latest import io

from .imagpose import pose as P
from .imagpose.comfyui import pose as glue
from .imagpose.comfyui.errors import imagpose_node
from .imagpose.comfyui.memory import MAX_POSE_SIDE

POSE_KEYPOINT = io.Custom("POSE_KEYPOINT")
CATEGORY = "IMAGPose/pose"


@imagpose_node
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
                io.Combo.Input("person", options=list(P.PERSON_OPTIONS), default="largest",
                               tooltip="Who to keep when several people are found: the largest, the most confident "
                                       "detection (the IMAGPose reference's rule), everyone, or by_index (left to right)."),
                io.Int.Input("person_index", default=0, min=0, max=64,
                             tooltip="With person = by_index: 0 is the leftmost person."),
                io.Combo.Input("on_no_person", options=list(P.ON_NO_PERSON), default="error",
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
        return io.NodeOutput(*glue.extract(images, detector, include_hands, include_face, person, person_index,
                                           on_no_person))


@imagpose_node
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
                io.Int.Input("width", default=0, min=0, max=MAX_POSE_SIDE,
                             tooltip="Output width in pixels; 0 = each pose's own canvas width. Keypoints are scaled."),
                io.Int.Input("height", default=0, min=0, max=MAX_POSE_SIDE,
                             tooltip="Output height in pixels; 0 = each pose's own canvas height."),
                io.Boolean.Input("include_hands", default=True, tooltip="Draw hand keypoints when present."),
                io.Boolean.Input("include_face", default=False, tooltip="Draw face keypoints when present."),
            ],
            outputs=[io.Image.Output("pose_images", display_name="pose_images", tooltip="Rendered poses, one per keypoint frame.")],
        )

    @classmethod
    def check_inputs(cls, width=None, height=None) -> None:
        glue.check_render_size(width, height)

    @classmethod
    def execute(cls, keypoints, width, height, include_hands, include_face) -> io.NodeOutput:
        return io.NodeOutput(glue.render(keypoints, width, height, include_hands, include_face))


@imagpose_node
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
        return io.NodeOutput(*glue.retarget(target_keypoints, source_keypoints, anchor, include_hands, include_face))


NODES = [IMAGPosePoseExtract, IMAGPosePoseRender, IMAGPosePoseRetarget]
