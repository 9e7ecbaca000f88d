"""Poses for IMAGPose: extraction (DWPose ONNX or MediaPipe), DWPose-style rendering, retargeting, and
the OpenPose-JSON keypoint format of ComfyUI's POSE_KEYPOINT type. Pure library: no ComfyUI import."""
from .dwpose import search_dirs as dwpose_search_dirs
from .errors import KeypointOutOfRange, NoPersonFound, PersonIndexOutOfRange, PoseBackendUnavailable
from .extract import (
    DETECTORS,
    ON_NO_PERSON,
    PERSON_CHOICES,
    PERSON_OPTIONS,
    as_batch,
    check_output_size,
    extract_pose_images,
    extract_poses,
    get_backend,
    output_size,
    person_selector,
    render_pose_images,
    to_uint8_images,
)
from .keypoints import (
    BODY_NAMES,
    Person,
    PoseFrame,
    frame_to_openpose,
    frames_to_openpose,
    openpose_to_frame,
    openpose_to_frames,
    select_people,
)
from .render import render_frame, render_people
from .retarget import ANCHORS, retarget_frame, retarget_frames, retarget_person

__all__ = [
    "ANCHORS", "as_batch", "dwpose_search_dirs", "KeypointOutOfRange", "output_size", "PersonIndexOutOfRange", "BODY_NAMES", "check_output_size", "DETECTORS", "ON_NO_PERSON", "PERSON_CHOICES",
    "PERSON_OPTIONS", "person_selector", "NoPersonFound", "Person", "PoseBackendUnavailable",
    "PoseFrame", "extract_pose_images", "extract_poses", "frame_to_openpose", "frames_to_openpose",
    "get_backend", "openpose_to_frame", "openpose_to_frames", "render_frame", "render_people",
    "render_pose_images", "retarget_frame", "retarget_frames", "retarget_person", "select_people",
    "to_uint8_images",
]
