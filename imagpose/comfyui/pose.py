"""What the pose nodes do: call `imagpose.pose` with ComfyUI's progress bar and interruption, and name the input
a library error belongs to."""
from __future__ import annotations

import comfy.model_management
import comfy.utils

from .. import pose as P
from . import memory
from .errors import InputError
from .files import dwpose_model_dirs

EXPECTED_KEYPOINTS = "POSE_KEYPOINT (a list of OpenPose-JSON dicts)"
# measured peaks above the float32 IMAGE output (12 bytes/px): drawing one pose (its uint8 canvas, a band of dimming)
# adds 4 bytes/px; converting one photo to uint8 for the detector adds 39 bytes/px of float temporaries
DRAWING_BYTES_PER_PIXEL = 4
CONVERSION_BYTES_PER_PIXEL = 40


def progress(total: int):
    """progress(done, total) for the library: ComfyUI's progress bar, and the Cancel button honoured."""
    bar = comfy.utils.ProgressBar(max(total, 1))

    def update(done: int, _total: int) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        bar.update_absolute(done, _total)

    return update


def parse_keypoints(input_name: str, value) -> list[P.PoseFrame]:
    try:
        frames = P.openpose_to_frames(value)
    except (ValueError, TypeError, KeyError) as error:
        raise InputError(input_name, EXPECTED_KEYPOINTS, str(error)) from error
    if not frames:
        raise InputError(input_name, "at least one pose", "an empty POSE_KEYPOINT list")
    return frames


def check_render_size(width: int | None, height: int | None) -> None:
    """0 x 0 (each pose's own canvas) or both sides (None: not known yet, linked from another node)."""
    if width is None or height is None:
        return
    try:
        P.check_output_size(width or None, height or None)
    except ValueError as error:
        raise InputError("width/height", "both 0 (each pose's own canvas) or both positive", f"{width}x{height}") from error


def check_pose_images(input_name: str, frames: list[P.PoseFrame], width: int | None, height: int | None,
                      source: str = "") -> None:
    """Pose images about to be drawn: at most MAX_POSE_SIDE a side, and memory for all of them."""
    try:
        height, width = P.output_size(frames, width, height)
    except ValueError as error:
        raise InputError("width/height", "an output size when the poses' canvases differ", str(error)) from error
    memory.check_side(input_name, width, height, memory.MAX_POSE_SIDE, f"{width}x{height}{source}")
    memory.require(input_name, "pose images", memory.image_bytes(len(frames), height, width) + DRAWING_BYTES_PER_PIXEL
                   * height * width, f"{len(frames)} pose image(s) of {width}x{height}{source}")


def check_extraction(input_name: str, images) -> None:
    """Memory for pose images the size of the photos, and for converting one photo at a time for the detector."""
    try:
        count, height, width = P.as_batch(images).shape[:3]
    except (ValueError, AttributeError) as error:
        raise InputError(input_name, "an IMAGE batch (B, H, W, C) with 1, 3 or 4 channels", str(error)) from error
    memory.require(input_name, "pose images the size of the photos", memory.image_bytes(count, height, width)
                   + CONVERSION_BYTES_PER_PIXEL * height * width, f"{count} photo(s) of {width}x{height}")


def extract(images, detector: str, include_hands: bool, include_face: bool, person: str, person_index: int,
            on_no_person: str):
    """Photos -> (rendered pose images, POSE_KEYPOINT)."""
    check_extraction("images", images)
    try:
        frames = P.extract_poses(images, detector=detector, include_hands=include_hands, include_face=include_face,
                                 person=P.person_selector(person, person_index), model_dirs=dwpose_model_dirs(),
                                 on_missing=on_no_person, progress=progress(len(images)))
    except P.NoPersonFound as error:
        raise InputError("images", "photos each showing a person", str(error)) from error
    except P.PersonIndexOutOfRange as error:
        raise InputError("person_index", "the index of a person found in every image (0 = leftmost)", str(error)) from error
    except P.PoseBackendUnavailable as error:
        raise InputError("detector", f"a usable '{detector}' pose detector", str(error)) from error
    except ValueError as error:
        raise InputError("images", "an IMAGE batch (B, H, W, C) with 1, 3 or 4 channels", str(error)) from error
    if not frames:
        raise InputError("images", "at least one image", "an empty batch")
    pose_images = draw("images", frames, None, None, include_hands, include_face)
    return pose_images, P.frames_to_openpose(frames)


def draw(input_name: str, frames, width, height, include_hands: bool, include_face: bool, with_progress=False):
    """render_pose_images, with a keypoint too far out to draw named against the input it came from."""
    try:
        return P.render_pose_images(frames, width, height, include_hands=include_hands, include_face=include_face,
                                    progress=progress(len(frames)) if with_progress else None)
    except P.KeypointOutOfRange as error:
        raise InputError(input_name, "keypoints inside or near their canvas", str(error)) from error


def render(keypoints, width: int, height: int, include_hands: bool, include_face: bool):
    frames = parse_keypoints("keypoints", keypoints)
    if width and height:
        check_pose_images("width/height", frames, width, height)
    else:
        check_pose_images("keypoints", frames, None, None, " (the poses' canvas_width x canvas_height; or set a width "
                          "and height)")
    return draw("keypoints", frames, width or None, height or None, include_hands, include_face, with_progress=True)


def retarget(target_keypoints, source_keypoints, anchor: str, include_hands: bool, include_face: bool):
    """-> (retargeted POSE_KEYPOINT on the source canvas, their rendering at the first source's size)."""
    targets = parse_keypoints("target_keypoints", target_keypoints)
    sources = parse_keypoints("source_keypoints", source_keypoints)
    try:
        out = P.retarget_frames(targets, sources, anchor)
    except P.NoPersonFound as error:
        raise InputError(f"{error.role}_keypoints", "a person in every frame", str(error)) from error
    except ValueError as error:
        raise InputError("source_keypoints", f"1 frame, or one per target frame ({len(targets)})", str(error)) from error
    sizes = {(f.width, f.height) for f in out}
    width, height = (None, None) if len(sizes) == 1 else (out[0].width, out[0].height)
    check_pose_images("source_keypoints", out, width, height, " (the source poses' canvas)")
    images = draw("target_keypoints", out, width, height, include_hands, include_face)
    return P.frames_to_openpose(out), images


def render_target_sequence(input_name: str, keypoints, max_frames: int):
    """POSE_KEYPOINT frames -> target pose images, drawn as the training poses were (body and hands, no face). A
    sequence must show a person in every frame and share one canvas, so every frame is fitted to the cell alike."""
    frames = parse_keypoints(input_name, keypoints)
    if len(frames) > max_frames:
        raise InputError(input_name, f"1 to {max_frames} frames", f"{len(frames)} frames")
    empty = [i for i, frame in enumerate(frames) if not any(person.visible.any() for person in frame.people)]
    if empty:
        shown = ", ".join(map(str, empty[:10])) + (", ..." if len(empty) > 10 else "")
        raise InputError(input_name, "a person in every frame (each frame is one target pose)",
                         f"no person in frame(s) {shown} of {len(frames)} (counting from 0)")
    canvases = {(frame.width, frame.height) for frame in frames}
    if len(canvases) > 1:
        first = frames[0]
        other = next(i for i, f in enumerate(frames) if (f.width, f.height) != (first.width, first.height))
        raise InputError(input_name, "frames on one canvas size, as a pose sequence has (retarget them onto the source "
                         "with IMAGPose Pose Retarget, which puts every frame on the source's canvas)",
                         f"frame 0 on {first.width}x{first.height} and frame {other} on "
                         f"{frames[other].width}x{frames[other].height}")
    check_pose_images(input_name, frames, None, None, " (the frames' canvas_width x canvas_height)")
    return draw(input_name, frames, None, None, include_hands=True, include_face=False, with_progress=True)
